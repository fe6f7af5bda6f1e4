#!/bin/sh
# The hw backend's layering (src/backends/hw/README.md): every file may
# include only headers of its own rank or below, so no call runs upward and
# no import cycle can form.  One TAP line per file.
srcdir=${top_srcdir:-.}
hw="$srcdir/src/backends/hw"
[ -d "$hw/events" ] || { echo "1..0 # SKIP no hw backend sources"; exit 77; }
exec python3 - "$hw" <<'PY'
import os, re, sys
hw = sys.argv[1]
# rank: a file may include headers whose rank is <= its own (same rank only
# for its own header).  Lower numbers are lower layers.
rank = {
    'kvb_mc_wire': 0, 'kvb_vllm_wire': 0, 'kvb_http': 0, 'kvb_acl': 0, 'kvb_vllm_xfer_wire': 0,
    'kvb_vllm_bootstrap_wire': 0, 'kvb_msgpack': 0, 'kvb_vllm_xfer_decode': 0, 'kvb_rdma_window_wire': 0,
    'kvb_tls': 0,
    'events/kvb_hw_events': 10, 'events/kvb_hw_warn': 11, 'events/kvb_hw_net': 11, 'events/kvb_hw_zmq': 11,
    'transport/kvb_hw_mem': 20, 'transport/kvb_hw_link': 20, 'transport/kvb_hw_gpu': 21,
    'transport/kvb_hw_tcp': 22, 'transport/kvb_hw_rdma_dev': 22, 'transport/kvb_hw_rdma_int': 22,
    'transport/kvb_hw_rdma_window': 22,
    'transport/kvb_hw_rdma': 23, 'transport/kvb_hw_staging': 24, 'transport/kvb_hw_transport': 25,
    'control/kvb_hw_peer': 30, 'control/kvb_hw_stream': 31, 'control/kvb_hw_handshake': 32,
    'control/kvb_hw_vllm_gen0': 31, 'control/kvb_hw_vllm_bootstrap': 31,
    'control/kvb_hw_vllm_gen2_int': 32, 'control/kvb_hw_vllm_gen2_client': 32,
    'control/kvb_hw_vllm_gen2': 33,
    'kvb_hw_params': 40, 'kvb_hw': 40,
}
files = []
for d, _, names in os.walk(hw):
    for n in sorted(names):
        if n.endswith(('.c', '.h')):
            files.append(os.path.relpath(os.path.join(d, n), hw))
files.sort()
print('1..%d' % len(files))
bad_total = 0
for i, f in enumerate(files, 1):
    key = f[:-2]
    if key not in rank:
        print('not ok %d - %s has no rank in tests/test_hw_layers.sh (add it)' % (i, f))
        bad_total += 1
        continue
    text = open(os.path.join(hw, f)).read()
    bad = []
    for inc in re.findall(r'^#include "([^"]+)\.h"', text, re.M):
        if inc in ('config', 'kvb_wire'):
            continue  # build config; the core's wire codec (below the backend)
        if inc not in rank:
            bad.append('%s.h (unranked)' % inc)
        elif rank[inc] > rank[key] or (rank[inc] == rank[key] and inc != key and
                                       rank[key] not in (0, 20, 22, 32, 40)):
            bad.append('%s.h (rank %d > %d)' % (inc, rank[inc], rank[key]))
    if bad:
        bad_total += 1
        print('not ok %d - %s includes above its layer: %s' % (i, f, ', '.join(bad)))
    else:
        print('ok %d - %s' % (i, f))
sys.exit(1 if bad_total else 0)
PY

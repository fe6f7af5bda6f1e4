#!/usr/bin/env bash
# The README's first command: set up a fresh Debian 12 machine, build
# kvbridge (in build/main, the tree scripts/test.sh also uses), and run the
# main job, kvbridge-sim's default study, on its built-in workload.  Extra
# arguments go to kvbridge-sim (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
jobs=$(nproc 2>/dev/null || echo 2)

scripts/install-deps.sh
if [ -f config.status ]; then
	echo "setup-and-run: the source tree is configured in place; run 'make distclean' first" >&2
	exit 1
fi
[ -x configure ] || autoreconf -fi
mkdir -p build/main
cd build/main
[ -f Makefile ] || "$top"/configure >configure.log
tail -n 14 configure.log
make -j"$jobs" >/dev/null

if [ ! -x src/tools/kvbridge-sim ]; then
	echo "setup-and-run: kvbridge-sim was not built (is libsimgrid-dev installed?)" >&2
	exit 1
fi
echo
echo "== main job: kvbridge-sim, default study (built-in workload: 2,000 requests shaped like the"
echo "   Mooncake conversation trace; 16 prefill + 16 decode nodes x 8 NICs of 200 Gb/s; Llama-3-70B) =="
./src/tools/kvbridge-sim -o "$top/sim-out" "$@"
echo
echo "plots: $top/sim-out/transfer_cdf.png, $top/sim-out/ttft.png, $top/sim-out/nic_util.png (and .svg)"

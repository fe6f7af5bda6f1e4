#!/bin/sh
# Runs INSIDE the SoftRoCE VM: the real Mooncake Transfer Engine (the PyPI
# wheel, rdma protocol on rxe2) and kvbridge (rxe0) move verified bytes both
# ways: tests/interop/mooncake_peer.py with KVB_INTEROP_PROTO=rdma.  Prints TAP.
# Usage: interop.sh BUILDDIR VENV
builddir=${1:?usage: interop.sh BUILDDIR VENV}
venv=${2:?usage: interop.sh BUILDDIR VENV}
here=$(cd "$(dirname "$0")" && pwd)
if ! "$venv/bin/python" -c 'import mooncake.engine' 2>/dev/null; then
	echo "1..0 # SKIP no Mooncake wheel in $venv (tests/test_interop.sh creates it)"
	exit 77
fi
ulimit -l unlimited 2>/dev/null
ip_of() { /usr/bin/ip -4 -o addr show dev "$1" | sed -n 's/.* inet \([0-9.]*\).*/\1/p' | head -n 1; }
ndev() { cat /sys/class/infiniband/$1/ports/1/gid_attrs/ndevs/1; }
export KVB_INTEROP_PROTO=rdma
export KVB_INTEROP_MC_DEVICES=${MC_DEV:-rxe2} KVB_INTEROP_MC_HOST=$(ip_of "$(ndev ${MC_DEV:-rxe2})")
export KVB_INTEROP_KVB_DEVICES=${KVB_DEV:-rxe0} KVB_INTEROP_KVB_HOST=$(ip_of "$(ndev ${KVB_DEV:-rxe0})")
export PYTHONPATH="$here/../interop" MC_LOG_LEVEL=${MC_LOG_LEVEL:-WARNING}
echo "# Mooncake on $KVB_INTEROP_MC_DEVICES ($KVB_INTEROP_MC_HOST), kvbridge on $KVB_INTEROP_KVB_DEVICES ($KVB_INTEROP_KVB_HOST)"
exec "$venv/bin/python" "$here/../interop/mooncake_peer.py" "$builddir/src/tools/kvbridge-bench"

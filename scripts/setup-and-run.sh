#!/usr/bin/env bash
# The README's first command: set up a fresh Debian 12 machine, build
# kvbridge (in build/main, the tree scripts/test.sh also uses), and run the
# main job on its built-in default workload.  Extra arguments go to the job.
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

echo
echo "== main job: kvbridge-demo (Qwen2.5-0.5B KV cache, producer -> consumer, loop backend) =="
./src/tools/kvbridge-demo "$@"

#!/usr/bin/env bash
# The README's first command: set up a fresh Debian 12 machine, build
# kvbridge, and run the main job on its built-in default workload.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)

scripts/install-deps.sh
[ -x configure ] || autoreconf -fi
[ -f Makefile ] || ./configure
make -j"$jobs"

echo
echo "== main job: kvbridge-demo (Qwen2.5-0.5B KV cache, producer -> consumer, loop backend) =="
./src/tools/kvbridge-demo "$@"

#!/bin/sh
# Real vLLM, no kvbridge: a stock MooncakeConnector P/D pair of each release gives the
# tokens of a single instance with the prompt's KV pulled from P, and a P serving other
# weights changes them (tests/vllm/stock_smoke.py, tests/vllm/README.md).  It proves the
# real-vLLM harness that kvbridge's interop tests build on.
#
# The venvs come from tests/vllm/install.sh (CI runs it once before; here it only
# checks its stamps, or installs what is missing).  TAP; exit 77, saying why, when no
# release can be installed or started.
#   KVB_VLLM_STOCK_RELEASES  releases to run (default "0.32.0 0.13.0")
#   KVB_VLLM_ROOT            the venvs (default <srcdir>/build/vllm)
builddir=${top_builddir:-.}
srcdir=${top_srcdir:-.}
releases=${KVB_VLLM_STOCK_RELEASES:-0.32.0 0.13.0}
work=$builddir/vllm-stock
log=$builddir/vllm-install.log

command -v python3 >/dev/null || { echo "1..0 # SKIP no python3 on PATH"; exit 77; }
t0=$(date +%s)
# shellcheck disable=SC2086
bash "$srcdir/tests/vllm/install.sh" $releases >"$log" 2>&1
rc=$?
sed 's/^/# /' "$log"
if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
	echo "1..0 # SKIP tests/vllm/install.sh failed (exit $rc)"; exit 77
fi
# install.sh skips when one release fails; run those that did install
rm -rf "$work"
mkdir -p "$work"
# the harness writes no bytecode into the source tree
PYTHONDONTWRITEBYTECODE=1 python3 "$srcdir/tests/vllm/stock_smoke.py" --work "$work" $releases
rc=$?
echo "# test_vllm_stock.sh: $(($(date +%s) - t0)) s"
if [ $rc -eq 77 ]; then
	echo "# every release was skipped; see above"
fi
[ $rc -eq 0 ] && rm -rf "$work"
exit $rc

#!/bin/sh
# kvbridge against real vLLM processes (CPU builds of 0.32.0, today's Gen 2 wire, and
# 0.13.0, Gen 0): kvbridge as producer and as consumer of each, every byte checked
# against what the real peer holds; real P -> kvbridge relay -> real D generating the
# tokens of one vLLM instance, with a negative control; the version bridge 0.13 ->
# 0.32; bad input with real peers (tests/vllm/kvbridge_real.py).
#
# The venvs come from tests/vllm/install.sh (CI runs it once before).  Reading a
# decoder's memory back goes through /proc/PID/mem (root, or ptrace rights).  TAP;
# exit 77, saying why, when vLLM cannot be installed or started here.
#   KVB_VLLM_ROOT  the venvs (default <srcdir>/build/vllm)
builddir=${top_builddir:-.}
srcdir=${top_srcdir:-.}
work=$builddir/vllm-kvbridge
log=$builddir/vllm-install.log
serve=$builddir/src/tools/kvbridge-serve

command -v python3 >/dev/null || { echo "1..0 # SKIP no python3 on PATH"; exit 77; }
[ -x "$serve" ] || { echo "1..0 # SKIP kvbridge-serve not built (hw backend disabled)"; exit 77; }
t0=$(date +%s)
bash "$srcdir/tests/vllm/install.sh" 0.32.0 0.13.0 >"$log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
	sed 's/^/# /' "$log"
	echo "1..0 # SKIP tests/vllm/install.sh could not install vLLM 0.32.0 and 0.13.0 (exit $rc)"; exit 77
fi
rm -rf "$work"
mkdir -p "$work"
PYTHONDONTWRITEBYTECODE=1 python3 "$srcdir/tests/vllm/kvbridge_real.py" "$serve" "$work"
rc=$?
echo "# test_vllm_kvbridge.sh: $(($(date +%s) - t0)) s"
if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
	for f in "$work"/*.log "$work"/*/server.log; do
		[ -s "$f" ] && { echo "# --- $f"; tail -n 15 "$f" | sed 's/^/# /'; }
	done
fi
[ $rc -eq 0 ] && rm -rf "$work"
exit $rc

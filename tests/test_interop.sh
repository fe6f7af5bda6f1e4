#!/bin/sh
# Interop against real peers, from Python: the Mooncake Transfer Engine
# wheel (mooncake-transfer-engine-non-cuda) and a vLLM Gen 0 decoder written
# from the spec with pyzmq + msgpack.  The packages live in a virtual
# environment ($KVB_INTEROP_VENV, default $top_builddir/interop-venv),
# created on first use; the test skips, saying why, only when the wheel
# cannot be installed.
builddir=${top_builddir:-.}
srcdir=${top_srcdir:-.}
venv=${KVB_INTEROP_VENV:-$builddir/interop-venv}
py=$venv/bin/python
[ -x "$builddir/src/tools/kvbridge-serve" ] || { echo "1..0 # SKIP hw backend not built"; exit 77; }
if ! "$py" -c 'import mooncake.engine, zmq, msgpack' 2>/dev/null; then
	if ! python3 -m venv "$venv" >/dev/null 2>&1; then
		echo "1..0 # SKIP python3 -m venv failed (apt-get install python3-venv)"; exit 77
	fi
	if ! "$venv/bin/pip" install -q mooncake-transfer-engine-non-cuda pyzmq msgpack >"$builddir/interop-pip.log" 2>&1; then
		echo "1..0 # SKIP the Mooncake wheel could not be installed: $(tail -n 1 "$builddir/interop-pip.log")"; exit 77
	fi
fi
export PYTHONPATH="$srcdir/tests/interop${PYTHONPATH:+:$PYTHONPATH}"
"$py" "$srcdir/tests/interop/mooncake_peer.py" "$builddir/src/tools/kvbridge-bench" > "$builddir/interop-mooncake.tap" 2>"$builddir/interop-mooncake.log"
rc1=$?
"$py" "$srcdir/tests/interop/vllm_decoder.py" "$builddir/src/tools/kvbridge-serve" > "$builddir/interop-vllm.tap" 2>"$builddir/interop-vllm.log"
rc2=$?
# one TAP stream: renumber both
n1=$(grep -c '^\(not \)\?ok' "$builddir/interop-mooncake.tap")
n2=$(grep -c '^\(not \)\?ok' "$builddir/interop-vllm.tap")
echo "1..$((n1 + n2))"
awk '/^(not )?ok/ { i++; p = ($1 == "not") ? "not ok " : "ok "; sub(/^(not )?ok [0-9]+/, p i); print }
     /^Bail out/ { print }' "$builddir/interop-mooncake.tap" "$builddir/interop-vllm.tap"
if [ $rc1 -ne 0 ] || [ $rc2 -ne 0 ]; then
	echo "# mooncake log:"; tail -n 20 "$builddir/interop-mooncake.log" | sed 's/^/# /'
	echo "# vllm log:"; tail -n 20 "$builddir/interop-vllm.log" | sed 's/^/# /'
	exit 1
fi
exit 0

#!/bin/sh
# Runs INSIDE the SoftRoCE VM: the RDMA suite (suite.sh), then the real
# Mooncake Transfer Engine against kvbridge over RDMA (interop.sh), as one TAP
# stream.  Usage: all.sh BUILDDIR VENV
builddir=${1:?usage: all.sh BUILDDIR VENV}
venv=${2:?usage: all.sh BUILDDIR VENV}
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
sh "$here/suite.sh" "$builddir" >"$out/suite.tap" 2>"$out/suite.err"
rc1=$?
sh "$here/interop.sh" "$builddir" "$venv" >"$out/interop.tap" 2>"$out/interop.err"
rc2=$?
n1=$(grep -c '^\(not \)\?ok' "$out/suite.tap")
n2=$(grep -c '^\(not \)\?ok' "$out/interop.tap")
echo "1..$((n1 + n2))"
awk '/^(not )?ok/ { i++; p = ($1 == "not") ? "not ok " : "ok "; sub(/^(not )?ok [0-9]+/, p i); print; next }
     /^# / || /^Bail out/ || /SKIP/ { print }' "$out/suite.tap" "$out/interop.tap"
[ $rc2 -eq 77 ] && echo "not ok $((n1 + 1)) - Mooncake over RDMA did not run: $(cat "$out/interop.tap")"
if [ $rc1 -ne 0 ] || [ $rc2 -ne 0 ]; then
	echo "# --- suite stderr"; tail -n 30 "$out/suite.err" | sed 's/^/# /'
	echo "# --- interop stderr"; grep -v '^[IW][0-9]' "$out/interop.err" | tail -n 30 | sed 's/^/# /'
	exit 1
fi
exit 0

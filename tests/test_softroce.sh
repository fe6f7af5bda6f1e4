#!/bin/sh
# The SoftRoCE stage: boot Debian's kernel in qemu with four virtio NICs as
# two rails, an rdma_rxe device on each (tests/vm/run-in-vm.sh --rails), and
# run the hw backend's RDMA suite inside (tests/softroce/suite.sh): byte-exact
# KV transfers between processes, striping over both rails, a rail taken
# down mid-transfer, lease expiry, a consumer killed mid-transfer; then the
# real Mooncake Transfer Engine (the wheel in $KVB_INTEROP_VENV, made by
# tests/test_interop.sh) and kvbridge moving verified bytes both ways over
# RDMA (tests/softroce/all.sh).  The TAP lines come back as ours.  Skips (77), saying why, where the VM
# cannot be built or booted.
builddir=${top_builddir:-.}
srcdir=${top_srcdir:-.}
[ -x "$builddir/src/tools/kvbridge-serve" ] || { echo "1..0 # SKIP hw backend not built"; exit 77; }
bash "$srcdir/tests/vm/build-image.sh" >"$builddir/softroce-image.log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
	echo "1..0 # SKIP the VM image could not be built: $(tail -n 1 "$builddir/softroce-image.log")"
	exit 77
fi
bash "$srcdir/tests/vm/run-in-vm.sh" --rails --timeout "${KVB_SOFTROCE_TIMEOUT:-600}" \
	--keep-log "$builddir/softroce-console.log" -- \
	sh "$srcdir/tests/softroce/all.sh" "$builddir" "${KVB_INTEROP_VENV:-$builddir/interop-venv}"
rc=$?
case $rc in
77) echo "1..0 # SKIP the SoftRoCE VM could not run here (see $builddir/softroce-console.log)" ;;
124) echo "Bail out! the SoftRoCE VM timed out" ;;
99) echo "Bail out! the SoftRoCE VM failed before or during the suite" ;;
esac
exit $rc

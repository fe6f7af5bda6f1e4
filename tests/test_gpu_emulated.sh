#!/bin/sh
# The GPU device check (tests/gpu/device-check.sh, docs/gpu.md) as CI runs
# it: emulated device memory (PROT_NONE pages only the staging path may
# copy through), small sizes, every byte verified, staging counters > 0.
# --memory cuda must skip with a reason where there is no GPU (and passes
# in quick mode where there is one).
srcdir=${top_srcdir:-.}
builddir=${top_builddir:-.}
prog="$builddir/tests/gpu/kvb_gpu_check"
[ -x "$prog" ] || { echo "1..0 # SKIP $prog not built (hw backend disabled)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0; fail=0
result() { # result DESCRIPTION OK? LOG
	n=$((n+1))
	if [ "$2" = yes ]; then
		echo "ok $n - $1"
	else
		fail=1
		echo "not ok $n - $1"
	fi
	sed 's/^/# /' "$3"
}
echo "1..3"

KVB_GPU_CHECK="$prog" sh "$srcdir/tests/gpu/device-check.sh" --emulated >"$tmp/emu" 2>&1
rc=$?
okv=no
[ $rc -eq 0 ] && grep -q '^PASS:' "$tmp/emu" && grep -q '^paths: consumer .* staging' "$tmp/emu" &&
	grep -q '^staging: kvbridge hw' "$tmp/emu" && okv=yes
result "emulated device memory through the staging path: every byte verified, GB/s next to the baseline (exit $rc)" $okv "$tmp/emu"

"$prog" --memory=cuda --quick >"$tmp/cuda" 2>&1
rc=$?
okv=no
{ [ $rc -eq 77 ] && grep -q '^SKIP: ' "$tmp/cuda"; } && okv=yes
{ [ $rc -eq 0 ] && grep -q '^PASS:' "$tmp/cuda"; } && okv=yes
result "--memory cuda: skipped with a reason where no CUDA device or build, passes where there is (exit $rc)" $okv "$tmp/cuda"

okv=no
"$prog" --help >"$tmp/help" 2>&1 && grep -q -- '--memory' "$tmp/help" &&
	{ "$prog" --memory=floppy >"$tmp/bad" 2>&1; [ $? -eq 2 ]; } && grep -q 'floppy' "$tmp/bad" && okv=yes
cat "$tmp/bad" >>"$tmp/help" 2>/dev/null
result "--help lists the options; an unknown --memory is refused with exit 2" $okv "$tmp/help"
exit $fail

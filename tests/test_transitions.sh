#!/bin/sh
# Every row of the transition tables in docs/architecture.md names a test:
# check that each named test exists and passes.
srcdir=${top_srcdir:-.}
builddir=${top_builddir:-.}
doc="$srcdir/docs/architecture.md"
# Run the suite here (make check runs tests in parallel, so its own log may
# not exist yet).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$builddir/tests/check_core" >"$log" 2>&1
names=$(sed -n '/^## Transition table/,/^## Tests/p' "$doc" | grep '^|' | grep -o 'test_[a-z0-9_]*' | sort -u)
count=$(echo "$names" | wc -l)
echo "1..$count"
n=0; fail=0
for t in $names; do
	n=$((n+1))
	if ! grep -q "START_TEST($t)" "$srcdir"/tests/*.c; then
		echo "not ok $n - $t: no such test in tests/"; fail=1
	elif grep -q ":$t: Passed" "$log" && ! grep -q "^not ok.*:$t:" "$log"; then
		echo "ok $n - $t"
	else
		echo "not ok $n - $t: did not pass in $log"; fail=1
	fi
done
exit $fail

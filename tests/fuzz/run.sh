#!/usr/bin/env bash
# Build every fuzz target (tests/fuzz/fuzz_*.c) with clang's libFuzzer,
# AddressSanitizer and UndefinedBehaviorSanitizer, and run each for a bounded
# time.  A crash, a leak or a sanitizer report fails the run and leaves the
# input in $FUZZ_OUT/<target>/.
#
# Each target names what it links in two comment lines near the top:
#   // FUZZ_SOURCES: src/backends/hw/kvb_mc_wire.c ...   (paths from the top)
#   // FUZZ_PKGS: json-glib-1.0 msgpack                   (pkg-config names)
# and may keep seed inputs in tests/fuzz/corpus/<target>/.
#
# Usage: bash tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#   FUZZ_SECONDS (default 30), FUZZ_OUT (default build/fuzz), CC (default clang)
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-${FUZZ_SECONDS:-30}}
[ $# -gt 0 ] && shift
out=${FUZZ_OUT:-$top/build/fuzz}
cc=${CC:-clang}
if ! command -v "$cc" >/dev/null; then
	echo "fuzz: $cc not found (apt-get install clang)" >&2
	exit 77
fi
mkdir -p "$out"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	for f in "$top"/tests/fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi
# a config.h for the sources (they include it first)
cat > "$out/config.h" <<'H'
#define _GNU_SOURCE 1
#define PACKAGE_VERSION "fuzz"
H
fail=0
for t in "${targets[@]}"; do
	src=$top/tests/fuzz/$t.c
	srcs=$(sed -n 's|^// FUZZ_SOURCES:||p' "$src")
	pkgs=$(sed -n 's|^// FUZZ_PKGS:||p' "$src")
	flags=$(pkg-config --cflags --libs glib-2.0 $pkgs)
	bin=$out/$t.bin
	echo "== $t: build"
	# shellcheck disable=SC2086
	"$cc" -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
		-I"$out" -I"$top/include" -I"$top/src/backends/hw" -I"$top/src/core" \
		"$src" $(for s in $srcs; do echo "$top/$s"; done) $flags -o "$bin"
	corpus=$out/$t.corpus
	mkdir -p "$corpus" "$out/$t"
	[ -d "$top/tests/fuzz/corpus/$t" ] && cp -f "$top/tests/fuzz/corpus/$t"/* "$corpus"/ 2>/dev/null || true
	echo "== $t: fuzz for ${secs}s"
	if ! (cd "$out/$t" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
		"$bin" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 "$corpus" > "$out/$t.log" 2>&1); then
		echo "fuzz: $t FAILED (log $out/$t.log, inputs in $out/$t/)" >&2
		tail -n 40 "$out/$t.log" >&2
		fail=1
	else
		runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log")
		echo "fuzz: $t ok, $runs inputs, no crash, leak or sanitizer report"
	fi
done
exit $fail

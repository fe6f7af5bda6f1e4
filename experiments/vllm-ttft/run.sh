#!/usr/bin/env bash
# What kvbridge adds to a 2,000-token request's time to first token (TTFT)
# through real vLLM on CPU, against vLLM's own MooncakeConnector pair, on the
# same machine in the same run, as a ratio (the goal: no slower).
# One command:  bash experiments/vllm-ttft/run.sh [--quick]
# writes docs/experiments/vllm-ttft.md (and vllm-ttft.png when gnuplot is
# installed); the raw CSV stays in build/vllm-ttft/.
#
# vLLM 0.32.0 CPU build (Gen 2 wire), float32, the generated tiny checkpoint
# of tests/vllm (tests/vllm/README.md), three configurations measured round
# robin, one fresh 2,000-token prompt per round, the order rotating:
#   A. direct: vLLM prefiller (kv_producer) -> vLLM decoder (kv_consumer),
#      vLLM's own MooncakeConnector on both sides;
#   B. relay: the same prefiller -> kvbridge-serve --role relay -> the same
#      decoder (docs/vllm.md);
#   C. reference: one vLLM instance with no connector (plain prefill).
# A and B go through the same Python Gen 2 router (tests/vllm/harness.py's
# Gen2Router: both legs at once, with a transfer_id).  TTFT: from sending
# the request until the decoder's answer (max_tokens 1) has been read.
# Per round, B's token must equal A's and the decoder must have taken every
# prompt token from the connector; a mismatch fails the run.
#
# Environment: KVB_BUILD (build tree, default build/main, else one is
# configured in build/vllm-ttft-build), KVB_VLLM_ROOT (vLLM venvs, default
# build/vllm; installed with tests/vllm/install.sh when missing), N (measured
# rounds, i.e. requests per configuration, default 12; 3 with --quick),
# WARMUP (rounds not counted, default 2; 1 with --quick), TOKENS (prompt
# length, default 2000), OUT (default docs/experiments), RESULTS (raw CSV,
# default build/vllm-ttft), IDLE_WAIT (seconds to wait at the start for
# other processes to leave the CPUs idle, default 60).
# Exits non-zero when a measurement fails to run or a check fails, not when
# the goal is missed.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$top"
quick=0
for a in "$@"; do
	case $a in
	--quick) quick=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "run.sh: unknown argument $a (usage: bash experiments/vllm-ttft/run.sh [--quick])" >&2; exit 2 ;;
	esac
done
if [ $quick = 1 ]; then
	N=${N:-3} WARMUP=${WARMUP:-1}
else
	N=${N:-12} WARMUP=${WARMUP:-2}
fi
TOKENS=${TOKENS:-2000}
out=${OUT:-$top/docs/experiments}
res=${RESULTS:-$top/build/vllm-ttft}
jobs=$(nproc 2>/dev/null || echo 2)
release=0.32.0
say() { echo "[vllm-ttft $(date +%H:%M:%S)] $*" >&2; }
die() { echo "vllm-ttft: $*" >&2; exit 1; }
# percent of all CPUs busy over one second (/proc/stat)
busy() {
	local a b
	read -ra a </proc/stat; sleep 1; read -ra b </proc/stat
	awk -v u="$((b[1] + b[2] + b[3] + b[6] + b[7] + b[8] - a[1] - a[2] - a[3] - a[6] - a[7] - a[8]))" \
		-v t="$((b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + b[7] + b[8] - a[1] - a[2] - a[3] - a[4] - a[5] - a[6] - a[7] - a[8]))" \
		'BEGIN { printf "%.0f", t ? 100 * u / t : 0 }'
}

# ---- build --------------------------------------------------------------
if [ -n "${KVB_BUILD:-}" ]; then
	build=$KVB_BUILD
elif [ -f "$top/build/main/Makefile" ]; then
	build=$top/build/main
else
	build=$top/build/vllm-ttft-build
fi
if [ ! -f "$build/Makefile" ]; then
	say "configuring $build"
	[ -x "$top/configure" ] || (cd "$top" && autoreconf -fi) >&2
	mkdir -p "$build"
	(cd "$build" && "$top/configure" --disable-tests >configure.log) || die "configure failed (see $build/configure.log)"
fi
say "building kvbridge-serve in $build"
make -C "$build" -j"$jobs" src/tools/kvbridge-serve >"$build/vllm-ttft-build.log" 2>&1 ||
	{ tail -n 30 "$build/vllm-ttft-build.log" >&2; die "build failed (log: $build/vllm-ttft-build.log)"; }
serve=$build/src/tools/kvbridge-serve
[ -x "$serve" ] || die "$serve not built: the hw backend is off in this build tree (configure --with-backend=hw)"

# ---- vLLM ---------------------------------------------------------------
# idempotent: seconds when the venv is there (KVB_VLLM_ROOT, default build/vllm)
rc=0
bash "$top/tests/vllm/install.sh" "$release" >&2 || rc=$?
[ $rc = 0 ] || die "tests/vllm/install.sh $release failed (rc $rc): vLLM cannot run here"

# ---- measure ------------------------------------------------------------
b=$(busy) waited=0
while [ "$b" -gt 15 ] && [ $waited -lt "${IDLE_WAIT:-60}" ]; do
	[ $waited = 0 ] && say "the machine is $b% busy (other processes); waiting up to ${IDLE_WAIT:-60} s"
	sleep 4; waited=$((waited + 5)); b=$(busy)
done
say "CPU busy before the run: $b%"
rm -rf "$res"
mkdir -p "$res" "$out"
rev=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$top" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ", with uncommitted changes" || true)
cflags=$(sed -n 's/^CFLAGS = //p' "$build/Makefile")
label="bash experiments/vllm-ttft/run.sh$([ $quick = 1 ] && echo " --quick" || true)"
[ "$N" != 12 ] && [ $quick = 0 ] && label="N=$N $label"
rc=0
python3 "$top/experiments/vllm-ttft/ttft.py" --serve "$serve" --work "$res/work" --results "$res" --out "$out" \
	-n "$N" --warmup "$WARMUP" --tokens "$TOKENS" --label "$label" \
	--build-info "$rev$dirty, CFLAGS \`$cflags\`; CPU busy just before the run $b%" || rc=$?
[ -f "$res/ttft.dat" ] || die "no measurement (rc $rc); logs under $res/work"

# ---- figure -------------------------------------------------------------
if command -v gnuplot >/dev/null; then
	term=png
	gnuplot -e 'set terminal' 2>&1 | grep -q pngcairo && term=pngcairo
	cpu=$(awk -F: '/model name/ { sub(/^ */, "", $2); print $2; exit }' /proc/cpuinfo | tr -d "'\"")
	gnuplot <<EOF || die "gnuplot failed"
set terminal $term size 900,560
set output '$out/vllm-ttft.png'
set title "TTFT of a $TOKENS-token prompt, vLLM $release on CPU ($cpu, $jobs cores)"
set xlabel 'round (one fresh prompt, all three configurations)'
set ylabel 'TTFT, ms'
set yrange [0:*]
set xrange [0.5:$N + 0.5]
set xtics 1
set key outside below
set grid
plot '$res/ttft.dat' using 1:2 with linespoints lw 2 pt 7 title 'A. vLLM P -> vLLM D (MooncakeConnector)', \
     '' using 1:3 with linespoints lw 2 pt 5 title 'B. vLLM P -> kvbridge relay -> vLLM D', \
     '' using 1:4 with linespoints lw 2 pt 9 dt 2 title 'C. one vLLM, no connector'
EOF
	printf '\n![TTFT per request and configuration](vllm-ttft.png)\n' >>"$out/vllm-ttft.md"
else
	say "gnuplot not installed: no figure"
fi
[ $rc = 0 ] || die "the run failed (rc $rc): see above and $out/vllm-ttft.md; logs under $res/work"
say "done: ${out#"$top"/}/vllm-ttft.md"

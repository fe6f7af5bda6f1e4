#!/bin/sh
# Every option value of kvbridge-sim, kvbridge-demo, kvbridge-bench (and the
# numbers of kvbridge-serve and kvbridge-proxy) is
# checked before anything runs: a negative count, a probability of 1.5, a NaN,
# a port of 70000 or an unknown policy exits 2 with the option and the value
# named, and nothing is simulated, moved or served; a value in range still
# works; --help lists every accepted name (sticky among the NIC policies) and
# says what --abort-prob does.  A program this build lacks (kvbridge-sim
# needs the sim backend, kvbridge-bench the hw backend) has its checks
# skipped with the reason.
builddir=${top_builddir:-.}
sim="$builddir/src/tools/kvbridge-sim"
demo="$builddir/src/tools/kvbridge-demo"
bench="$builddir/src/tools/kvbridge-bench"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0; fail=0
ok() { n=$((n+1)); echo "ok $n - $1"; }
notok() {
	n=$((n+1)); fail=1; echo "not ok $n - $1"
	for f in "$tmp/out" "$tmp/err"; do
		[ -s "$f" ] && { echo "# --- $(basename "$f")"; tail -n 8 "$f" | sed 's/^/# /'; }
	done
}
# skip REASON: a program this build lacks; reported at the end.
skipped=""
skip() { skipped="$skipped$1
"; }
check() { if eval "$2"; then ok "$1"; else notok "$1"; fi; }
# A program that does not refuse a value may start serving or simulating for
# long: bound every run (a refusal takes milliseconds).
timeout=""
command -v timeout >/dev/null 2>&1 && timeout=timeout
limit="${timeout:+$timeout 60}"

# run PROG ARGS...: stdout to $tmp/out, stderr to $tmp/err, status in $rc.
run() { $limit "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?; }

# refused WHAT RAN PROG OPT VALUE [ARGS...]: PROG ARGS OPT VALUE must exit 2
# with "OPT VALUE:" on stderr, and RAN (a shell test) must say nothing ran.
refused() {
	what=$1; ran=$2; prog=$3; opt=$4; val=$5; shift 5
	rm -rf "$tmp/o"
	run "$prog" "$@" "$opt" "$val"
	check "$(basename "$prog") $opt $val: $what (rc $rc)" \
		"[ $rc -eq 2 ] && grep -qF -- '$opt $val:' '$tmp/err' && ! ($ran)"
}

built=0

# ---- kvbridge-sim ----------------------------------------------------------
if [ -x "$sim" ]; then
	built=$((built+1))
	# small and quick, so that a value the old code took for a default still
	# finishes: nothing must be written to $tmp/o
	small="-q --no-plots -P 1 -D 1 --nics 1 --rate 1000 -o $tmp/o"
	simran="[ -e '$tmp/o' ] || grep -q '^summary' '$tmp/out'"
	refused "a negative count is refused" "$simran" "$sim" --requests -5 $small
	refused "zero requests are refused" "$simran" "$sim" --requests 0 $small
	refused "a negative line rate is refused" "$simran" "$sim" --nic-gbps -1 $small
	refused "a probability above 1 is refused" "$simran" "$sim" --abort-prob 1.5 $small
	refused "a NaN probability is refused" "$simran" "$sim" --late-prob nan $small
	refused "a NaN latency is refused" "$simran" "$sim" --latency-us nan $small
	refused "an infinite KV pool is refused" "$simran" "$sim" --kv-pool inf $small
	refused "a negative seed is refused" "$simran" "$sim" --seed -1 $small
	refused "a slice below 4096 bytes is refused" "$simran" "$sim" --slice-size 100 $small
	refused "a non-integer count is refused" "$simran" "$sim" --nics 2.5 $small
	refused "an unknown NIC policy is refused" "$simran" "$sim" --nic-policy fastest $small
	check "  ... with the accepted names, sticky among them" "grep -q 'round_robin.*sticky' '$tmp/err'"
	refused "an unknown topology is refused" "$simran" "$sim" --topology ring $small
	refused "an unknown flow model is refused" "$simran" "$sim" --flow-model exact $small

	printf '[study]\nabort_prob = 1.5\n' > "$tmp/study.ini"
	rm -rf "$tmp/o"
	run "$sim" -c "$tmp/study.ini" $small
	check "a study file's abort_prob 1.5 is refused naming file and key (rc $rc)" \
		"[ $rc -eq 2 ] && grep -q 'study.ini: \[study\] abort_prob = 1.5' '$tmp/err' && ! ($simran)"

	rm -rf "$tmp/o"
	run "$sim" -q --no-plots -P 2 -D 2 --nics 4 --rate 8 --requests 5 --abort-prob 0.5 \
		--nic-policy sticky -o "$tmp/o"
	check "values in range run: 5 requests, sticky policy (rc $rc)" \
		"[ $rc -eq 0 ] && [ \$(wc -l < '$tmp/o/requests.csv') -eq 6 ] && grep -q 'NIC policy sticky' '$tmp/out'"

	run "$sim" --help
	check "--help lists every NIC policy, sticky included" \
		"grep -- '--nic-policy' '$tmp/out' | grep -q 'round_robin, random, least_loaded, topology, sticky'"
	check "--help says what --abort-prob does (who aborts, when, what the lease frees)" \
		"grep -- '--abort-prob' '$tmp/out' | grep 'client aborts' | grep 'cancels its pull' | grep -q 'lease expires'"
else
	skip "kvbridge-sim not built (no sim backend in this build: SimGrid, libsimgrid-dev)"
fi

# ---- kvbridge-demo ---------------------------------------------------------
if [ -x "$demo" ]; then
	built=$((built+1))
	demoran="grep -q '^summary' '$tmp/out'"
	refused "a negative count is refused" "$demoran" "$demo" --requests -5 --tokens 64
	refused "too many NICs are refused" "$demoran" "$demo" --nics 65 --tokens 64
	refused "a NaN line rate is refused" "$demoran" "$demo" --nic-gbps nan --tokens 64
	refused "a negative slice size is refused" "$demoran" "$demo" --slice-size -5 --tokens 64
	refused "a negative seed is refused" "$demoran" "$demo" --seed -1 --tokens 64
	refused "a negative interval is refused" "$demoran" "$demo" --interval-ms -1 --tokens 64
	refused "an unknown NIC policy is refused" "$demoran" "$demo" --policy fastest --tokens 64
	check "  ... with the accepted names, sticky among them" "grep -q 'round_robin.*sticky' '$tmp/err'"

	run "$demo" --policy sticky --tokens 64 --requests 2 --seed 3 -q
	check "values in range run: sticky policy, bytes verified (rc $rc)" \
		"[ $rc -eq 0 ] && grep -q 'result *OK' '$tmp/out'"
	run "$demo" --help
	check "--help lists every NIC policy, sticky included" \
		"grep -- '--policy' '$tmp/out' | grep -q 'round_robin, random, least_loaded, topology, sticky'"
else
	skip "kvbridge-demo not built"
fi

# ---- kvbridge-bench --------------------------------------------------------
if [ -x "$bench" ]; then
	built=$((built+1))
	# as targets: a value taken instead of refused would start serving
	# (a "ready" line) until the time limit
	benchran="grep -q 'ready' '$tmp/out' || [ \$rc -eq 124 ]"
	tgt="--mode target --buffer-size 1M"
	limit="${timeout:+$timeout 10}"
	refused "a port of 70000 is refused" "$benchran" "$bench" --rpc-port 70000 $tgt
	refused "a negative port is refused" "$benchran" "$bench" --data-port -1 $tgt
	refused "a negative batch is refused" "$benchran" "$bench" --batch -5 $tgt
	refused "zero lanes are refused" "$benchran" "$bench" --lanes 0 $tgt
	refused "zero repeats are refused" "$benchran" "$bench" --repeat 0 $tgt
	refused "a NaN duration is refused" "$benchran" "$bench" --duration nan $tgt
	refused "a negative count is refused" "$benchran" "$bench" --count -1 $tgt
	refused "a negative seed is refused" "$benchran" "$bench" --fill-seed -1 $tgt
	refused "an unknown operation is refused" "$benchran" "$bench" --op copy $tgt
	refused "an unknown control path is refused" "$benchran" "$bench" --control gen3 $tgt
	check "  ... with the accepted names" "grep -q 'one-sided, gen2' '$tmp/err'"
	refused "an RDMA key past 32 bits is refused" "$benchran" "$bench" --rkey 0x100000000 --rdma-devices rxe0 $tgt
	refused "an RDMA key without RDMA devices is refused" "$benchran" "$bench" --rkey 7 $tgt
	run "$bench" --mode target --buffer-size nan
	check "a NaN buffer size is refused (rc $rc)" \
		"[ $rc -eq 2 ] && grep -qF -- '--buffer-size nan' '$tmp/err' && ! ($benchran)"

	limit="${timeout:+$timeout 60}"
	run "$bench" --loopback -b 4K --count 16 -r 1 --batch 4 --no-baseline --buffer-size 16M -q
	check "values in range run: 16 loopback writes of 4 KiB (rc $rc)" \
		"[ $rc -eq 0 ] && grep -q '^ *4K ' '$tmp/out'"
	run "$bench" --help
	check "--help lists every accepted name of --control, --op, --mode, --memory" \
		"grep -- '--control' '$tmp/out' | grep 'one-sided' | grep -q 'gen2' &&
		 grep -- '--op' '$tmp/out' | grep -q 'write or read' &&
		 grep -- '--mode' '$tmp/out' | grep -q 'target or initiator' &&
		 grep -- '--memory' '$tmp/out' | grep -q 'host.*emulated'"
else
	skip "kvbridge-bench not built (no hw backend in this build)"
fi

# ---- kvbridge-serve, kvbridge-proxy ---------------------------------------------
serve="$builddir/src/tools/kvbridge-serve"
proxy="$builddir/src/tools/kvbridge-proxy"
if [ -x "$serve" ] && [ -x "$proxy" ]; then
	built=$((built+1))
	# a value the old code took would start a daemon: it prints "ready"
	daemonran="grep -q 'ready' '$tmp/out' || [ \$rc -eq 124 ]"
	limit="${timeout:+$timeout 5}"
	sv="--role producer --http-port 0 --bootstrap-port 0"
	refused "negative blocks are refused" "$daemonran" "$serve" --blocks -5 $sv
	refused "zero tokens a block are refused" "$daemonran" "$serve" --block-tokens 0 $sv
	refused "a port of 70000 is refused" "$daemonran" "$serve" --rpc-port 70000 $sv
	refused "a negative lease is refused" "$daemonran" "$serve" --lease -1 $sv
	refused "a NaN lease is refused" "$daemonran" "$serve" --lease nan $sv
	refused "a negative dp rank is refused" "$daemonran" "$serve" --dp-rank -1 $sv
	refused "a negative GPU is refused" "$daemonran" "$serve" --gpu -3 $sv
	px="--port 0 --prefiller-port 1 --decoder-port 2"
	refused "a port of 70000 is refused" "$daemonran" "$proxy" --port 70000 --prefiller-port 1 --decoder-port 2
	refused "a zero timeout is refused" "$daemonran" "$proxy" --timeout 0 $px
	refused "negative clients are refused" "$daemonran" "$proxy" --max-clients -1 $px
	refused "a negative busy wait is refused" "$daemonran" "$proxy" --busy-wait -1 $px
	limit="${timeout:+$timeout 60}"
else
	skip "kvbridge-serve or kvbridge-proxy not built (no hw backend in this build)"
fi

if [ $built -eq 0 ]; then
	echo "1..0 # SKIP none of kvbridge-sim, kvbridge-demo, kvbridge-bench, kvbridge-serve is built"
	exit 77
fi
IFS='
'
for why in $skipped; do n=$((n+1)); echo "ok $n # SKIP $why"; done
echo "1..$n"
exit $fail

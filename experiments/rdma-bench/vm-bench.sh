#!/bin/sh
# Runs INSIDE the SoftRoCE VM (experiments/rdma-bench/run.sh starts it):
# RDMA WRITE throughput of kvbridge-bench against perftest's ib_write_bw on
# the same rxe devices, per block size, then one rail against two.
# Prints "csv,..." lines for the host to collect.
# Usage: vm-bench.sh BUILDDIR SIZES ITERS
builddir=${1:?} sizes=${2:-64K,256K,1M,4M} iters=${3:-200}
bench=$builddir/src/tools/kvbridge-bench
ulimit -l unlimited
ip_of() { /usr/bin/ip -4 -o addr show dev "$1" | sed -n 's/.* inet \([0-9.]*\).*/\1/p' | head -n 1; }
ndev() { cat /sys/class/infiniband/$1/ports/1/gid_attrs/ndevs/1; }
bytes() { case $1 in *K) echo $(( ${1%K} * 1024 ));; *M) echo $(( ${1%M} * 1048576 ));; *) echo "$1";; esac; }
T_IP=$(ip_of "$(ndev rxe2)")
gid=${KVB_VM_GID_INDEX0:-1}
start_target() { # devices -> sets seg
	"$bench" --mode target --host "$T_IP" --rdma-devices "$1" --buffer-size 256M --fill-seed 1 \
		</dev/null >/tmp/tgt.out 2>/tmp/tgt.err &
	tpid=$!
	i=0; while ! grep -q segment= /tmp/tgt.out 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
	seg=$(sed -n 's/.*segment=\([^ ]*\).*/\1/p' /tmp/tgt.out)
}
kvb_gbps() { # devices size count
	"$bench" --host "$(ip_of "$(ndev rxe0)")" -t "kvb://$seg" --rdma-devices "$1" -o write -b "$2" \
		--count "$3" --batch 16 --buffer-size 64M -q --csv /tmp/k.csv >/tmp/k.out 2>&1
	tail -n 1 /tmp/k.csv | cut -d, -f7
}
echo "# target $T_IP; $iters iterations per size"
for s in $(echo "$sizes" | tr , ' '); do
	b=$(bytes "$s")
	n=$(( iters * 65536 / b )); [ $n -lt 20 ] && n=20
	ib_write_bw -d rxe2 -x "$gid" -s "$b" -n "$n" -F >/tmp/srv.out 2>&1 &
	spid=$!
	sleep 1
	ib_write_bw -d rxe0 -x "$gid" -s "$b" -n "$n" -F "$T_IP" >/tmp/cli.out 2>&1
	wait $spid
	# BW average [MB/sec] is the 4th column of the result line (MB = 2^20 bytes)
	perf=$(awk -v b="$b" '$1 == b { printf "%.4f", $4 * 1048576 / 1e9 }' /tmp/cli.out)
	start_target rxe2
	kvb=$(kvb_gbps rxe0 "$s" "$n")
	kill $tpid; wait $tpid 2>/dev/null
	echo "csv,one,$b,$n,${perf:-0},${kvb:-0}"
done
# one rail against two, 1 MiB blocks
start_target rxe2
one=$(kvb_gbps rxe0 1M 64)
kill $tpid; wait $tpid 2>/dev/null
start_target rxe2,rxe3
two=$(kvb_gbps rxe0,rxe1 1M 64)
kill $tpid; wait $tpid 2>/dev/null
echo "csv,rails,1048576,64,${one:-0},${two:-0}"

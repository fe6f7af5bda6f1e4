#!/bin/bash
# tests/vm/selftest.sh: TAP self-test of the SoftRoCE VM harness.
#
# Boots the VM once through run-in-vm.sh and checks, inside the guest, that
# the two rxe devices exist and talk to each other (ibv_rc_pingpong,
# ib_write_bw), that their counters move, that taking eth1 down takes rxe1's
# port down (and up again), and that host programs (python3) run from the
# shared host root.  Prints the boot+run wall time.  Exit 77 (with a
# "1..0 # SKIP" plan) when the VM cannot be made here.
set -eu

here=$(cd "$(dirname "$0")" && pwd -P)

if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
	cat <<EOF
usage: ${0##*/} [run-in-vm.sh options]

TAP self-test of tests/vm/run-in-vm.sh: rxe0/rxe1 present, ibv_rc_pingpong
rxe0->rxe1, ib_write_bw 64 KiB rxe0->rxe1, hw counters increase, eth1 down
takes rxe1 down (and up again), host python3 runs in the guest.  Options
(--accel, --cpus, --mem, --timeout, --keep-log, ...) go to run-in-vm.sh.
EOF
	exit 0
fi

if [ "${1:-}" != --guest ]; then
	# host side
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	t0=$(date +%s.%N)
	set +e
	"$here/run-in-vm.sh" "$@" -- /bin/bash "$here/selftest.sh" --guest | tee "$tmp/out"
	rc=${PIPESTATUS[0]}
	set -e
	t1=$(date +%s.%N)
	if ! grep -q '^1\.\.' "$tmp/out"; then
		if [ "$rc" = 77 ]; then
			echo "1..0 # SKIP the SoftRoCE VM cannot run here"
			exit 77
		fi
		echo "1..1"
		echo "not ok 1 - the VM ran the self-test (run-in-vm.sh status $rc)"
		exit 1
	fi
	echo "# boot+selftest wall time: $(echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}') s"
	exit "$rc"
fi

# --- guest side (run by run-in-vm.sh inside the VM, as root) ---
n=0 fail=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
notok() {
	n=$((n + 1)); fail=1
	echo "not ok $n - $1"
	shift
	for f in "$@"; do
		[ -s "$f" ] && { echo "# --- ${f##*/}"; tail -n 15 "$f" | sed 's/^/# /'; }
	done
	return 0
}
t=$(mktemp -d)
d0=$KVB_VM_RXE0 d1=$KVB_VM_RXE1
g0=$KVB_VM_GID_INDEX0 g1=$KVB_VM_GID_INDEX1
port0=/sys/class/infiniband/$d0/ports/1
port1=/sys/class/infiniband/$d1/ports/1

counter() { cat "/sys/class/infiniband/$1/ports/1/hw_counters/$2"; }
# wait_listen PORT: until a TCP socket listens on PORT (20 s)
wait_listen() {
	local i=0
	until ss -Hltn "sport = :$1" | grep -q .; do
		i=$((i + 1)); [ $i -le 200 ] || return 1
		sleep 0.1
	done
}
# wait_state PORTDIR WORD: until the port state contains WORD (15 s)
wait_state() {
	local i=0
	until grep -q "$2" "$1/state"; do
		i=$((i + 1)); [ $i -le 150 ] || return 1
		sleep 0.1
	done
}
# pingpong TCPPORT: ibv_rc_pingpong server on rxe1, client on rxe0
pingpong() {
	timeout 120 ibv_rc_pingpong -d "$d1" -g "$g1" -p "$1" -s 4096 -n 100 >"$t/pp-server.log" 2>&1 &
	local spid=$!
	wait_listen "$1" || { kill $spid; return 1; }
	timeout 120 ibv_rc_pingpong -d "$d0" -g "$g0" -p "$1" -s 4096 -n 100 "$KVB_VM_IP1" \
		>"$t/pp-client.log" 2>&1 || { wait $spid; return 1; }
	wait $spid && grep -q 'iters in' "$t/pp-client.log"
}

echo "1..7"
echo "# $d0 on $KVB_VM_NETDEV0 $KVB_VM_IP0 gid[$g0], $d1 on $KVB_VM_NETDEV1 $KVB_VM_IP1 gid[$g1], mtu $KVB_VM_MTU, $(nproc) vCPU, kernel $(uname -r)"

ibv_devices >"$t/devices" 2>&1
if grep -qw "$d0" "$t/devices" && grep -qw "$d1" "$t/devices"; then
	ok "ibv_devices lists $d0 and $d1"
else
	notok "ibv_devices lists $d0 and $d1" "$t/devices"
fi

s0=$(counter "$d0" sent_pkts) r0=$(counter "$d0" rcvd_pkts)
s1=$(counter "$d1" sent_pkts) r1=$(counter "$d1" rcvd_pkts)

if pingpong 18515; then
	ok "ibv_rc_pingpong $d0 -> $d1: $(grep 'iters in' "$t/pp-client.log" | head -n 1)"
else
	notok "ibv_rc_pingpong $d0 -> $d1" "$t/pp-server.log" "$t/pp-client.log"
fi

timeout 120 ib_write_bw -d "$d1" -x "$g1" -p 18516 -s 65536 -n 200 >"$t/bw-server.log" 2>&1 &
spid=$!
bw=""
if wait_listen 18516 &&
	timeout 120 ib_write_bw -d "$d0" -x "$g0" -p 18516 -s 65536 -n 200 "$KVB_VM_IP1" >"$t/bw-client.log" 2>&1 &&
	wait $spid; then
	# " 65536  200  peak  average  msgrate": the 4th field is the average
	bw=$(awk '$1 == 65536 && $2 == 200 { print $4 }' "$t/bw-client.log")
fi
if [ -n "$bw" ] && awk -v b="$bw" 'BEGIN { exit !(b > 0) }'; then
	ok "ib_write_bw $d0 -> $d1 64 KiB x 200: $bw MB/s"
else
	kill $spid 2>/dev/null || true
	notok "ib_write_bw $d0 -> $d1 64 KiB" "$t/bw-server.log" "$t/bw-client.log"
fi

s0b=$(counter "$d0" sent_pkts) r0b=$(counter "$d0" rcvd_pkts)
s1b=$(counter "$d1" sent_pkts) r1b=$(counter "$d1" rcvd_pkts)
msg="hw_counters: $d0 sent $s0->$s0b rcvd $r0->$r0b, $d1 sent $s1->$s1b rcvd $r1->$r1b"
if [ "$s0b" -gt "$s0" ] && [ "$r0b" -gt "$r0" ] && [ "$s1b" -gt "$s1" ] && [ "$r1b" -gt "$r1" ]; then
	ok "$msg"
else
	notok "$msg"
fi

ip link set dev "$KVB_VM_NETDEV1" down
if wait_state "$port1" DOWN; then
	ok "ip link set $KVB_VM_NETDEV1 down: $d1 port $(cat "$port1/state"), $d0 port $(cat "$port0/state")"
else
	notok "ip link set $KVB_VM_NETDEV1 down: $d1 port still $(cat "$port1/state")"
fi
ip link set dev "$KVB_VM_NETDEV1" up
if wait_state "$port1" ACTIVE && pingpong 18517; then
	ok "$KVB_VM_NETDEV1 up again: $d1 $(cat "$port1/state"), ibv_rc_pingpong passes"
else
	notok "$KVB_VM_NETDEV1 up again: $d1 $(cat "$port1/state")" "$t/pp-server.log" "$t/pp-client.log"
fi

# the host's python3 and this script's directory, seen through 9p.  Debian's
# interpreter, not a pyenv shim (those fork a dozen processes: ~4 s in TCG).
py=/usr/bin/python3
[ -x $py ] || py=python3
if out=$(cd "$here" && $py -c 'import os, sys; print(sys.version.split()[0], os.getcwd())' 2>&1) &&
	[ "${out#* }" = "$here" ] && echo x >"$KVB_VM_SCRATCH/probe"; then
	ok "host python3 runs from the 9p root ($out), scratch share writable"
else
	notok "host python3 runs from the 9p root, scratch share writable: $out"
fi
rm -rf "$t"
exit $fail

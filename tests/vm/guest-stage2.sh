#!/bin/sh
# tests/vm/guest-stage2.sh: second boot stage of the SoftRoCE test VM.
#
# Not run on the host.  run-in-vm.sh copies it into the per-run scratch share
# and the initramfs /init runs it as root with /bin/sh, chrooted into the
# host's root filesystem (9p, read-only; fresh /proc /sys /dev /tmp /run).
# It brings up the two virtio NICs and an rxe device on each, then runs the
# command from cmd.sh with its stdout on ttyS1 and stderr on ttyS2, which the
# host streams to its own stdout and stderr.  The command's exit status goes
# to "rc" in the scratch share.  Lines on stdout (the guest console, ttyS0)
# starting with @@KVB-VM are read by run-in-vm.sh.
set -u
dir=${0%/*}
. "$dir/config"

up() { cut -d' ' -f1 /proc/uptime; }
stage() { echo "@@KVB-VM-STAGE $* $(up)"; }
fail() { echo "@@KVB-VM-ERROR: $*"; exit 1; }

# Two rxe devices in one kernel: the ARP request for the peer's address
# arrives on the other NIC with a source address that is local to this host;
# without accept_local Linux drops it as a martian, ARP never resolves and
# ibv_modify_qp(RTR) fails with ETIMEDOUT.
echo 1 >/proc/sys/net/ipv4/conf/all/accept_local
for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 >"$f"; done
ip link set lo up || fail "ip link set lo up"

# hex form of ::ffff:A.B.C.D as sysfs prints GIDs
gid_of() {
	# shellcheck disable=SC2046
	set -- $(echo "$1" | tr . ' ')
	printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$1" "$2" "$3" "$4"
}

: >"$dir/vmenv.sh"
i=0
for nd in $KVB_NETDEVS; do
	ip=$(echo "$KVB_IPS" | cut -d' ' -f$((i + 1)))
	mac=$(echo "$KVB_MACS" | cut -d' ' -f$((i + 1)))
	[ -d "/sys/class/net/$nd" ] || fail "no netdev $nd"
	[ "$(cat "/sys/class/net/$nd/address")" = "$mac" ] ||
		fail "$nd has MAC $(cat "/sys/class/net/$nd/address"), expected $mac"
	ip link set dev "$nd" mtu "$KVB_MTU" up || fail "ip link set $nd up"
	ip addr add "$ip/$KVB_PREFIX" dev "$nd" || fail "ip addr add $ip dev $nd"
	rdma link add "rxe$i" type rxe netdev "$nd" || fail "rdma link add rxe$i netdev $nd"
	i=$((i + 1))
done
stage links

i=0
for nd in $KVB_NETDEVS; do
	ip=$(echo "$KVB_IPS" | cut -d' ' -f$((i + 1)))
	port=/sys/class/infiniband/rxe$i/ports/1
	n=0
	until grep -q ACTIVE "$port/state" 2>/dev/null; do
		n=$((n + 1))
		[ $n -le 300 ] || fail "rxe$i did not become ACTIVE: $(cat "$port/state" 2>&1)"
		sleep 0.1
	done
	# the RoCE v2 GID of the IPv4 address (index 1 on 6.1, but look it up)
	want=$(gid_of "$ip") idx=""
	n=0
	while [ -z "$idx" ]; do
		for g in "$port"/gids/*; do
			[ "$(cat "$g" 2>/dev/null)" = "$want" ] || continue
			t=$(cat "$port/gid_attrs/types/${g##*/}" 2>/dev/null)
			[ "$t" = "RoCE v2" ] && { idx=${g##*/}; break; }
		done
		n=$((n + 1))
		[ -n "$idx" ] || [ $n -le 100 ] || fail "rxe$i has no RoCE v2 GID for $ip"
		[ -n "$idx" ] || sleep 0.1
	done
	cat >>"$dir/vmenv.sh" <<EOF
export KVB_VM_RXE$i=rxe$i KVB_VM_NETDEV$i=$nd KVB_VM_IP$i=$ip KVB_VM_GID_INDEX$i=$idx
EOF
	i=$((i + 1))
done
cat >>"$dir/vmenv.sh" <<EOF
export KVB_VM=1 KVB_VM_SCRATCH=$dir KVB_VM_MTU=$KVB_MTU
EOF
stage ready

ulimit -l unlimited || fail "ulimit -l unlimited"
mkfifo /run/kvb-out /run/kvb-err || fail mkfifo
cat /run/kvb-out >/dev/ttyS1 &
pout=$!
cat /run/kvb-err >/dev/ttyS2 &
perr=$!
stage command
/bin/bash "$dir/cmd.sh" </dev/null >/run/kvb-out 2>/run/kvb-err
rc=$?
stage finished
echo "$rc" >"$dir/rc.tmp" && mv "$dir/rc.tmp" "$dir/rc"
# Daemons the command left behind may still hold the fifos: give the copies
# a moment, then stop them.  Closing the tty waits until it has drained.
n=0
while kill -0 $pout 2>/dev/null || kill -0 $perr 2>/dev/null; do
	n=$((n + 1))
	[ $n -le 50 ] || { kill $pout $perr 2>/dev/null; break; }
	sleep 0.1
done
wait
exit 0

#!/bin/sh
# The chaos and security suite (issue 12, bounded: about 2 minutes), in network
# namespaces joined by veth pairs, the decoder's namespace routing between them:
#
#   producer   10.91.1.1 --veth (shaped in the fault phase)-- 10.91.1.2  consumers (kvbridge
#                                                                        stream, vLLM Gen 0
#                                                                        side channel), proxy
#   outsider   10.91.2.2 --veth-- 10.91.2.1 (decoder namespace, routing)
#   insider    10.91.3.2 --veth-- 10.91.3.1
#
# Every daemon listens on its --host, allows 10.91.1.0/24 and the insider
# (--allow-peers), and needs --api-key on HTTP; the workers share a
# --secret-file.  The outsider is not allowed; the insider is, but holds
# neither the key nor the secret.  tests/chaos/driver.py (system python3,
# stdlib only) then shows: a scan of every port from both gets nothing and
# changes nothing; >= 500 verified requests under malformed frames,
# slowloris and idle connections; SIGSTOP and SIGKILL of each daemon
# mid-transfer with every request answered; 0 bytes wrong, 0 blocks held,
# fds and RSS bounded.  TAP; the table goes to chaos-table.txt.  Needs root
# (ip netns, tc); skips otherwise.
tmp=$(mktemp -d)
. "${top_srcdir:-.}/tests/hw_lib.sh"
srcdir=${top_srcdir:-.}
[ -x "$serve" ] || skip_all "kvbridge-serve not built (hw backend disabled)"
[ -x "$proxy" ] || skip_all "kvbridge-proxy not built"
[ "$(id -u)" = 0 ] || skip_all "needs root for network namespaces"
command -v ip >/dev/null || skip_all "iproute2 (ip) not installed"
command -v tc >/dev/null || skip_all "tc (iproute2) not installed"
command -v python3 >/dev/null || skip_all "python3 not installed"
sfx=$$
nsP=kcP$sfx; nsD=kcD$sfx; nsO=kcO$sfx; nsI=kcI$sfx
ip netns add $nsP 2>/dev/null || skip_all "cannot create network namespaces here"
netcleanup() {
	# whatever still runs in our namespaces was started by this test
	for ns in $nsP $nsD $nsO $nsI; do
		for p in $(ip netns pids $ns 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
	done
	cleanup
	for ns in $nsP $nsD $nsO $nsI; do ip netns del $ns 2>/dev/null; done
}
trap netcleanup EXIT
trap 'exit 1' INT TERM
for ns in $nsD $nsO $nsI; do ip netns add $ns; done
for ns in $nsP $nsD $nsO $nsI; do ip -n $ns link set lo up; done
# link NS_A DEV_A ADDR_A NS_B DEV_B ADDR_B: a veth pair, a /24 each side
link() {
	ip link add "$2" netns "$1" type veth peer name "$5" netns "$4" || return 1
	ip -n "$1" addr add "$3/24" dev "$2" && ip -n "$4" addr add "$6/24" dev "$5" &&
	ip -n "$1" link set "$2" up && ip -n "$4" link set "$5" up
}
link $nsP kcp$sfx 10.91.1.1 $nsD kcd$sfx 10.91.1.2 || skip_all "cannot create veth pairs"
link $nsO kco$sfx 10.91.2.2 $nsD kcdo$sfx 10.91.2.1 || exit 1
link $nsI kci$sfx 10.91.3.2 $nsD kcdi$sfx 10.91.3.1 || exit 1
ip netns exec $nsD sysctl -q -w net.ipv4.ip_forward=1 || exit 1
ip -n $nsP route add default via 10.91.1.2
ip -n $nsO route add default via 10.91.2.1
ip -n $nsI route add default via 10.91.3.1

head -c 48 /dev/urandom | base64 > "$tmp/secret"
chmod 600 "$tmp/secret"
table=${CHAOS_TABLE:-$builddir/chaos-table.txt}
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in the source tree
# the driver runs in the decoders' namespace (it reaches every daemon from
# there) and starts the producer and the attackers in theirs
ip netns exec $nsD python3 "$srcdir/tests/chaos/driver.py" \
	--serve "$serve" --proxy "$proxy" --tmp "$tmp" --table "$table" \
	--ns-p $nsP --ns-o $nsO --ns-i $nsI --dev-p kcp$sfx \
	--ip-p 10.91.1.1 --ip-d 10.91.1.2 --ip-o 10.91.2.2 --ip-i 10.91.3.2 \
	--allow 10.91.1.0/24,10.91.3.2/32,127.0.0.0/8 \
	--secret "$tmp/secret" --key "kvb-chaos-worker-key-$sfx" --proxy-key "kvb-chaos-proxy-key-$sfx" \
	${CHAOS_REQUESTS:+--requests $CHAOS_REQUESTS} ${CHAOS_LOAD_SECONDS:+--load-seconds $CHAOS_LOAD_SECONDS}
rc=$?
[ $rc -eq 0 ] || { for f in "$tmp"/*.log; do echo "# --- $(basename "$f")"; tail -n 20 "$f" | sed 's/^/# /'; done; }
exit $rc

#!/bin/sh
# Two hosts made of network namespaces joined by a veth pair (10.77.x.1 and
# .2, shaped to 400 Mbit/s): a producer on one, a consumer and the proxy on
# the other.  A Qwen2.5-0.5B KV cache crosses the link through the proxy,
# byte-exact; a consumer killed with SIGKILL halfway through a transfer
# leaves the producer to free the blocks at lease expiry, and the producer
# keeps serving.  Needs root (ip netns, tc); skips otherwise.
tmp=$(mktemp -d)
. "${top_srcdir:-.}/tests/hw_lib.sh"
[ -x "$serve" ] || skip_all "kvbridge-serve not built (hw backend disabled)"
[ "$(id -u)" = 0 ] || skip_all "needs root for network namespaces"
command -v ip >/dev/null || skip_all "iproute2 (ip) not installed"
command -v curl >/dev/null || skip_all "curl not installed"
sfx=$$
nsP=kvbP$sfx; nsD=kvbD$sfx
net=10.77.$(($$ % 200))
ip netns add $nsP 2>/dev/null || skip_all "cannot create network namespaces here"
netcleanup() {
	cleanup
	ip netns del $nsP 2>/dev/null
	ip netns del $nsD 2>/dev/null
}
trap netcleanup EXIT
ip netns add $nsD
ip -n $nsP link set lo up
ip -n $nsD link set lo up
ip link add vP$sfx netns $nsP type veth peer name vD$sfx netns $nsD
ip -n $nsP addr add $net.1/24 dev vP$sfx
ip -n $nsD addr add $net.2/24 dev vD$sfx
ip -n $nsP link set vP$sfx up
ip -n $nsD link set vD$sfx up
# 400 Mbit/s each way: a 150 MB transfer takes about 3 s
ip netns exec $nsP tc qdisc add dev vP$sfx root tbf rate 400mbit burst 256kb latency 100ms
ip netns exec $nsD tc qdisc add dev vD$sfx root tbf rate 400mbit burst 256kb latency 100ms
echo "1..6"
export VLLM_MOONCAKE_BOOTSTRAP_PORT=8998
inP() { ip netns exec $nsP "$@"; }
inD() { ip netns exec $nsD "$@"; }

start prod ip netns exec $nsP "$serve" --vllm-protocol gen0 --role producer --host $net.1 --http-port 8100 --blocks 8192 --lease 3 -v || exit 1
start cons ip netns exec $nsD "$serve" --vllm-protocol gen0 --role consumer --host $net.2 --http-port 8200 --blocks 8192 --pull-protocol vllm -v || exit 1
start proxy ip netns exec $nsD "$proxy" --vllm-protocol gen0 --port 8000 --prefiller-host $net.1 --prefiller-port 8100 --decoder-host $net.2 --decoder-port 8200 -v || exit 1

good=0
for len in 16 1000 4000; do
	st=$(inD curl -s -o "$tmp/resp" -w '%{http_code}' --max-time 60 -H 'Content-Type: application/json' \
		-d "{\"prompt\":\"$(words $len)\"}" http://127.0.0.1:8000/v1/completions)
	[ "$st" = 200 ] && grep -q '"mismatched_bytes":0' "$tmp/resp" && good=$((good+1))
done
check "3 prompts across the veth through the proxy: every byte verified" "[ $good -eq 3 ]"
inP curl -s --max-time 5 http://$net.1:8100/stats > "$tmp/s"
check "the bytes crossed the link from the producer's namespace" "[ \$(json_num '$tmp/s' tcp_bytes_posted) -gt 50000000 ] && grep -q '\"blocks_held\":0' '$tmp/s'"

# a consumer killed halfway: 12,000 tokens = 147 MB = about 3 s on this link
start victim ip netns exec $nsD "$serve" --vllm-protocol gen0 --role consumer --host $net.2 --http-port 8300 --blocks 8192 --pull-protocol vllm || exit 1
vpid=$last_pid
st=$(inP curl -s -o "$tmp/resp" -w '%{http_code}' --max-time 10 -H 'Content-Type: application/json' -H 'X-Request-Id: big-1' \
	-d '{"prompt":"x","kv_transfer_params":{"do_remote_decode":true,"kvbridge_tokens":12000}}' http://$net.1:8100/v1/completions)
params=$(sed -n 's/.*"kv_transfer_params":\({[^}]*}\).*/\1/p' "$tmp/resp")
( inD curl -s -o /dev/null --max-time 30 -H 'Content-Type: application/json' -H 'X-Request-Id: big-1' \
	-d "{\"prompt\":\"x\",\"kv_transfer_params\":$params}" http://$net.2:8300/v1/completions ) &
sleep 1.2
kill -KILL $vpid   # ip netns exec ran kvbridge-serve in place: this is its pid
inP curl -s --max-time 5 http://$net.1:8100/stats > "$tmp/s1"
check "killed mid-transfer: the producer had written part of it, not all" "[ \$(json_num '$tmp/s1' tcp_bytes_posted) -lt \$(( \$(json_num '$tmp/s' tcp_bytes_posted) + 147456000 )) ] && grep -q '\"producer_live\":1' '$tmp/s1'"
sleep 4.5
inP curl -s --max-time 5 http://$net.1:8100/stats > "$tmp/s2"
check "after the lease the producer holds no block" "grep -q '\"blocks_held\":0' '$tmp/s2' && grep -q '\"producer_live\":0' '$tmp/s2'"
check "the failure is counted (peer or transport, or lease)" "[ \$(( \$(json_num '$tmp/s2' fail_peer) + \$(json_num '$tmp/s2' fail_transport) + \$(json_num '$tmp/s2' leases_expired) )) -ge 1 ]"
st=$(inD curl -s -o "$tmp/resp" -w '%{http_code}' --max-time 60 -H 'Content-Type: application/json' \
	-d "{\"prompt\":\"$(words 300)\"}" http://127.0.0.1:8000/v1/completions)
check "the producer keeps serving (HTTP $st)" "[ '$st' = 200 ] && grep -q '\"mismatched_bytes\":0' '$tmp/resp'"
exit $fail

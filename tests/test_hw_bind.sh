#!/bin/sh
# Every listener binds where it is told, and only there (issue 12, "bind
# where asked"): kvbridge-serve as producer (Gen 2 and Gen 0), consumer and
# relay, and kvbridge-proxy, listen on loopback when nothing is configured,
# on --host or VLLM_HOST_IP when set, and on every interface only when told
# (--bind 0.0.0.0, proxy --host 0.0.0.0), which they warn about.  The
# sockets are read from /proc (tests/listeners.py), not from the logs.
tmp=$(mktemp -d)
. "${top_srcdir:-.}/tests/hw_lib.sh"
trap cleanup EXIT
srcdir=${top_srcdir:-.}
[ -x "$serve" ] || skip_all "kvbridge-serve not built (hw backend disabled)"
command -v python3 >/dev/null || skip_all "python3 not installed"
[ -r /proc/self/net/tcp ] || skip_all "no /proc/self/net/tcp to read listeners from"
echo "1..19"
# below the ephemeral range (32768+), away from test_hw_procs' and test_hw_gen2's
boot=$((30100 + $$ % 2600))

# addrs PID: the distinct addresses PID listens on; count PID: how many sockets
addrs() { python3 "$srcdir/tests/listeners.py" "$1" | awk '{print $1}' | sort -u | tr '\n' ' ' | sed 's/ $//'; }
count() { python3 "$srcdir/tests/listeners.py" "$1" | wc -l; }
# on PID ADDR MIN: every socket on ADDR, at least MIN of them
on() { [ "$(addrs "$1")" = "$2" ] && [ "$(count "$1")" -ge "$3" ]; }

start prod "$serve" --role producer --http-port 0 --bootstrap-port $boot --engine-id bind-e || exit 1
P=$last_pid
check "gen2 producer, nothing configured: http, handshake, data, bootstrap and ROUTER on loopback only ($(addrs $P), $(count $P) sockets)" \
	"on $P 127.0.0.1 5 && grep -q 'listening on 127.0.0.1: http' '$tmp/prod.log'"

VLLM_MOONCAKE_BOOTSTRAP_PORT=$((boot + 1)) start gen0 "$serve" --vllm-protocol gen0 --role producer --http-port 0 || exit 1
G=$last_pid
check "gen0 producer: the side channel on loopback too ($(addrs $G), $(count $G) sockets)" \
	"on $G 127.0.0.1 4 && [ \"\$(field gen0 side_channel)\" = $((boot + 1)) ] && grep -q 'side channel $((boot + 1))' '$tmp/gen0.log'"

start cons "$serve" --role consumer --http-port 0 || exit 1
C=$last_pid
check "consumer, nothing configured: loopback only ($(addrs $C))" "on $C 127.0.0.1 3"

start relay "$serve" --role relay --upstream "http://127.0.0.1:$(field prod http)" \
	--upstream-bootstrap "http://127.0.0.1:$boot" --http-port 0 --bootstrap-port 0 --engine-id relay-e || exit 1
R=$last_pid
check "relay (and its upstream side's ports): loopback only ($(addrs $R), $(count $R) sockets)" "on $R 127.0.0.1 5"

start host2 "$serve" --role producer --host 127.0.0.2 --http-port 0 --bootstrap-port $((boot + 2)) || exit 1
H=$last_pid
check "--host 127.0.0.2: every port there, and peers told so ($(addrs $H); segment $(field host2 segment))" \
	"on $H 127.0.0.2 5 && case \"\$(field host2 segment)\" in 127.0.0.2:*) true ;; *) false ;; esac"

VLLM_HOST_IP=127.0.0.3 start host3 "$serve" --role producer --http-port 0 --bootstrap-port $((boot + 3)) || exit 1
V=$last_pid
check "VLLM_HOST_IP=127.0.0.3: every port there, the worker registered there ($(addrs $V))" \
	"on $V 127.0.0.3 5 && grep -q 'worker tcp://127.0.0.3:' '$tmp/host3.log'"

start any "$serve" --role consumer --bind 0.0.0.0 --http-port 0 || exit 1
A=$last_pid
check "--bind 0.0.0.0: every interface, with a warning ($(addrs $A))" \
	"python3 '$srcdir/tests/listeners.py' $A > '$tmp/any.l' && grep -q '^0.0.0.0 ' '$tmp/any.l' && grep -q 'warning: listening on every interface' '$tmp/any.log'"

# two of a worker's own ports the same: refused at start, both named
rc=0; "$serve" --role producer --http-port $((boot + 4)) --bootstrap-port $((boot + 4)) > /dev/null 2> "$tmp/clash.err" || rc=$?
check "kvbridge-serve --http-port = its bootstrap port: exit 2, both named (exit $rc)" \
	"[ $rc = 2 ] && grep -q -- '--http-port and the vLLM bootstrap port' '$tmp/clash.err'"

# who may connect, whom a worker dials (--allow-peers)
start acl "$serve" --role consumer --http-port 0 --allow-peers 127.0.0.1/32 || exit 1
AP=$(field acl http)
st2=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --interface 127.0.0.2 "http://127.0.0.1:$AP/health")
st1=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --interface 127.0.0.1 "http://127.0.0.1:$AP/health")
check "--allow-peers 127.0.0.1/32: HTTP from 127.0.0.2 gets nothing, from 127.0.0.1 200 (HTTP $st2, $st1); counted" \
	"[ '$st2' = 000 ] && [ '$st1' = 200 ] && get http://127.0.0.1:$AP/stats | grep -q '\"peers_refused\":[1-9]' && grep -q 'peers allowed: 127.0.0.1/32' '$tmp/acl.log'"
# a client names a producer outside the allowed peers: 403, nothing dialled
C=$(field cons http)
st=$(post "http://127.0.0.1:$C/v1/completions" '{"prompt":"x","kv_transfer_params":{"do_remote_prefill":true,"remote_bootstrap_addr":"http://192.0.2.1:8998","remote_engine_id":"e","transfer_id":"t-acl"}}')
check "decode leg naming remote_bootstrap_addr 192.0.2.1: 403 naming the field (HTTP $st)" \
	"[ '$st' = 403 ] && grep -q 'remote_bootstrap_addr: 192.0.2.1' '$tmp/resp' && grep -q 'not among the allowed peers' '$tmp/resp' && get http://127.0.0.1:$C/stats | grep -q '\"blocks_held\":0'"
start cons0 "$serve" --vllm-protocol gen0 --role consumer --http-port 0 || exit 1
st=$(post "http://127.0.0.1:$(field cons0 http)/v1/completions" '{"prompt":"x","kv_transfer_params":{"do_remote_prefill":true,"remote_host":"192.0.2.7","remote_port":5557,"remote_engine_id":"e"}}')
check "gen0 decode leg naming remote_host 192.0.2.7: 403 naming the field (HTTP $st)" \
	"[ '$st' = 403 ] && grep -q 'remote_host: 192.0.2.7' '$tmp/resp'"

# API keys: every endpoint but /health needs the bearer token
K=kvb-test-key-0123456789
"$serve" --role producer --http-port 0 --api-key short > /dev/null 2> "$tmp/short.err"; rc=$?
check "--api-key shorter than 16 characters: exit 2 naming it (exit $rc)" \
	"[ $rc = 2 ] && grep -q 'shorter than 16' '$tmp/short.err'"
KVB_API_KEY=$K start kprod "$serve" --role producer --http-port 0 --bootstrap-port $((boot + 5)) --engine-id key-e || exit 1
KP=$(field kprod http)
code() { curl -s -o "$tmp/resp" -w '%{http_code}' --max-time 5 "$@"; }
h=$(code "http://127.0.0.1:$KP/health")
s0=$(code "http://127.0.0.1:$KP/stats")
s1=$(code -H "Authorization: Bearer wrong-key-0123456789" "http://127.0.0.1:$KP/stats")
l0=$(code "http://127.0.0.1:$KP/layout")
p0=$(code -H 'Content-Type: application/json' -d '{"prompt":"x","kv_transfer_params":{"do_remote_decode":true,"transfer_id":"t-k"}}' "http://127.0.0.1:$KP/v1/completions")
s2=$(code -H "Authorization: Bearer $K" "http://127.0.0.1:$KP/stats")
check "KVB_API_KEY: /health open ($h); /stats, /layout, /v1/completions 401 without it ($s0 $l0 $p0) or with a wrong one ($s1); 200 with it ($s2)" \
	"[ $h = 200 ] && [ $s0 = 401 ] && [ $l0 = 401 ] && [ $p0 = 401 ] && [ $s1 = 401 ] && [ $s2 = 200 ]"

[ -x "$proxy" ] || { for i in 14 15 16 17 18 19; do echo "ok $i # SKIP kvbridge-proxy not built"; done; exit $fail; }
start px "$proxy" --port 0 --prefiller-port "$(field prod http)" --decoder-port "$(field cons http)" \
	--prefiller-bootstrap-port $boot || exit 1
X=$last_pid
check "proxy, nothing configured: loopback only ($(addrs $X))" "on $X 127.0.0.1 1 && ! grep -q warning '$tmp/px.log'"
start pxany "$proxy" --host 0.0.0.0 --port 0 --prefiller-port "$(field prod http)" \
	--decoder-port "$(field cons http)" --prefiller-bootstrap-port $boot || exit 1
check "proxy --host 0.0.0.0: every interface, with a warning" \
	"on $last_pid 0.0.0.0 1 && grep -q 'warning: listening on every interface' '$tmp/pxany.log'"
# the proxy's port is a local prefiller's bootstrap (or a decoder's HTTP) port
rc=0; "$proxy" --port $boot --prefiller-port "$(field prod http)" --decoder-port "$(field cons http)" \
	--prefiller-bootstrap-port $boot > /dev/null 2> "$tmp/pclash.err" || rc=$?
check "kvbridge-proxy --port = the prefiller's bootstrap port: exit 2, both named (exit $rc)" \
	"[ $rc = 2 ] && grep -q -- '--port $boot is also prefiller localhost:' '$tmp/pclash.err' && grep -q 'bootstrap port' '$tmp/pclash.err'"
start pxacl "$proxy" --allow-peers 127.0.0.1/32 --port 0 --prefiller-port "$(field prod http)" \
	--decoder-port "$(field cons http)" --prefiller-bootstrap-port $boot || exit 1
XA=$(sed -n 's/.*ready on [^:]*:\([0-9]*\).*/\1/p' "$tmp/pxacl.out")
st2=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --interface 127.0.0.2 "http://127.0.0.1:$XA/health")
st1=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --interface 127.0.0.1 "http://127.0.0.1:$XA/stats")
check "proxy --allow-peers 127.0.0.1/32: 127.0.0.2 gets nothing, 127.0.0.1 is served (HTTP $st2, $st1)" \
	"[ '$st2' = 000 ] && [ '$st1' = 200 ]"
# end to end with keys: the proxy's clients need its key, its legs carry the workers' key
start kcons "$serve" --role consumer --http-port 0 --api-key $K || exit 1
OPENAI_API_KEY=$K start kpx "$proxy" --api-key proxy-key-0123456789 --port 0 --prefiller-port $KP \
	--decoder-port "$(field kcons http)" --prefiller-bootstrap-port $((boot + 5)) || exit 1
XK=$(sed -n 's/.*ready on [^:]*:\([0-9]*\).*/\1/p' "$tmp/kpx.out")
i=0; while [ "$(code "http://127.0.0.1:$XK/health")" != 200 ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
n0=$(code -H 'Content-Type: application/json' -d '{"prompt":"a b c"}' "http://127.0.0.1:$XK/v1/completions")
n1=$(code -H 'Content-Type: application/json' -H 'Authorization: Bearer proxy-key-0123456789' \
	-d '{"prompt":"a b c d e f"}' "http://127.0.0.1:$XK/v1/completions")
check "proxy --api-key: 401 without it ($n0); with it a request through key-protected workers is verified ($n1)" \
	"[ $n0 = 401 ] && [ $n1 = 200 ] && grep -q '\"mismatched_bytes\":0' '$tmp/resp'"
# the same through a gen0 proxy (vLLM 0.13-0.15's contract): both of its legs carry the key too
KVB_API_KEY=$K VLLM_MOONCAKE_BOOTSTRAP_PORT=$((boot + 6)) start kp0 "$serve" --vllm-protocol gen0 --role producer \
	--http-port 0 || exit 1
KVB_API_KEY=$K start kc0 "$serve" --vllm-protocol gen0 --role consumer --http-port 0 || exit 1
OPENAI_API_KEY=$K start kpx0 "$proxy" --vllm-protocol gen0 --port 0 --prefiller-port "$(field kp0 http)" \
	--decoder-port "$(field kc0 http)" || exit 1
XK0=$(sed -n 's/.*ready on [^:]*:\([0-9]*\).*/\1/p' "$tmp/kpx0.out")
n2=$(code -H 'Content-Type: application/json' -d '{"prompt":"a b c d e f"}' "http://127.0.0.1:$XK0/v1/completions")
check "gen0 proxy, OPENAI_API_KEY: both legs carry it to key-protected workers, the request is verified ($n2)" \
	"[ $n2 = 200 ] && grep -q '\"mismatched_bytes\":0' '$tmp/resp'"
exit $fail

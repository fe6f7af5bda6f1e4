#!/bin/sh
# kvbridge-serve and kvbridge-proxy as separate processes on loopback:
# requests through the proxy move a Qwen2.5-0.5B-shaped KV cache producer ->
# consumer over the vLLM side channel and over kvbridge's own stream, every
# byte checked by the consumer; a lease runs out across processes; bad HTTP.
# Nothing leaks: /stats shows no block held.  (A consumer killed mid-transfer
# is in test_hw_netns.sh, where a shaped link makes "mid" certain.)
tmp=$(mktemp -d)
. "${top_srcdir:-.}/tests/hw_lib.sh"
trap cleanup EXIT
command -v curl >/dev/null || skip_all "curl not installed"
[ -x "$serve" ] || skip_all "kvbridge-serve not built (hw backend disabled)"
echo "1..12"
# below the ephemeral range (32768+), where the kernel picks other sockets' ports
base=$((20000 + $$ % 10000))
export VLLM_MOONCAKE_BOOTSTRAP_PORT=$base

start prod "$serve" --vllm-protocol gen0 --role producer --http-port 0 --blocks 8192 --lease 3 -v || exit 1
P=$(field prod http)
start cons "$serve" --vllm-protocol gen0 --role consumer --http-port 0 --blocks 8192 --pull-protocol vllm -v || exit 1
C=$(field cons http)
start cons2 "$serve" --vllm-protocol gen0 --role consumer --http-port 0 --blocks 8192 -v || exit 1
C2=$(field cons2 http)
start proxy "$proxy" --vllm-protocol gen0 --port 0 --prefiller-port "$P" --decoder-port "$C" -v || exit 1
X=$(sed -n 's/.*ready on [^:]*:\([0-9]*\).*/\1/p' "$tmp/proxy.out")
start proxy2 "$proxy" --vllm-protocol gen0 --port 0 --prefiller-port "$P" --decoder-port "$C2" || exit 1
X2=$(sed -n 's/.*ready on [^:]*:\([0-9]*\).*/\1/p' "$tmp/proxy2.out")

good=0
for len in 1 15 16 17 200 1000 3000 9000; do
	st=$(post "http://127.0.0.1:$X/v1/completions" "{\"model\":\"q\",\"prompt\":\"$(words $len)\",\"max_tokens\":4}")
	[ "$st" = 200 ] && grep -q '"mismatched_bytes":0' "$tmp/resp" && good=$((good+1))
done
check "8 prompts (1 to 9000 tokens) through the proxy over the vLLM side channel: all verified" "[ $good -eq 8 ]"
check "consumer counted the verified bytes" "get http://127.0.0.1:$C/stats > '$tmp/s' && [ \$(json_num '$tmp/s' mismatched_bytes) -eq 0 ] && [ \$(json_num '$tmp/s' verified_bytes) -gt 100000000 ]"
good=0
for len in 5 500 5000; do
	st=$(post "http://127.0.0.1:$X2/v1/chat/completions" "{\"model\":\"q\",\"messages\":[{\"role\":\"user\",\"content\":\"$(words $len)\"}]}")
	[ "$st" = 200 ] && grep -q '"mismatched_bytes":0' "$tmp/resp" && good=$((good+1))
done
check "chat requests over kvbridge's own stream: all verified" "[ $good -eq 3 ]"
sleep 0.3
check "producer: every served request freed its blocks" "get http://127.0.0.1:$P/stats > '$tmp/s' && grep -q '\"blocks_held\":0' '$tmp/s' && grep -q '\"producer_live\":0' '$tmp/s'"

# lease expiry across processes: the producer holds the blocks 3 s, the pull comes at 4 s
st=$(post "http://127.0.0.1:$P/v1/completions" '{"prompt":"late late late","kv_transfer_params":{"do_remote_decode":true}}' late-1)
cp "$tmp/resp" "$tmp/late-params"
params=$(sed -n 's/.*"kv_transfer_params":\({[^}]*}\).*/\1/p' "$tmp/late-params")
sleep 4
st=$(post "http://127.0.0.1:$C2/v1/completions" "{\"prompt\":\"late late late\",\"kv_transfer_params\":$params}" late-1)
check "late pull after the lease (kvbridge stream): refused with the reason (HTTP $st)" "[ '$st' = 502 ] && grep -q -i 'expired' '$tmp/resp'"
check "producer counted the expired lease, holds nothing" "get http://127.0.0.1:$P/stats > '$tmp/s' && [ \$(json_num '$tmp/s' leases_expired) -ge 1 ] && grep -q '\"blocks_held\":0' '$tmp/s'"

# a decoder that asks for fewer blocks than the producer holds gets the
# producer's last ones (vLLM's rule: a decoder's cached prefix is not sent),
# and they check against its own last positions; never the first ones
st=$(post "http://127.0.0.1:$P/v1/completions" '{"prompt":"x","kv_transfer_params":{"do_remote_decode":true,"kvbridge_tokens":100}}' tail-1)
params=$(sed -n 's/.*"kv_transfer_params":\({[^}]*}\).*/\1/p' "$tmp/resp" | sed 's/"kvbridge_tokens":100/"kvbridge_tokens":40/')
st=$(post "http://127.0.0.1:$C2/v1/completions" "{\"prompt\":\"x\",\"kv_transfer_params\":$params}" tail-1)
check "a decoder asking 3 of the producer's 7 blocks gets the last 3, verified (HTTP $st)" \
	"[ '$st' = 200 ] && grep -q '\"mismatched_bytes\":0' '$tmp/resp' && grep -q '\"blocks\":3' '$tmp/resp'"

# two TP ranks of one prefiller started as separate workers, the proxy sending
# each prefill to one of them (a misconfiguration: vLLM's ranks share one
# engine).  Decoder rank 0 pulls from prefiller rank 0: when the prefill went
# to rank 1, rank 0 says within seconds that it never prefilled it, naming
# itself, instead of holding the request until the lease.  A TP 1 decoder is
# refused at once: Gen 0 cannot pair different TP sizes.
tb=$((base + 40))
VLLM_MOONCAKE_BOOTSTRAP_PORT=$tb start r0 "$serve" --vllm-protocol gen0 --role producer --tp-size 2 --tp-rank 0 \
	--http-port 0 --blocks 512 --lease 3 || exit 1
VLLM_MOONCAKE_BOOTSTRAP_PORT=$tb start r1 "$serve" --vllm-protocol gen0 --role producer --tp-size 2 --tp-rank 1 \
	--http-port 0 --blocks 512 --lease 3 || exit 1
start cr "$serve" --vllm-protocol gen0 --role consumer --tp-size 2 --tp-rank 0 --http-port 0 --blocks 512 \
	--pull-protocol vllm || exit 1
start pr "$proxy" --vllm-protocol gen0 --port 0 --prefiller-port "$(field r0 http),$(field r1 http)" \
	--decoder-port "$(field cr http)" || exit 1
start c1 "$serve" --vllm-protocol gen0 --role consumer --http-port 0 --blocks 512 || exit 1
start p1 "$proxy" --vllm-protocol gen0 --port 0 --prefiller-port "$(field r0 http)" --decoder-port "$(field c1 http)" || exit 1
XR=$(sed -n 's/.*ready on [^:]*:\([0-9]*\).*/\1/p' "$tmp/pr.out")
ok_n=0 failed_fast=0
for i in 1 2; do
	t0=$(date +%s)
	st=$(post "http://127.0.0.1:$XR/v1/completions" "{\"prompt\":\"$(words 40)\"}")
	t1=$(date +%s)
	cp "$tmp/resp" "$tmp/tp-$i.log"
	if [ "$st" = 200 ]; then grep -q '"mismatched_bytes":0' "$tmp/resp" && ok_n=$((ok_n+1))
	else [ $((t1 - t0)) -le 10 ] && failed_fast=$((failed_fast+1)); fi
done
st=$(post "http://127.0.0.1:$(sed -n 's/.*ready on [^:]*:\([0-9]*\).*/\1/p' "$tmp/p1.out")/v1/completions" \
	"{\"prompt\":\"$(words 40)\"}")
check "TP 2 prefiller ranks behind one proxy: the request rank 0 prefilled is verified, the other fails in seconds with rank 0 naming itself ($ok_n + $failed_fast of 2); a TP 1 decoder is refused at once (HTTP $st)" \
	"[ $ok_n -eq 1 ] && [ $failed_fast -eq 1 ] && grep -q 'never prefilled on this producer (tp rank 0 of 2)' '$tmp/r0.log' && grep -q 'TP size 2 and this decoder 1' '$tmp/resp'"

# bad HTTP: the daemons answer 400 and keep serving
printf 'GARBAGE\r\n\r\n' | curl -s -o /dev/null --max-time 5 telnet://127.0.0.1:$P >/dev/null 2>&1
st=$(curl -s -o "$tmp/resp" -w '%{http_code}' --max-time 5 -H 'Content-Type: application/json' -d '{not json' http://127.0.0.1:$C/v1/completions)
check "malformed JSON: 400 with a message (HTTP $st)" "[ '$st' = 400 ] && grep -q message '$tmp/resp'"
st=$(curl -s -o "$tmp/resp" -w '%{http_code}' --max-time 5 -H 'Transfer-Encoding: chunked' -H 'Content-Length: 5' -d 'hello' http://127.0.0.1:$X/v1/completions)
check "request smuggling shape (TE + CL) refused by the proxy (HTTP $st)" "[ '$st' = 400 ]"
# a stated prompt length is a count of tokens: 2^64-1, -5, 0, 2.5, "12" and
# 10^23 are each refused naming the field, as is an empty prompt
bad=0
for v in 18446744073709551615 -5 0 2.5 '"12"' 99999999999999999999999; do
	st=$(post "http://127.0.0.1:$P/v1/completions" \
		"{\"prompt\":\"x\",\"kv_transfer_params\":{\"do_remote_decode\":true,\"kvbridge_tokens\":$v}}")
	[ "$st" = 400 ] && grep -q 'kvbridge_tokens must be an integer in 1\.\.' "$tmp/resp" && bad=$((bad+1))
done
st=$(post "http://127.0.0.1:$P/v1/completions" '{"prompt":"","kv_transfer_params":{"do_remote_decode":true}}')
[ "$st" = 400 ] && grep -q 'prompt is empty' "$tmp/resp" && bad=$((bad+1))
check "out-of-range kvbridge_tokens and an empty prompt: 400 naming the field ($bad of 7), no block held" \
	"[ $bad -eq 7 ] && get http://127.0.0.1:$P/stats > '$tmp/s' && grep -q '\"blocks_held\":0' '$tmp/s'"
st=$(post "http://127.0.0.1:$X/v1/completions" "{\"prompt\":\"$(words 40)\"}")
check "still serving after bad input (HTTP $st)" "[ '$st' = 200 ]"
exit $fail

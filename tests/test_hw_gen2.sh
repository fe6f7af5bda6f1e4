#!/bin/sh
# kvbridge-serve with vLLM's Gen 1/2 control plane (vLLM 0.16+), as
# processes on loopback, driven with the router contract of vLLM's
# mooncake_connector_proxy.py (the two legs sent at once):
#   - a producer (serving the HTTP bootstrap) and a consumer, every byte of
#     every request verified, the decode leg first or the prefill leg first;
#   - a relay between them, same layout: the decoder's bytes are the
#     producer's pattern; and with one block corrupted on purpose, the
#     decoder's check fails (the check can fail);
#   - a relay converting a 16-token K/V-split layout (vLLM 0.13 on CPU) to
#     a 32-token packed one (vLLM 0.32): the decoder's bytes equal the
#     producer's tokens moved to their new places (tests/interop/kvconv.py);
#   - the bootstrap, the missing transfer_id, a decode leg for a transfer
#     that never comes.
# Nothing leaks: /stats shows no block held.
tmp=$(mktemp -d)
. "${top_srcdir:-.}/tests/hw_lib.sh"
trap cleanup EXIT
srcdir=${top_srcdir:-.}
command -v curl >/dev/null || skip_all "curl not installed"
command -v python3 >/dev/null || skip_all "python3 not installed"
[ -x "$serve" ] || skip_all "kvbridge-serve not built (hw backend disabled)"
echo "1..14"
# below the ephemeral range (32768+), where the kernel picks other sockets' ports
base=$((12000 + $$ % 7900))
B=$base          # the producer's bootstrap
RB=$((base + 1)) # the relays' bootstraps
CB=$((base + 2))

start prod "$serve" --role producer --http-port 0 --blocks 2048 --lease 5 --engine-id prefill-e \
	--bootstrap-port $B -v || exit 1
P=$(field prod http)
start cons "$serve" --role consumer --http-port 0 --blocks 2048 -v || exit 1
C=$(field cons http)

# leg URL TRANSFER [kind]: kind p = prefill leg, d = decode leg against bootstrap $2
pleg() { # URL RID TRANSFER TOKENS
	curl -s -o "$tmp/p-$3" -w '%{http_code}' -H 'Content-Type: application/json' -H "X-Request-Id: $2" \
		--max-time 60 -d "{\"prompt\":\"x\",\"max_tokens\":1,\"kv_transfer_params\":{\"do_remote_decode\":true,\"do_remote_prefill\":false,\"transfer_id\":\"$3\",\"kvbridge_tokens\":$4}}" "$1/v1/completions"
}
dleg() { # URL RID TRANSFER TOKENS BOOTSTRAP ENGINE
	curl -s -o "$tmp/d-$3" -w '%{http_code}' -H 'Content-Type: application/json' -H "X-Request-Id: $2" \
		--max-time 60 -d "{\"prompt\":\"x\",\"max_tokens\":8,\"kv_transfer_params\":{\"do_remote_decode\":false,\"do_remote_prefill\":true,\"remote_bootstrap_addr\":\"http://127.0.0.1:$5\",\"remote_engine_id\":\"$6\",\"transfer_id\":\"$3\",\"kvbridge_tokens\":$4}}" "$1/v1/completions"
}

q=$(get "http://127.0.0.1:$B/query")
check "the producer serves vLLM's bootstrap: /query lists engine prefill-e and its worker" \
	"echo '$q' | grep -q '\"0\":{\"engine_id\":\"prefill-e\",\"worker_addr\":{\"0\":{\"0\":\"tcp://127.0.0.1:'"

good=0; req=0
for len in 1 31 32 33 500 4000; do
	req=$((req+1))
	if [ $((req % 2)) = 0 ]; then
		# the decode leg first: the producer waits for its prefill
		(dleg "http://127.0.0.1:$C" r$req xfer-$req $len $B prefill-e > "$tmp/dst-$req") &
		lp=$!
		sleep 0.3
		pleg "http://127.0.0.1:$P" r$req xfer-$req $len > "$tmp/pst-$req"
		wait $lp
	else
		pleg "http://127.0.0.1:$P" r$req xfer-$req $len > "$tmp/pst-$req" &
		lp=$!
		dleg "http://127.0.0.1:$C" r$req xfer-$req $len $B prefill-e > "$tmp/dst-$req"
		wait $lp
	fi
	[ "$(cat "$tmp/dst-$req")" = 200 ] && [ "$(cat "$tmp/pst-$req")" = 200 ] && \
		grep -q '"mismatched_bytes":0' "$tmp/d-xfer-$req" && grep -q '"kv_transfer_params":null' "$tmp/p-xfer-$req" && good=$((good+1))
done
check "6 requests (1 to 4000 tokens), legs at once in either order: every byte verified" "[ $good -eq 6 ]"

# kvbridge-proxy in today's contract in front of them: legs at once, transfer_id, /query
start proxy "$proxy" --port 0 --prefiller-port "$P" --prefiller-bootstrap-port $B --decoder-port "$C" -v || exit 1
X0=$(sed -n 's/.*ready on [^:]*:\([0-9]*\).*/\1/p' "$tmp/proxy.out")
good=0
for len in 3 100 1500; do
	st=$(post "http://127.0.0.1:$X0/v1/completions" "{\"model\":\"q\",\"prompt\":\"$(words $len)\",\"max_tokens\":4}")
	[ "$st" = 200 ] && grep -q '"mismatched_bytes":0' "$tmp/resp" && grep -q '"transfer_id":"xfer-' "$tmp/resp" && good=$((good+1))
done
check "kvbridge-proxy (gen2) -> producer and consumer: 3 prompts, every byte verified" "[ $good -eq 3 ]"

st=$(curl -s -o "$tmp/resp" -w '%{http_code}' -H 'Content-Type: application/json' --max-time 10 \
	-d '{"prompt":"x","kv_transfer_params":{"do_remote_decode":true}}' "http://127.0.0.1:$P/v1/completions")
check "a prefill leg without transfer_id: 400 in vLLM's words (HTTP $st)" \
	"[ '$st' = 400 ] && grep -q 'Missing transfer_id' '$tmp/resp'"
st=$(dleg "http://127.0.0.1:$C" r-unknown xfer-unknown 8 $B no-such-engine)
check "a decode leg naming an engine the bootstrap lacks: 502 with the reason (HTTP $st)" \
	"[ '$st' = 502 ] && grep -q 'no-such-engine' '$tmp/d-xfer-unknown'"

# a relay with the same layout, between the producer and a second consumer
start relay "$serve" --role relay --upstream "http://127.0.0.1:$P" --upstream-bootstrap "http://127.0.0.1:$B" \
	--http-port 0 --blocks 2048 --lease 5 --engine-id relay-e --bootstrap-port $RB -v || exit 1
R=$(field relay http)
good=0
for len in 7 300 2000; do
	req=$((req+1))
	pleg "http://127.0.0.1:$R" r$req xfer-$req $len > "$tmp/pst-$req" &
	lp=$!
	dleg "http://127.0.0.1:$C" r$req xfer-$req $len $RB relay-e > "$tmp/dst-$req"
	wait $lp
	[ "$(cat "$tmp/dst-$req")" = 200 ] && [ "$(cat "$tmp/pst-$req")" = 200 ] && \
		grep -q '"mismatched_bytes":0' "$tmp/d-xfer-$req" && good=$((good+1))
done
check "producer -> relay -> consumer: 3 requests, the producer's bytes arrive unchanged" "[ $good -eq 3 ]"

# prompts as token ids: the relay knows the length at once and pulls with the leg
pleg_ids() { # URL RID TRANSFER N [KVBRIDGE_TOKENS]
	ids=$(seq -s, 1 "$4")
	curl -s -o "$tmp/p-$3" -w '%{http_code}' -H 'Content-Type: application/json' -H "X-Request-Id: $2" \
		--max-time 60 -d "{\"prompt\":[$ids],\"max_tokens\":1,\"kv_transfer_params\":{\"do_remote_decode\":true,\"do_remote_prefill\":false,\"transfer_id\":\"$3\",\"kvbridge_tokens\":${5:-$4}}}" "$1/v1/completions"
}
early0=$(get "http://127.0.0.1:$R/stats" | sed -n 's/.*"early_pulls":\([0-9]*\).*/\1/p')
good=0
for len in 3 64 700; do
	req=$((req+1))
	# the decode leg first here: the relay's upstream pull is then the only thing left
	(dleg "http://127.0.0.1:$C" r$req xfer-$req $len $RB relay-e > "$tmp/dst-$req") &
	lp=$!
	pleg_ids "http://127.0.0.1:$R" r$req xfer-$req $len > "$tmp/pst-$req"
	wait $lp
	[ "$(cat "$tmp/dst-$req")" = 200 ] && [ "$(cat "$tmp/pst-$req")" = 200 ] && \
		grep -q '"mismatched_bytes":0' "$tmp/d-xfer-$req" && good=$((good+1))
done
early1=$(get "http://127.0.0.1:$R/stats" | sed -n 's/.*"early_pulls":\([0-9]*\).*/\1/p')
check "token-id prompts: the relay pulled with the leg ($((early1 - early0)) early pulls), 3 requests, bytes unchanged" \
	"[ $good -eq 3 ] && [ $((early1 - early0)) -eq 3 ]"
# the upstream prefills more tokens than the leg's ids: the early pull is not trusted
req=$((req+1))
(dleg "http://127.0.0.1:$C" r$req xfer-$req 40 $RB relay-e > "$tmp/dst-$req") &
lp=$!
pst=$(pleg_ids "http://127.0.0.1:$R" r$req xfer-$req 20 40)
wait $lp
check "the upstream's prompt length differs from the leg's ids: the leg gets 502, the decoder an error (HTTP $pst, $(cat "$tmp/dst-$req"))" \
	"[ '$pst' = 502 ] && grep -q 'cannot be trusted' '$tmp/p-xfer-$req' && [ '$(cat "$tmp/dst-$req")' != 200 ]"

start bad "$serve" --role relay --upstream "http://127.0.0.1:$P" --upstream-bootstrap "http://127.0.0.1:$B" \
	--http-port 0 --blocks 256 --engine-id bad-e --bootstrap-port $CB --test-corrupt-block 1 -v || exit 1
X=$(field bad http)
req=$((req+1))
pleg "http://127.0.0.1:$X" r$req xfer-$req 100 > /dev/null &
lp=$!
st=$(dleg "http://127.0.0.1:$C" r$req xfer-$req 100 $CB bad-e)
wait $lp
check "negative control: a relay that corrupts one block is caught by the consumer (HTTP $st)" \
	"[ '$st' = 500 ] && grep -q 'KV verification failed' '$tmp/d-xfer-$req'"

# conversion: 16-token blocks, K and V apart (vLLM 0.13 on CPU) -> 32-token packed (0.32)
mkdir -p "$tmp/dump"
VLLM_MOONCAKE_BOOTSTRAP_PORT=$((base + 3)) start sprod "$serve" --role producer --http-port 0 --blocks 2048 \
	--kv-layout split --block-tokens 16 --engine-id split-e --bootstrap-port $((base + 3)) -v || exit 1
SP=$(field sprod http)
start conv "$serve" --role relay --upstream "http://127.0.0.1:$SP" --upstream-bootstrap "http://127.0.0.1:$((base + 3))" \
	--upstream-kv-layout split --upstream-block-tokens 16 --block-tokens 32 --http-port 0 --blocks 1024 \
	--engine-id conv-e --bootstrap-port $((base + 4)) -v || exit 1
V=$(field conv http)
start dcons "$serve" --role consumer --http-port 0 --blocks 1024 --block-tokens 32 --verify none \
	--dump-dir "$tmp/dump" -v || exit 1
DC=$(field dcons http)
good=0
for len in 5 16 33 250; do
	req=$((req+1))
	pleg "http://127.0.0.1:$V" r$req xfer-$req $len > /dev/null &
	lp=$!
	st=$(dleg "http://127.0.0.1:$DC" r$req xfer-$req $len $((base + 4)) conv-e)
	wait $lp
	[ "$st" = 200 ] && python3 "$srcdir/tests/interop/kvconv.py" "$tmp/dump/r$req.kv" xfer-$req $len \
		"$(get "http://127.0.0.1:$SP/layout")" "$(get "http://127.0.0.1:$DC/layout")" >> "$tmp/kvconv.log" 2>&1 \
		&& good=$((good+1))
done
check "split 16-token producer -> converting relay -> packed 32-token consumer: every token's K and V where vLLM 0.32 reads it (4 requests)" "[ $good -eq 4 ]"
check "the relay said it converts, with both layouts" \
	"grep -q 'relay converts' '$tmp/conv.log' && grep -q 'K and V split' '$tmp/conv.log' && grep -q 'K|V packed' '$tmp/conv.log'"

start mismatch "$serve" --role relay --upstream "http://127.0.0.1:$P" --upstream-model llama-3-8b \
	--http-port 0 --blocks 16 --engine-id mm-e --bootstrap-port 0 2>/dev/null
rc=$?
check "a relay between different models is refused at start, both layouts printed" \
	"[ $rc -ne 0 ] && grep -q 'cannot convert' '$tmp/mismatch.log' && grep -q 'llama-3-8b' '$tmp/mismatch.log' && grep -q 'qwen2.5-0.5b' '$tmp/mismatch.log'"

sleep 0.5
for s in prod relay conv sprod; do
	h=$(field $s http)
	get "http://127.0.0.1:$h/stats" > "$tmp/s-$s"
done
held="" all_free=1
for s in prod relay conv sprod; do
	h=$(json_num "$tmp/s-$s" blocks_held)
	held="$held $s ${h:-?}"
	[ "$h" = 0 ] || all_free=0
done
check "no block held anywhere after the transfers (blocks held:$held)" "[ $all_free = 1 ]"
check "the relay's pool is whole again" "[ \$(json_num '$tmp/s-relay' free) -eq 2048 ]"
exit $fail

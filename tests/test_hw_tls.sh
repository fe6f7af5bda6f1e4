#!/bin/sh
# TLS on the tools' HTTP (--tls-cert/--tls-key/--tls-ca), with a throwaway
# CA made by the openssl CLI (tests/tls/make_certs.sh):
#   - producer and consumer daemons and a proxy, every front HTTPS, the
#     proxy's legs HTTPS checked against the CA: requests through the proxy
#     over the vLLM side channel and over kvbridge's stream, every byte
#     verified; the same under the gen2 contract (its bootstrap /query
#     stays plain HTTP, as vLLM serves it), and a relay whose --upstream
#     is https://;
#   - a plaintext client on a TLS port is closed, counted, warned about once
#     for a burst, and leaves no descriptor behind; the daemons keep serving;
#   - a client trusting another CA is refused, by curl and by the proxy's
#     legs, and so is a certificate naming another host;
#   - kvbridge's own control stream between two workers runs in TLS: a tap
#     on the wire sees neither the request id nor the descriptor's keys (on
#     plaintext workers it sees both), and a worker that does not speak TLS
#     on its streams is refused either way, with the reason;
#   - bad --tls-* options stop the programs with exit 2, naming the option.
tmp=$(mktemp -d)
. "${top_srcdir:-.}/tests/hw_lib.sh"
trap cleanup EXIT
srcdir=${top_srcdir:-.}
command -v curl >/dev/null || skip_all "curl not installed"
command -v python3 >/dev/null || skip_all "python3 not installed"
[ -x "$serve" ] || skip_all "kvbridge-serve not built (hw backend disabled)"
sh "$srcdir/tests/tls/make_certs.sh" "$tmp" || skip_all "openssl not installed (it makes the test certificates)"
echo "1..20"
# below the ephemeral range (32768+), where the kernel picks other sockets' ports
base=$((20000 + $$ % 10000))
export VLLM_MOONCAKE_BOOTSTRAP_PORT=$base
B=$((base + 20)) # the gen2 producer's bootstrap
TLS="--tls-cert $tmp/server.pem --tls-key $tmp/server.key"
CA="--cacert $tmp/ca.pem"
spost() { # URL JSON [ID]: as post, over HTTPS trusting the test CA
	curl -s $CA -o "$tmp/resp" -w '%{http_code}' -H 'Content-Type: application/json' \
		${3:+-H "X-Request-Id: $3"} --max-time 60 -d "$2" "$1"
}
sget() { curl -s $CA --max-time 10 "$1"; }
port_of() { sed -n 's/.*ready on [^:]*:\([0-9]*\).*/\1/p' "$tmp/$1.out" | head -n 1; }

start prod "$serve" --vllm-protocol gen0 --role producer --http-port 0 --blocks 4096 $TLS -v || exit 1
P=$(field prod http); prod_pid=$last_pid
start cons "$serve" --vllm-protocol gen0 --role consumer --http-port 0 --blocks 4096 --pull-protocol vllm $TLS -v || exit 1
C=$(field cons http)
KVB_TLS_CERT=$tmp/server.pem KVB_TLS_KEY=$tmp/server.key KVB_TLS_CA=$tmp/ca.pem \
	start cons2 "$serve" --vllm-protocol gen0 --role consumer --http-port 0 --blocks 4096 -v || exit 1
C2=$(field cons2 http)
start proxy "$proxy" --vllm-protocol gen0 --port 0 --prefiller-port "$P" --decoder-port "$C" $TLS \
	--tls-ca "$tmp/ca.pem" -v || exit 1
X=$(port_of proxy); proxy_pid=$last_pid
KVB_TLS_CA=$tmp/ca.pem start proxy2 "$proxy" --vllm-protocol gen0 --port 0 --prefiller-port "$P" \
	--decoder-port "$C2" $TLS || exit 1
X2=$(port_of proxy2)
check "the ready lines say TLS (options and KVB_TLS_* alike)" \
	"grep -q 'tls=on' '$tmp/prod.out' && grep -q 'tls=on' '$tmp/cons2.out' && \
	 grep -q 'clients over tls, legs over tls' '$tmp/proxy.out' && grep -q 'legs over tls' '$tmp/proxy2.out'"

good=0
for len in 1 17 1000 5000; do
	st=$(spost "https://127.0.0.1:$X/v1/completions" "{\"model\":\"q\",\"prompt\":\"$(words $len)\",\"max_tokens\":4}")
	[ "$st" = 200 ] && grep -q '"mismatched_bytes":0' "$tmp/resp" && good=$((good+1))
done
check "4 prompts through the HTTPS proxy and its HTTPS legs, vLLM side channel: all verified" "[ $good -eq 4 ]"
good=0
for len in 5 3000; do
	st=$(spost "https://localhost:$X2/v1/chat/completions" "{\"model\":\"q\",\"messages\":[{\"role\":\"user\",\"content\":\"$(words $len)\"}]}")
	[ "$st" = 200 ] && grep -q '"mismatched_bytes":0' "$tmp/resp" && good=$((good+1))
done
check "chat requests over kvbridge's own stream, proxy named localhost: all verified" "[ $good -eq 2 ]"

# plaintext clients on the TLS ports: closed, counted, one warning for the burst, no fd left
fds0=$(ls /proc/$prod_pid/fd | wc -l); xfds0=$(ls /proc/$proxy_pid/fd | wc -l)
plain=0
for i in 1 2 3 4 5 6; do
	st=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$P/health")
	[ "$st" = 000 ] && plain=$((plain+1))
	st=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$X/health")
	[ "$st" = 000 ] && plain=$((plain+1))
done
check "plain HTTP to the daemon's and the proxy's TLS ports gets no answer ($plain of 12)" "[ $plain -eq 12 ]"
sleep 0.3
fds1=$(ls /proc/$prod_pid/fd | wc -l); xfds1=$(ls /proc/$proxy_pid/fd | wc -l)
check "the daemon counted them, warned once for the burst, kept no descriptor ($fds0 -> $fds1)" \
	"sget https://127.0.0.1:$P/stats > '$tmp/s' && [ \$(json_num '$tmp/s' tls_handshakes_failed) -eq 6 ] && \
	 [ \$(grep -c 'HTTPS port: client 127.0.0.1' '$tmp/prod.log') -eq 1 ] && [ $fds1 -le $fds0 ]"
check "the proxy counted them, warned once, kept no descriptor ($xfds0 -> $xfds1)" \
	"sget https://127.0.0.1:$X/stats > '$tmp/s' && [ \$(json_num '$tmp/s' tls_handshakes_failed) -eq 6 ] && \
	 [ \$(grep -c 'HTTPS port: client 127.0.0.1' '$tmp/proxy.log') -eq 1 ] && [ $xfds1 -le $xfds0 ]"
st=$(spost "https://127.0.0.1:$X/v1/completions" "{\"prompt\":\"$(words 40)\"}")
check "still serving after the plaintext clients (HTTP $st)" "[ '$st' = 200 ] && grep -q '\"mismatched_bytes\":0' '$tmp/resp'"

# versions: 1.2 and 1.3 only (the client allows 1.1 itself: SECLEVEL=0)
st12=$(curl -s --tls-max 1.2 $CA -o /dev/null -w '%{http_code}' --max-time 10 "https://127.0.0.1:$P/health")
proto11=$(echo | timeout 10 openssl s_client -connect "127.0.0.1:$P" -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' 2>&1 |
	sed -n 's/.*New, \(TLSv[0-9.]*\|(NONE)\), Cipher is.*/\1/p' | head -n 1)
check "TLS 1.2 is accepted (HTTP $st12), TLS 1.1 is refused (negotiated: ${proto11:-nothing})" \
	"[ '$st12' = 200 ] && [ '$proto11' = '(NONE)' ]"

# trust
curl -s -o /dev/null --cacert "$tmp/other-ca.pem" --max-time 5 "https://127.0.0.1:$X/health"; rc1=$?
curl -s -o /dev/null --cacert "$tmp/other-ca.pem" --max-time 5 "https://127.0.0.1:$P/health"; rc2=$?
check "curl trusting another CA refuses the proxy and the daemon (curl exit $rc1, $rc2)" "[ $rc1 = 60 ] && [ $rc2 = 60 ]"
start wrongca "$proxy" --vllm-protocol gen0 --port 0 --prefiller-host 127.0.0.1 --prefiller-port "$P" --decoder-port "$C" \
	--tls-ca "$tmp/other-ca.pem" || exit 1
st=$(post "http://127.0.0.1:$(port_of wrongca)/v1/completions" '{"prompt":"x y z"}')
check "a proxy whose --tls-ca did not sign the prefiller's certificate: 502 naming the refused certificate (HTTP $st)" \
	"[ '$st' = 502 ] && grep -q 'certificate of 127.0.0.1 is refused' '$tmp/resp'"
start named "$serve" --vllm-protocol gen0 --role consumer --http-port 0 --blocks 64 \
	--tls-cert "$tmp/name.pem" --tls-key "$tmp/name.key" || exit 1
start wrongname "$proxy" --vllm-protocol gen0 --port 0 --prefiller-host 127.0.0.1 --prefiller-port "$P" --decoder-host 127.0.0.1 \
	--decoder-port "$(field named http)" \
	--tls-ca "$tmp/ca.pem" || exit 1
st=$(post "http://127.0.0.1:$(port_of wrongname)/v1/completions" '{"prompt":"x y z"}')
check "a decoder whose certificate names another host: 502, refused by the proxy (HTTP $st)" \
	"[ '$st' = 502 ] && grep -q 'DecoderUnavailable' '$tmp/resp' && grep -q 'name in the certificate does not match' '$tmp/resp'"
start plainlegs "$proxy" --vllm-protocol gen0 --port 0 --prefiller-port "$P" --decoder-port "$C" || exit 1
st=$(post "http://127.0.0.1:$(port_of plainlegs)/v1/completions" '{"prompt":"x y z"}')
check "a proxy speaking plain HTTP to a TLS prefiller: 502 (HTTP $st)" "[ '$st' = 502 ] && grep -q PrefillError '$tmp/resp'"

# gen2: the proxy's /health over TLS, the bootstrap /query plain; a relay with an https:// upstream
start gprod "$serve" --role producer --http-port 0 --blocks 2048 --engine-id prefill-e --bootstrap-port $B $TLS -v || exit 1
GP=$(field gprod http)
start gcons "$serve" --role consumer --http-port 0 --blocks 2048 $TLS -v || exit 1
start gproxy "$proxy" --port 0 --prefiller-port "$GP" --prefiller-bootstrap-port $B --decoder-port "$(field gcons http)" \
	$TLS --tls-ca "$tmp/ca.pem" -v || exit 1
GX=$(port_of gproxy)
good=0
for len in 3 1500; do
	st=$(spost "https://127.0.0.1:$GX/v1/completions" "{\"model\":\"q\",\"prompt\":\"$(words $len)\",\"max_tokens\":4}")
	[ "$st" = 200 ] && grep -q '"mismatched_bytes":0' "$tmp/resp" && grep -q '"transfer_id":"xfer-' "$tmp/resp" && good=$((good+1))
done
check "gen2 proxy over HTTPS to gen2 daemons over HTTPS: 2 prompts, every byte verified" "[ $good -eq 2 ]"
start grelay "$serve" --role relay --upstream "https://127.0.0.1:$GP" --upstream-bootstrap "http://127.0.0.1:$B" \
	--http-port 0 --blocks 2048 --engine-id relay-e --bootstrap-port $((B + 1)) --tls-ca "$tmp/ca.pem" $TLS -v || exit 1
start gcons2 "$serve" --role consumer --http-port 0 --blocks 2048 $TLS || exit 1
start gproxy2 "$proxy" --port 0 --prefiller-port "$(field grelay http)" --prefiller-bootstrap-port $((B + 1)) \
	--decoder-port "$(field gcons2 http)" --tls-ca "$tmp/ca.pem" || exit 1
st=$(post "http://127.0.0.1:$(port_of gproxy2)/v1/completions" "{\"prompt\":\"$(words 300)\",\"max_tokens\":4}")
check "a relay with --upstream https://: the request through it is verified (HTTP $st)" \
	"[ '$st' = 200 ] && grep -q '\"mismatched_bytes\":0' '$tmp/resp'"

# kvbridge's stream seen from the wire: the consumer pulls through a tap
# relay in front of the producer's handshake port (kvbridge_segment rewritten)
tap_start() { # NAME SEGMENT: a tap relay in front of the handshake port of SEGMENT
	python3 "$srcdir/tests/tls/tap_relay.py" "$tmp/$1.port" "${2##*:}" "$tmp/$1.bin" >"$tmp/$1-tap.log" 2>&1 &
	pids="$pids $!"
	i=0; while [ ! -s "$tmp/$1.port" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
}
tap() { # NAME PRODUCER_URL CONSUMER_URL POST: one request, pulled through tap NAME; HTTP status echoed
	st=$($4 "$2/v1/completions" '{"prompt":"tap tap tap tap","kv_transfer_params":{"do_remote_decode":true}}' "rid-$1-7f3a9c")
	params=$(sed -n 's/.*"kv_transfer_params":\({[^}]*}\).*/\1/p' "$tmp/resp" |
		sed "s/\"kvbridge_segment\":\"[^\"]*\"/\"kvbridge_segment\":\"127.0.0.1:$(cat "$tmp/$1.port")\"/")
	$4 "$3/v1/completions" "{\"prompt\":\"tap tap tap tap\",\"kv_transfer_params\":$params}" "rid-$1-7f3a9c"
}
tap_start tls "$(field prod segment)"
st=$(tap tls "https://127.0.0.1:$P" "https://127.0.0.1:$C2" spost)
sleep 0.3
check "a pull over kvbridge's stream through a tap: verified; the tap saw $(wc -c < "$tmp/tls.bin") bytes of TLS, no request id, no descriptor key (HTTP $st)" \
	"[ '$st' = 200 ] && grep -q '\"mismatched_bytes\":0' '$tmp/resp' && [ -s '$tmp/tls.bin' ] && \
	 ! grep -q 'rid-tls-7f3a9c' '$tmp/tls.bin' && ! grep -q 'tcp_data_port' '$tmp/tls.bin' && \
	 sget https://127.0.0.1:$C2/stats > '$tmp/s' && [ \$(json_num '$tmp/s' tls_streams) -ge 1 ]"
VLLM_MOONCAKE_BOOTSTRAP_PORT=$((base + 30)) start plain-p "$serve" --vllm-protocol gen0 --role producer \
	--http-port 0 --blocks 64 -v || exit 1
start plain-c "$serve" --vllm-protocol gen0 --role consumer --http-port 0 --blocks 64 -v || exit 1
tap_start plain "$(field plain-p segment)"
st=$(tap plain "http://127.0.0.1:$(field plain-p http)" "http://127.0.0.1:$(field plain-c http)" post)
check "the same tap between plaintext workers sees the request id and the descriptor (HTTP $st): the check above can fail" \
	"[ '$st' = 200 ] && grep -q 'rid-plain-7f3a9c' '$tmp/plain.bin' && grep -q 'tcp_data_port' '$tmp/plain.bin'"
# mismatched workers: refused, the reason in the log or the answer
st=$(spost "https://127.0.0.1:$P/v1/completions" '{"prompt":"a b","kv_transfer_params":{"do_remote_decode":true}}')
params=$(sed -n 's/.*"kv_transfer_params":\({[^}]*}\).*/\1/p' "$tmp/resp")
st=$(post "http://127.0.0.1:$(field plain-c http)/v1/completions" "{\"prompt\":\"a b\",\"kv_transfer_params\":$params}")
check "a consumer without TLS pulling from a TLS producer: refused, the producer says why (HTTP $st)" \
	"[ '$st' = 502 ] && grep -q 'streams need TLS' '$tmp/prod.log'"
st=$(post "http://127.0.0.1:$(field plain-p http)/v1/completions" '{"prompt":"a b","kv_transfer_params":{"do_remote_decode":true}}')
params=$(sed -n 's/.*"kv_transfer_params":\({[^}]*}\).*/\1/p' "$tmp/resp")
st=$(spost "https://127.0.0.1:$C2/v1/completions" "{\"prompt\":\"a b\",\"kv_transfer_params\":$params}")
check "a TLS consumer pulling from a producer without TLS: refused with the reason (HTTP $st)" \
	"[ '$st' = 502 ] && grep -q 'TLS handshake failed' '$tmp/resp' && grep -q 'is TLS on for the peer' '$tmp/cons2.log'"

# bad options: exit 2, the option named
bad=0
"$serve" --tls-cert "$tmp/nope.pem" --tls-key "$tmp/server.key" >/dev/null 2>"$tmp/e1"; r1=$?
[ $r1 = 2 ] && grep -q -- "--tls-cert $tmp/nope.pem: file not found" "$tmp/e1" && bad=$((bad+1))
"$proxy" --tls-cert "$tmp/server.pem" >/dev/null 2>"$tmp/e2"; r2=$?
[ $r2 = 2 ] && grep -q -- "--tls-cert without --tls-key" "$tmp/e2" && bad=$((bad+1))
"$proxy" --tls-cert "$tmp/server.pem" --tls-key "$tmp/name.key" >/dev/null 2>"$tmp/e3"; r3=$?
[ $r3 = 2 ] && grep -q -- "--tls-key $tmp/name.key does not match" "$tmp/e3" && bad=$((bad+1))
"$proxy" --tls-ca "$tmp/name.ext" >/dev/null 2>"$tmp/e4"; r4=$?
[ $r4 = 2 ] && grep -q -- "--tls-ca $tmp/name.ext: no PEM certificate" "$tmp/e4" && bad=$((bad+1))
check "bad --tls-* options: exit 2 naming the option ($bad of 4: exits $r1 $r2 $r3 $r4)" "[ $bad -eq 4 ]"
check "--help lists --tls-cert, --tls-key and --tls-ca" \
	"'$serve' --help | grep -q -- --tls-ca && '$proxy' --help | grep -q -- --tls-key && '$proxy' --help | grep -q -- --tls-cert"
exit $fail

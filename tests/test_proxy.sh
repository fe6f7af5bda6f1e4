#!/bin/sh
# kvbridge-proxy's two router contracts against a fake vLLM P/D pair
# (tests/proxy/fake_vllm.py) that records exactly what it receives: gen2
# (vLLM 0.16+) discovery through /health and the bootstrap /query, 503
# before it, both legs field by field, the legs overlapping in time, round
# robin over two dp ranks, D's answer (streamed or not) relayed byte for
# byte, a failing P leg logged and counted, a decoder that is down, /query
# answers refused, the startup timeout; and gen0 (vLLM 0.13-0.15) still
# sequential with P's kv_transfer_params going to D.  (The proxy with real
# kvbridge-serve daemons, gen0: test_hw_procs.sh.)
tmp=$(mktemp -d)
. "${top_srcdir:-.}/tests/hw_lib.sh"
trap cleanup EXIT
command -v curl >/dev/null || skip_all "curl not installed"
command -v python3 >/dev/null || skip_all "python3 not installed"
[ -x "$proxy" ] || skip_all "kvbridge-proxy not built (hw backend disabled)"
fake_py="${top_srcdir:-.}/tests/proxy/fake_vllm.py"
echo "1..24"

# wait_line NAME PATTERN [TENTHS]: until $tmp/NAME.out holds PATTERN
wait_line() {
	i=0
	while ! grep -q "$2" "$tmp/$1.out" 2>/dev/null; do
		i=$((i+1)); [ $i -gt "${3:-100}" ] && return 1; sleep 0.1
	done
}
# fake NAME SETTINGS: a fake P/D pair; sets FP (P and control), FB (bootstrap), FD
fake() {
	mkdir -p "$tmp/$1"
	python3 "$fake_py" --dir "$tmp/$1" --set "$2" >"$tmp/$1.out" 2>"$tmp/$1.log" &
	pids="$pids $!"
	wait_line "$1" 'ports p=' || { echo "# fake $1 did not start"; sed 's/^/# /' "$tmp/$1.log"; exit 1; }
	FP=$(sed -n 's/.*p=\([0-9]*\).*/\1/p' "$tmp/$1.out")
	FB=$(sed -n 's/.* b=\([0-9]*\).*/\1/p' "$tmp/$1.out")
	FD=$(sed -n 's/.* d=\([0-9]*\).*/\1/p' "$tmp/$1.out")
}
ctl() { curl -s -o /dev/null --max-time 5 -H 'Content-Type: application/json' -d "$2" "http://127.0.0.1:$1/_ctl"; }
# proxy_bg NAME ARGS...: the proxy in the background (no wait); sets $last_pid
proxy_bg() {
	name=$1; shift
	"$proxy" "$@" >"$tmp/$name.out" 2>"$tmp/$name.log" &
	last_pid=$!; pids="$pids $last_pid"
}
port_of() { sed -n 's/.*\(listening\|ready\) on [^:]*:\([0-9]*\).*/\2/p' "$tmp/$1.out" | head -n 1; }
# exits_within PID TENTHS: the process ended in time; its status in $rc
exits_within() {
	i=0
	while kill -0 "$1" 2>/dev/null; do i=$((i+1)); [ $i -gt "$2" ] && return 1; sleep 0.1; done
	wait "$1"; rc=$?
}
# rawpost PORT PATH JSON OUT: the whole raw response, head included
rawpost() {
	python3 - "$@" <<'PY'
import socket, sys
port, path, body, out = sys.argv[1], sys.argv[2], sys.argv[3].encode(), sys.argv[4]
s = socket.create_connection(("127.0.0.1", int(port)), timeout=20)
s.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n" % (path.encode(), len(body)) + body)
data = b""
while True:
    c = s.recv(65536)
    if not c:
        break
    data += c
open(out, "wb").write(data)
PY
}
cat > "$tmp/prelude.py" <<'PY'
import json, re, sys
log = json.load(open(sys.argv[1]))
arg = sys.argv[2:]
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
def posts(role):
    return [r for r in log if r["role"] == role and r["method"] == "POST"]
def leg(role, marker):
    found = [r for r in posts(role) if marker in json.dumps(r["body"])]
    if len(found) != 1:
        fail("%d %s legs carry %s, expected 1" % (len(found), role, marker))
    return found[0]
def fail(msg):
    print("# " + msg)
    sys.exit(1)
def expect(cond, msg):
    if not cond:
        fail(msg)
PY
# pycheck PORT ARGS...: the Python on stdin, with the fake's records, must exit 0
pycheck() {
	port=$1; shift
	get "http://127.0.0.1:$port/_log" > "$tmp/log.json"
	cat "$tmp/prelude.py" - | python3 - "$tmp/log.json" "$@" > "$tmp/out" 2>&1
}

# ---- options -------------------------------------------------------------
"$proxy" --help > "$tmp/help" 2>&1
check "--help explains both contracts and their vLLM releases" \
	"grep -q 'gen0 (vLLM 0.13.0 - 0.15.1)' '$tmp/help' && grep -q 'gen2 (default; vLLM 0.16.0 and later' '$tmp/help' && grep -q 'transfer_id' '$tmp/help' && grep -q 'remote_bootstrap_addr' '$tmp/help'"
bad=0
"$proxy" --vllm-protocol gen3 >/dev/null 2>"$tmp/e1"; [ $? -eq 2 ] && grep -q 'gen3: expected gen0' "$tmp/e1" && bad=$((bad+1))
"$proxy" --prefiller-port 1,2,3 --prefiller-bootstrap-port 5,6 >/dev/null 2>"$tmp/e2"; [ $? -eq 2 ] && grep -q '2 --prefiller-bootstrap-port values for 3 prefillers' "$tmp/e2" && bad=$((bad+1))
"$proxy" --vllm-protocol gen0 --prefiller-bootstrap-port 9 >/dev/null 2>"$tmp/e3"; [ $? -eq 2 ] && grep -q 'gen2 only' "$tmp/e3" && bad=$((bad+1))
"$proxy" --prefiller-bootstrap-port 70000 >/dev/null 2>"$tmp/e4"; [ $? -eq 2 ] && grep -q '70000: expected 1..65535' "$tmp/e4" && bad=$((bad+1))
check "bad options: exit 2 with a message naming them ($bad of 4)" "[ $bad -eq 4 ]"

# ---- gen2: discovery -----------------------------------------------------
QA='{"0":{"engine_id":"eng-A0","worker_addr":{"0":{"0":"tcp://127.0.0.1:40001"}}},"1":{"engine_id":"eng-A1","worker_addr":{"0":{"0":"tcp://127.0.0.1:40002"}}}}'
fake A "{\"health\":503,\"query\":$QA}"
A_P=$FP; A_B=$FB; A_D=$FD
OPENAI_API_KEY=sk-kvb-test proxy_bg px --port 0 --prefiller-host 127.0.0.1 --prefiller-port $A_P --prefiller-bootstrap-port $A_B \
	--decoder-host 127.0.0.1 --decoder-port $A_D -v
wait_line px 'listening on' || { echo "# proxy did not start"; sed 's/^/# /' "$tmp/px.log"; exit 1; }
X=$(port_of px)
check "default contract gen2, printed at start; listens on 127.0.0.1 only" \
	"head -n 1 '$tmp/px.out' | grep -q 'vllm protocol gen2 (vLLM 0.16.0 and later)' && grep -q 'listening on 127.0.0.1:$X' '$tmp/px.out'"
st=$(post "http://127.0.0.1:$X/v1/completions" '{"prompt":"too early"}')
check "503 with a JSON error while P's /health is not 200 (HTTP $st)" \
	"[ '$st' = 503 ] && grep -q '\"error\":{\"message\":\"the proxy is still waiting' '$tmp/resp' && ! grep -q 'ready on' '$tmp/px.out'"
ctl $A_P '{"health":200}'
wait_line px 'ready on' 50
get "http://127.0.0.1:$X/stats" > "$tmp/stats"
check "after /health 200 and /query: progress shown, ready, two dp targets with their engine ids" \
	"grep -q 'waiting for prefiller 127.0.0.1:$A_P: GET /health: HTTP 503' '$tmp/px.out' && grep -q 'dp_size 2: dp 0 engine eng-A0, dp 1 engine eng-A1' '$tmp/px.out' && grep -q '\"ready\":true' '$tmp/stats' && grep -q '\"dp_rank\":1,\"engine_id\":\"eng-A1\",\"bootstrap\":\"http://127.0.0.1:$A_B\"' '$tmp/stats'"

# ---- gen2: one request, both legs ------------------------------------------
rawpost $X /v1/completions '{"model":"m","prompt":"req-one","max_tokens":8,"max_completion_tokens":7,"min_tokens":3,"stream":false,"stream_options":{"include_usage":true},"temperature":0}' "$tmp/raw1"
pycheck $A_P > /dev/null <<'PY'
p = leg("p", "req-one")
b, h = p["body"], p["headers"]
expect(p["path"] == "/v1/completions", "P path %s" % p["path"])
expect(b["kv_transfer_params"] == {"do_remote_decode": True, "do_remote_prefill": False,
       "transfer_id": "xfer-" + h.get("x-request-id", "")}, "P kv_transfer_params %s" % b["kv_transfer_params"])
expect(UUID4.match(h.get("x-request-id", "")), "X-Request-Id %r is not a uuid4" % h.get("x-request-id"))
expect(b["max_tokens"] == 1 and b["max_completion_tokens"] == 1, "P max tokens %s" % b)
expect(b["stream"] is False and "stream_options" not in b and "min_tokens" not in b, "P stream fields %s" % b)
expect(b["prompt"] == "req-one" and b["model"] == "m" and b["temperature"] == 0, "P body %s" % b)
expect(h.get("x-data-parallel-rank") == "0", "X-data-parallel-rank %r" % h.get("x-data-parallel-rank"))
expect(h.get("authorization") == "Bearer sk-kvb-test", "Authorization %r" % h.get("authorization"))
PY
check "P leg: max_tokens 1, stream false, kv_transfer_params with transfer_id xfer-<rid>, X-Request-Id a uuid4, X-data-parallel-rank, Authorization" "[ $? -eq 0 ]"
RID=$(pycheck $A_P <<'PY'
print(leg("d", "req-one")["headers"]["x-request-id"])
PY
cat "$tmp/out")
pycheck $A_P "$A_B" > /dev/null <<'PY'
p, d = leg("p", "req-one"), leg("d", "req-one")
rid = p["headers"]["x-request-id"]
expect(d["headers"].get("x-request-id") == rid, "D X-Request-Id %r, P's %r" % (d["headers"].get("x-request-id"), rid))
expect(d["body"]["kv_transfer_params"] == {"do_remote_decode": False, "do_remote_prefill": True,
       "remote_bootstrap_addr": "http://127.0.0.1:" + arg[0], "remote_engine_id": "eng-A0",
       "transfer_id": "xfer-" + rid}, "D kv_transfer_params %s" % d["body"]["kv_transfer_params"])
b = dict(d["body"]); del b["kv_transfer_params"]
expect(b == {"model": "m", "prompt": "req-one", "max_tokens": 8, "max_completion_tokens": 7, "min_tokens": 3,
       "stream": False, "stream_options": {"include_usage": True}, "temperature": 0}, "D body %s" % b)
expect(d["headers"].get("authorization") == "Bearer sk-kvb-test", "D Authorization %r" % d["headers"].get("authorization"))
PY
check "D leg: the original body, kv_transfer_params with P's bootstrap addr, dp 0's engine id, the same transfer_id and X-Request-Id" "[ $? -eq 0 ]"
check "D's answer reaches the client byte for byte" \
	"[ -n '$RID' ] && [ -s '$tmp/A/d-$RID.raw' ] && cmp -s '$tmp/raw1' '$tmp/A/d-$RID.raw' && grep -q ' decoded' '$tmp/raw1'"

# ---- gen2: round robin over the two dp ranks -------------------------------
for i in 1 2 3 4; do post "http://127.0.0.1:$X/v1/chat/completions" "{\"messages\":[{\"role\":\"user\",\"content\":\"rr-$i\"}],\"max_completion_tokens\":5}" >/dev/null; done
pycheck $A_P > /dev/null <<'PY'
# in the order the client sent them (it waits for each answer, so D legs are ordered)
ds = sorted(posts("d"), key=lambda r: r["t0"])
dps = []
for d in ds:
    rid = d["headers"]["x-request-id"]
    p = [r for r in posts("p") if r["headers"].get("x-request-id") == rid]
    expect(len(p) == 1, "%d P legs for %s" % (len(p), rid))
    dp = p[0]["headers"]["x-data-parallel-rank"]
    dps.append(dp)
    got = d["body"]["kv_transfer_params"]["remote_engine_id"]
    expect(got == "eng-A" + dp, "rid %s: P on dp %s but D told engine %s" % (rid, dp, got))
    expect(p[0]["path"] == d["path"], "P path %s, D path %s" % (p[0]["path"], d["path"]))
expect(dps == ["0", "1", "0", "1", "0"], "P legs' dp ranks in request order: %s" % dps)
expect(len(set(r["headers"]["x-request-id"] for r in ds)) == 5, "request ids repeat")
PY
check "round robin over (prefiller, dp): dp 0, 1, 0, 1, 0, each D leg naming its P leg's engine id" "[ $? -eq 0 ]"

# ---- gen2: the legs overlap --------------------------------------------------
ctl $A_P '{"p_delay":2.0,"d_wait_for_p":true}'
t=$(curl -s -o "$tmp/resp" -w '%{time_total}' -H 'Content-Type: application/json' --max-time 20 \
	-d '{"prompt":"overlap","max_tokens":4}' "http://127.0.0.1:$X/v1/completions")
check "P answers after 2 s, yet the client has D's answer in ${t} s, and D saw the P leg first" \
	"awk 'BEGIN{exit !($t < 1.5)}' && grep -q '\"d_saw_p_leg\": true' '$tmp/resp'"
sleep 2.2
pycheck $A_P > /dev/null <<'PY'
p, d = leg("p", "overlap"), leg("d", "overlap")
expect("t1" in p and "t1" in d, "legs not finished: %s %s" % (p.get("t1"), d.get("t1")))
expect(d["t0"] < p["t1"] and d["t1"] < p["t1"], "D leg %.3f-%.3f, P leg %.3f-%.3f" % (d["t0"], d["t1"], p["t0"], p["t1"]))
PY
check "the D leg was sent and answered while the P leg was still open" "[ $? -eq 0 ]"
ctl $A_P '{"p_delay":0,"d_wait_for_p":false}'

# ---- gen2: a streamed answer -----------------------------------------------
ctl $A_P '{"d_stream":true}'
rawpost $X /v1/completions '{"prompt":"streamed","max_tokens":6,"stream":true}' "$tmp/raw2"
RID=$(pycheck $A_P <<'PY'
print(leg("d", "streamed")["headers"]["x-request-id"])
PY
cat "$tmp/out")
check "streamed D answer (chunked SSE, 6 events) relayed byte for byte" \
	"[ -s '$tmp/A/d-$RID.raw' ] && cmp -s '$tmp/raw2' '$tmp/A/d-$RID.raw' && [ \$(grep -c '^data: ' '$tmp/raw2') -eq 6 ] && grep -q 'Transfer-Encoding: chunked' '$tmp/raw2'"
ctl $A_P '{"d_stream":false}'

# ---- gen2: a failing P leg ---------------------------------------------------
ctl $A_P '{"p_status":500,"p_body":"{\"error\":\"prefill exploded: marker-4711\"}"}'
st=$(post "http://127.0.0.1:$X/v1/completions" '{"prompt":"p-fails","max_tokens":4}')
RID=$(pycheck $A_P <<'PY'
print(leg("p", "p-fails")["headers"]["x-request-id"])
PY
cat "$tmp/out")
sleep 0.5
get "http://127.0.0.1:$X/stats" > "$tmp/stats"
check "P answers 500: the client still gets D's answer (HTTP $st); logged with P's words; prefill_failed 1 of 8 legs" \
	"[ '$st' = 200 ] && grep -q ' decoded' '$tmp/resp' && grep -q '$RID: prefill leg on 127.0.0.1:$A_P (dp [01]) answered 500: {\"error\":\"prefill exploded: marker-4711\"}' '$tmp/px.log' && [ \$(json_num '$tmp/stats' prefill_failed) -eq 1 ] && [ \$(json_num '$tmp/stats' prefill_legs) -eq 8 ]"
ctl $A_P '{"p_status":200,"p_body":null}'

# ---- gen2: P's KV pool is full (503) ---------------------------------------------
ctl $A_P '{"p_busy_n":3}'
r0=$(get "http://127.0.0.1:$X/stats" | sed -n 's/.*"busy_retries":\([0-9]*\).*/\1/p')
st=$(post "http://127.0.0.1:$X/v1/completions" '{"prompt":"p-busy","max_tokens":4}')
i=0 # the P leg retries on its own thread: the client may have D's answer first
while :; do
	r1=$(get "http://127.0.0.1:$X/stats" | sed -n 's/.*"busy_retries":\([0-9]*\).*/\1/p')
	i=$((i+1)); [ $((r1 - r0)) -ge 3 ] || [ $i -gt 50 ] && break; sleep 0.1
done
sleep 0.3
pycheck $A_P > /dev/null <<'PY'
print(len([r for r in posts("p") if "p-busy" in json.dumps(r["body"])]))
PY
np=$(cat "$tmp/out")
check "P answers 503 three times: the proxy retries the P leg, the client gets D's answer (HTTP $st, busy_retries +$((r1 - r0)), $np legs seen)" \
	"[ '$st' = 200 ] && grep -q ' decoded' '$tmp/resp' && [ $((r1 - r0)) -eq 3 ] && [ $np -eq 4 ]"
ctl $A_P '{"p_busy_n":1000,"d_delay":30}'
proxy_bg pxb --port 0 --busy-wait 1 --prefiller-host 127.0.0.1 --prefiller-port $A_P --prefiller-bootstrap-port $A_B \
	--decoder-host 127.0.0.1 --decoder-port $A_D
wait_line pxb 'ready on' 50
XB=$(port_of pxb)
t0=$(date +%s)
curl -s -D "$tmp/hdr" -o "$tmp/resp" --max-time 25 -H 'Content-Type: application/json' -d '{"prompt":"p-full"}' \
	"http://127.0.0.1:$XB/v1/completions" > /dev/null
t1=$(date +%s)
check "P stays full past --busy-wait 1: 503 with Retry-After within seconds, the decode leg closed ($((t1 - t0)) s)" \
	"grep -q '^HTTP/1.1 503' '$tmp/hdr' && grep -qi '^Retry-After: 1' '$tmp/hdr' && grep -q 'KV pool is full' '$tmp/resp' && [ $((t1 - t0)) -le 10 ] && get http://127.0.0.1:$XB/stats | grep -q '\"busy\":1'"
ctl $A_P '{"p_busy_n":0,"d_delay":0}'

# ---- gen2: the decoder is down -------------------------------------------------
DEAD=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
proxy_bg px2 --port 0 --prefiller-host 127.0.0.1 --prefiller-port $A_P --prefiller-bootstrap-port $A_B --decoder-host 127.0.0.1 --decoder-port $DEAD
wait_line px2 'ready on' 50
X2=$(port_of px2)
before=$(get "http://127.0.0.1:$A_P/_log" | grep -o '"role": "p", "method": "POST"' | wc -l)
st=$(post "http://127.0.0.1:$X2/v1/completions" '{"prompt":"d-down"}')
sleep 0.3
after=$(get "http://127.0.0.1:$A_P/_log" | grep -o '"role": "p", "method": "POST"' | wc -l)
check "decoder down: 502 naming it and the reason, nothing sent to P (HTTP $st, P legs $before -> $after)" \
	"[ '$st' = 502 ] && grep -q 'decoder 127.0.0.1:$DEAD: cannot connect' '$tmp/resp' && grep -q 'nothing was sent to the prefiller' '$tmp/resp' && [ $before -gt 0 ] && [ $before -eq $after ]"

# ---- gen2: /query answers that are refused, the startup timeout -------------------
fake B '{"query":{"0":{"engine_id":"eng-B0"}}}'
proxy_bg px3 --port 0 --prefiller-host 127.0.0.1 --prefiller-port $FP --prefiller-bootstrap-port $FB --decoder-host 127.0.0.1 --decoder-port $FD
exits_within $last_pid 50
check "a /query entry without worker_addr: the proxy exits 1 naming the fault (rc $rc)" \
	"[ '$rc' = 1 ] && grep -q 'refusing the answer of GET http://127.0.0.1:$FB/query: .*worker_addr' '$tmp/px3.log' && ! grep -q 'ready on' '$tmp/px3.out'"
ctl $FP '{"query":{}}'
proxy_bg px4 --port 0 --prefiller-host 127.0.0.1 --prefiller-port $FP --prefiller-bootstrap-port $FB --decoder-host 127.0.0.1 --decoder-port $FD
exits_within $last_pid 50
check "an empty /query: the proxy exits 1, no dp rank registered (rc $rc)" \
	"[ '$rc' = 1 ] && grep -q 'no dp rank registered' '$tmp/px4.log'"
ctl $FP '{"health":503}'
proxy_bg px5 --vllm-protocol gen1 --startup-timeout 2 --port 0 --prefiller-host 127.0.0.1 --prefiller-port $FP --prefiller-bootstrap-port $FB --decoder-host 127.0.0.1 --decoder-port $FD
exits_within $last_pid 60
check "gen1 is gen2; P never healthy: exit 1 after --startup-timeout 2 s (rc $rc)" \
	"[ '$rc' = 1 ] && head -n 1 '$tmp/px5.out' | grep -q 'vllm protocol gen2' && grep -q 'GET /health did not answer 200 within --startup-timeout 2 s (last: HTTP 503)' '$tmp/px5.log'"

# ---- gen0: sequential, P's kv_transfer_params to D ----------------------------------
fake C '{"gen0":true,"p_delay":0.5}'
start px6 "$proxy" --vllm-protocol gen0 --port 0 --prefiller-port $FP --decoder-host 127.0.0.1 --decoder-port $FD || exit 1
X6=$(port_of px6)
st=$(post "http://127.0.0.1:$X6/v1/completions" '{"prompt":"gen0-req","max_tokens":4}' client-rid-7)
pycheck $FP > /dev/null <<'PY'
p, d = leg("p", "gen0-req"), leg("d", "gen0-req")
expect(p["body"]["kv_transfer_params"] == {"do_remote_decode": True, "do_remote_prefill": False,
       "remote_engine_id": None, "remote_block_ids": None, "remote_host": None, "remote_port": None},
       "gen0 P kv_transfer_params %s" % p["body"]["kv_transfer_params"])
expect(p["body"]["max_tokens"] == 1 and p["body"]["stream"] is False, "gen0 P body %s" % p["body"])
expect(d["body"]["kv_transfer_params"]["remote_port"] == 5557 and d["body"]["kv_transfer_params"]["remote_host"] == "127.0.0.1",
       "gen0 D kv_transfer_params %s" % d["body"]["kv_transfer_params"])
expect(d["body"]["max_tokens"] == 4 and "stream" not in d["body"], "gen0 D body lost the client's fields: %s" % d["body"])
expect(p["headers"].get("x-request-id") == "client-rid-7" == d["headers"].get("x-request-id"), "gen0 request ids")
expect("x-data-parallel-rank" not in p["headers"], "gen0 P leg has X-data-parallel-rank")
expect(d["t0"] >= p["t1"], "gen0 D leg at %.3f before P answered at %.3f" % (d["t0"], p["t1"]))
PY
check "gen0: P answered first, then D got the client's body with P's kv_transfer_params (HTTP $st)" \
	"[ $? -eq 0 ] && [ '$st' = 200 ] && head -n 1 '$tmp/px6.out' | grep -q 'vllm protocol gen0'"

ctl $FP '{"p_busy_n":1000}'
proxy_bg px7 --vllm-protocol gen0 --busy-wait 0.5 --port 0 --prefiller-port $FP --decoder-host 127.0.0.1 --decoder-port $FD
wait_line px7 'ready on' 50
curl -s -D "$tmp/hdr" -o "$tmp/resp" --max-time 20 -H 'Content-Type: application/json' -d '{"prompt":"gen0-full"}' \
	"http://127.0.0.1:$(port_of px7)/v1/completions" > /dev/null
pycheck $FP > /dev/null <<'PY'
print(len([r for r in posts("d") if "gen0-full" in json.dumps(r["body"])]))
PY
nd=$(cat "$tmp/out")
check "gen0: P stays full past --busy-wait: 503 with Retry-After naming P's words, nothing sent to D ($nd D legs)" \
	"grep -q '^HTTP/1.1 503' '$tmp/hdr' && grep -qi '^Retry-After: 1' '$tmp/hdr' && grep -q 'is busy' '$tmp/resp' && grep -q 'not enough free KV blocks' '$tmp/resp' && [ $nd -eq 0 ]"
ctl $FP '{"p_busy_n":0}'

# ---- idle and slowloris clients cannot starve the proxy --------------------------------
# 8 threads, so one address may have 2 requests still arriving: 127.0.0.2
# opens 12 connections that send one header byte and wait; 127.0.0.1 is
# still answered at once, and the two held ones get 408 at --request-timeout
start px8 "$proxy" --vllm-protocol gen0 --max-clients 8 --request-timeout 2 --port 0 --prefiller-port $FP \
	--decoder-host 127.0.0.1 --decoder-port $FD || exit 1
X8=$(port_of px8)
python3 - "$X8" "$tmp/slow" <<'PY' &
import socket, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
held = []
for i in range(12):
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.connect(("127.0.0.1", port))
    s.sendall(b"G")
    held.append(s)
time.sleep(3.5)
answers = []
for s in held:
    s.settimeout(0.5)
    try:
        answers.append(s.recv(200).split(b"\r\n")[0].decode() or "closed")
    except ConnectionResetError:
        answers.append("closed")  # closed unread, the byte we sent makes it a reset
    except OSError as e:
        answers.append("error %s" % e)
open(out, "w").write("\n".join(answers) + "\n")
PY
slowpid=$!
sleep 0.5
t0=$(date +%s%N)
st=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$X8/health")
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
check "12 idle connections from one address: another client's /health answered in $ms ms (HTTP $st)" \
	"[ '$st' = 200 ] && [ $ms -lt 1500 ]"
wait $slowpid
get "http://127.0.0.1:$X8/stats" > "$tmp/s8"
check "the address's 3rd to 12th connections closed at accept, its 2 held ones 408 after 2 s ($(sort "$tmp/slow" | uniq -c | tr '\n' ' '))" \
	"[ \$(grep -c 'HTTP/1.1 408' '$tmp/slow') -eq 2 ] && [ \$(grep -c '^closed' '$tmp/slow') -eq 10 ] && grep -q '\"slow_clients\":2' '$tmp/s8' && grep -q '\"crowded_refused\":10' '$tmp/s8'"

st=$(post "http://127.0.0.1:$X/v1/completions" '{"prompt":"still there"}')
check "the gen2 proxy still serves (HTTP $st)" "[ '$st' = 200 ]"
exit $fail

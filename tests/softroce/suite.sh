#!/bin/sh
# Runs INSIDE the SoftRoCE VM (tests/vm/run-in-vm.sh), as root, after the rxe
# devices are up: the hw backend's RDMA path between processes.  Prints TAP.
#
# Rails: the producer uses $P_DEVS (default rxe0,rxe1), the consumer $D_DEVS
# (default rxe2,rxe3); rail i joins P_DEVS[i] and D_DEVS[i] on its own
# network, so taking one netdev down cuts exactly one rail.
#
# Usage: suite.sh BUILDDIR
builddir=${1:?usage: suite.sh BUILDDIR}
tmp=$(mktemp -d)
top_builddir=$builddir
. "$(dirname "$0")/../hw_lib.sh"
trap cleanup EXIT
P_DEVS=${P_DEVS:-rxe0,rxe1}
D_DEVS=${D_DEVS:-rxe2,rxe3}
p0=${P_DEVS%%,*}; p1=${P_DEVS##*,}
d0=${D_DEVS%%,*}; d1=${D_DEVS##*,}
netdev_of() { cat /sys/class/infiniband/$1/ports/1/gid_attrs/ndevs/1 2>/dev/null; }
ip_of() { /usr/bin/ip -4 -o addr show dev "$1" | sed -n 's/.* inet \([0-9.]*\).*/\1/p' | head -n 1; }
sent() { cat /sys/class/infiniband/$1/ports/1/hw_counters/sent_pkts 2>/dev/null || echo 0; }
P_IP=$(ip_of "$(netdev_of $p0)")
D_IP=$(ip_of "$(netdev_of $d0)")
echo "# producer $P_DEVS at $P_IP, consumer $D_DEVS at $D_IP"
ulimit -l unlimited 2>/dev/null
echo "1..20"
export VLLM_MOONCAKE_BOOTSTRAP_PORT=8998

start prod "$serve" --vllm-protocol gen0 --role producer --host "$P_IP" --http-port 8100 --blocks 512 --lease 8 \
	--rdma-devices "$P_DEVS" -v || exit 1
start cons "$serve" --vllm-protocol gen0 --role consumer --host "$D_IP" --http-port 8200 --blocks 512 \
	--rdma-devices "$D_DEVS" -v || exit 1
start proxy "$proxy" --vllm-protocol gen0 --port 8000 --prefiller-host "$P_IP" --prefiller-port 8100 \
	--decoder-host "$D_IP" --decoder-port 8200 -v || exit 1

# 1. byte-exact KV transfer, striped over both rails
s0=$(sent $p0); s1=$(sent $p1)
good=0
for len in 16 300 1000; do
	st=$(post "http://127.0.0.1:8000/v1/completions" "{\"prompt\":\"$(words $len)\"}")
	[ "$st" = 200 ] && grep -q '"mismatched_bytes":0' "$tmp/resp" && good=$((good+1))
done
check "3 prompts over RDMA through the proxy: every byte verified" "[ $good -eq 3 ]"
n0=$(( $(sent $p0) - s0 )); n1=$(( $(sent $p1) - s1 ))
check "striping: both rails carried traffic ($p0 +$n0, $p1 +$n1 packets)" "[ $n0 -gt 100 ] && [ $n1 -gt 100 ]"
get http://$P_IP:8100/stats > "$tmp/s"
check "the producer wrote over RDMA, holds no block" "[ \$(json_num '$tmp/s' rdma_bytes_posted) -gt 1000000 ] && grep -q '\"blocks_held\":0' '$tmp/s'"

# 2. a rail taken down mid-transfer: its slices retried on the other rail
nd1=$(netdev_of $p1)
( sleep 1; /usr/bin/ip link set dev "$nd1" down ) &
downer=$!
st=$(post "http://127.0.0.1:8000/v1/completions" "{\"prompt\":\"$(words 1500)\"}")
wait $downer
get http://$P_IP:8100/stats > "$tmp/s"
check "rail $nd1 down mid-transfer: the request completes, every byte verified (HTTP $st)" "[ '$st' = 200 ] && grep -q '\"mismatched_bytes\":0' '$tmp/resp'"
check "slices were retried on the other rail (slices_retried $(json_num "$tmp/s" slices_retried))" "[ \$(json_num '$tmp/s' slices_retried) -gt 0 ]"
/usr/bin/ip link set dev "$nd1" up
sleep 1

# 3. lease expiry across processes
st=$(post "http://$P_IP:8100/v1/completions" '{"prompt":"late late","kv_transfer_params":{"do_remote_decode":true}}' late-1)
params=$(sed -n 's/.*"kv_transfer_params":\({[^}]*}\).*/\1/p' "$tmp/resp")
sleep 9
st=$(post "http://$D_IP:8200/v1/completions" "{\"prompt\":\"late late\",\"kv_transfer_params\":$params}" late-1)
check "a pull after the lease is refused with the reason (HTTP $st)" "[ '$st' = 502 ] && grep -q -i expired '$tmp/resp'"

# 4. a consumer killed mid-transfer
get http://$P_IP:8100/stats > "$tmp/s1"
eps_before=$(json_num "$tmp/s1" rdma_endpoints)
start victim "$serve" --vllm-protocol gen0 --role consumer --host "$D_IP" --http-port 8300 --blocks 512 --rdma-devices "$D_DEVS" || exit 1
vpid=$last_pid
st=$(post "http://$P_IP:8100/v1/completions" '{"prompt":"x","kv_transfer_params":{"do_remote_decode":true,"kvbridge_tokens":2000}}' big-1)
params=$(sed -n 's/.*"kv_transfer_params":\({[^}]*}\).*/\1/p' "$tmp/resp")
( curl -s -o /dev/null --max-time 60 -H 'Content-Type: application/json' -H 'X-Request-Id: big-1' \
	-d "{\"prompt\":\"x\",\"kv_transfer_params\":$params}" http://$D_IP:8300/v1/completions ) &
sleep 0.5
kill -KILL $vpid
# the lease (8 s) frees the blocks once the writes in flight have failed
i=0
while [ $i -lt 60 ]; do
	get http://$P_IP:8100/stats > "$tmp/s2"
	grep -q '"blocks_held":0' "$tmp/s2" && grep -q '"producer_live":0' "$tmp/s2" && break
	sleep 0.5; i=$((i+1))
done
check "consumer killed mid-transfer: the producer freed the blocks ($((i / 2)) s after the kill + 0.5 s)" "grep -q '\"blocks_held\":0' '$tmp/s2' && grep -q '\"producer_live\":0' '$tmp/s2'"
check "the dead consumer's endpoints were reclaimed ($eps_before before it, $(json_num "$tmp/s2" rdma_endpoints) after)" "[ \$(json_num '$tmp/s2' rdma_endpoints) -eq $eps_before ]"
st=$(post "http://127.0.0.1:8000/v1/completions" "{\"prompt\":\"$(words 200)\"}")
check "the producer keeps serving (HTTP $st)" "[ '$st' = 200 ] && grep -q '\"mismatched_bytes\":0' '$tmp/resp'"

# 5. a peer whose path MTU differs (RC needs the same on both sides): refused
# at the handshake with the reason, instead of a QP that silently stalls
MC_MTU=512 start mtu "$serve" --vllm-protocol gen0 --role consumer --host "$D_IP" --http-port 8400 --blocks 64 \
	--rdma-devices "$D_DEVS" || exit 1
st=$(post "http://$P_IP:8100/v1/completions" '{"prompt":"m t u","kv_transfer_params":{"do_remote_decode":true}}' mtu-1)
params=$(sed -n 's/.*"kv_transfer_params":\({[^}]*}\).*/\1/p' "$tmp/resp")
st=$(post "http://$D_IP:8400/v1/completions" "{\"prompt\":\"m t u\",\"kv_transfer_params\":$params}" mtu-1)
check "a consumer at MTU 512 against a producer at 1024: refused with the reason (HTTP $st)" "[ '$st' = 502 ] && grep -q 'MTU mismatch' '$tmp/prod.log' '$tmp/mtu.log'"

# 6. KV caches in GPU memory (emulated: device pages no NIC can reach, as
# SoftRoCE cannot reach real GPU memory) on both sides: the producer stages
# device -> pinned chunk -> rxe, the consumer exposes a pinned mirror and
# copies it to the device when the producer's SYNC says the bytes are there
VLLM_MOONCAKE_BOOTSTRAP_PORT=8997 start gprod "$serve" --vllm-protocol gen0 --role producer --host "$P_IP" --http-port 8500 --blocks 256 --memory emulated \
	--rdma-devices "$P_DEVS" -v || exit 1
start gcons "$serve" --vllm-protocol gen0 --role consumer --host "$D_IP" --http-port 8600 --blocks 256 --memory emulated \
	--rdma-devices "$D_DEVS" -v || exit 1
good=0
for len in 20 700 2500; do
	st=$(post "http://$P_IP:8500/v1/completions" "{\"prompt\":\"$(words $len)\",\"kv_transfer_params\":{\"do_remote_decode\":true}}" gpu-$len)
	params=$(sed -n 's/.*"kv_transfer_params":\({[^}]*}\).*/\1/p' "$tmp/resp")
	st=$(post "http://$D_IP:8600/v1/completions" "{\"prompt\":\"$(words $len)\",\"kv_transfer_params\":$params}" gpu-$len)
	[ "$st" = 200 ] && grep -q '"mismatched_bytes":0' "$tmp/resp" && good=$((good+1))
done
get http://$P_IP:8500/stats > "$tmp/gp"
get http://$D_IP:8600/stats > "$tmp/gc"
check "GPU memory on both sides over RDMA: 3 requests, every byte verified on the consumer's device ($good/3)" "[ $good -eq 3 ]"
check "producer: device -> pinned chunks -> rxe ($(json_num "$tmp/gp" gpu_copies) copies, $(json_num "$tmp/gp" rdma_bytes_posted) bytes over RDMA, $(json_num "$tmp/gp" gpu_syncs_requested) syncs asked)" \
	"[ \$(json_num '$tmp/gp' gpu_copies) -gt 0 ] && [ \$(json_num '$tmp/gp' rdma_bytes_posted) -gt 1000000 ] && [ \$(json_num '$tmp/gp' gpu_syncs_requested) -gt 0 ] && grep -q '\"blocks_held\":0' '$tmp/gp'"
check "consumer: mirror -> device on every SYNC ($(json_num "$tmp/gc" gpu_syncs_served) served, $(json_num "$tmp/gc" gpu_staged_bytes) bytes copied)" \
	"[ \$(json_num '$tmp/gc' gpu_syncs_served) -eq \$(json_num '$tmp/gp' gpu_syncs_requested) ] && [ \$(json_num '$tmp/gc' gpu_staged_bytes) -ge \$(json_num '$tmp/gp' rdma_bytes_posted) ]"
# 7. RDMA windows.  The consumer's pool is closed to remote access: its
# descriptor publishes key 0, and each pull opens keys for its own blocks,
# sent on the kvbridge stream before it, that die when it ends.  An attacker
# on an allowed host that connects as a Mooncake engine (kvbridge-bench as
# initiator, one 4 KiB RDMA WRITE) reaches nothing with the descriptor's key,
# with the pool's real key, or with a window key after its pull; against a
# consumer started with --rdma-buffer-keys the same write lands, so the
# attack itself works.  (The keys come from the consumer's debug log.)
KVB_HW_DEBUG=1 start wcons "$serve" --vllm-protocol gen0 --role consumer --host "$D_IP" --http-port 8700 --blocks 256 \
	--rdma-devices "$D_DEVS" -v || exit 1
WSEG=$(field wcons segment)
check "a consumer without --rdma-buffer-keys says its RDMA keys are per pull" "grep -q 'RDMA keys per pull (windows)' '$tmp/wcons.log'"
get http://$P_IP:8100/stats > "$tmp/pw0"
st=$(post "http://$P_IP:8100/v1/completions" "{\"prompt\":\"$(words 400)\",\"kv_transfer_params\":{\"do_remote_decode\":true}}" win-1)
params=$(sed -n 's/.*"kv_transfer_params":\({[^}]*}\).*/\1/p' "$tmp/resp")
st=$(post "http://$D_IP:8700/v1/completions" "{\"prompt\":\"$(words 400)\",\"kv_transfer_params\":$params}" win-1)
get http://$D_IP:8700/stats > "$tmp/wc"
get http://$P_IP:8100/stats > "$tmp/pw"
posts=$(( $(json_num "$tmp/pw" rdma_window_posts) - $(json_num "$tmp/pw0" rdma_window_posts) ))
echo "# the pull's windows: $(json_num "$tmp/wc" rdma_window_registrations) registrations in $(json_num "$tmp/wc" rdma_window_reg_us) us; the pull took $(sed -n 's/.*"transfer_ms":\([0-9.]*\).*/\1/p' "$tmp/resp") ms"
check "a pull into the closed pool over RDMA: verified (HTTP $st); $(json_num "$tmp/wc" rdma_window_registrations) window registrations, $posts producer writes with window keys, none left open" \
	"[ '$st' = 200 ] && grep -q '\"mismatched_bytes\":0' '$tmp/resp' && [ \$(json_num '$tmp/wc' rdma_window_registrations) -gt 0 ] && [ $posts -gt 0 ] && grep -q '\"rdma_windows_open\":0' '$tmp/wc'"
WADDR=$(sed -n "s/.*window of .*: \(0x[0-9a-f]*\) + [0-9]* on $d0: rkey 0x[0-9a-f]*.*/\1/p" "$tmp/wcons.log" | head -n 1)
WKEY=$(sed -n "s/.*window of .*: 0x[0-9a-f]* + [0-9]* on $d0: rkey \(0x[0-9a-f]*\).*/\1/p" "$tmp/wcons.log" | head -n 1)
# the pool's registration has no remote key (rxe gives it 0); its local key
# is the one number an attacker could hope the NIC takes for it
BADDR=$(sed -n "s/.*registered \(0x[0-9a-f]*\) + [0-9]* on $d0: rkey 0x[0-9a-f]* lkey 0x[0-9a-f]* (closed to remote access).*/\1/p" "$tmp/wcons.log" | head -n 1)
BKEY=$(sed -n "s/.*registered 0x[0-9a-f]* + [0-9]* on $d0: rkey 0x[0-9a-f]* lkey \(0x[0-9a-f]*\) (closed to remote access).*/\1/p" "$tmp/wcons.log" | head -n 1)
echo "# window key $WKEY at $WADDR (dead), pool lkey $BKEY at $BADDR"
# attack ADDR [KEY]: one 4 KiB RDMA WRITE into wcons; its status in $arc, output in $tmp/attack
attack() {
	"$bench" -t "mooncake://$1" --host "$P_IP" --rdma-devices "$p0" --count 1 -b 4K --buffer-size 1M -d 1 \
		${2:+--remote-addr "$2"} ${3:+--rkey "$3"} >"$tmp/attack" 2>&1
	arc=$?
	grep -E 'failed|no key|refused|error' "$tmp/attack" | head -n 2 | sed 's/^/# attack: /'
}
attack "$WSEG" "$WADDR"
check "the descriptor's key (0) reaches nothing: refused before a byte moves (exit $arc)" "[ $arc -ne 0 ] && grep -q 'no key for' '$tmp/attack'"
attack "$WSEG" "$WADDR" "$WKEY"
check "a window key after its pull ended: the NIC refuses the write (exit $arc)" "[ -n '$WKEY' ] && [ $arc -ne 0 ] && grep -q 'transfer failed' '$tmp/attack'"
attack "$WSEG" "$BADDR" "$BKEY"
check "the pool registration's local key used as a remote key: refused by the NIC (exit $arc)" "[ -n '$BKEY' ] && [ $arc -ne 0 ] && grep -q 'transfer failed' '$tmp/attack'"
start bcons "$serve" --vllm-protocol gen0 --role consumer --host "$D_IP" --http-port 8800 --blocks 256 \
	--rdma-devices "$D_DEVS" --rdma-buffer-keys || exit 1
attack "$(field bcons segment)"
check "the same attack against a consumer with --rdma-buffer-keys: the write lands (exit $arc)" "[ $arc -eq 0 ] && grep -q 'RDMA keys reach the whole pool' '$tmp/bcons.log'"
st=$(post "http://$P_IP:8100/v1/completions" "{\"prompt\":\"$(words 100)\",\"kv_transfer_params\":{\"do_remote_decode\":true}}" win-2)
params=$(sed -n 's/.*"kv_transfer_params":\({[^}]*}\).*/\1/p' "$tmp/resp")
st=$(post "http://$D_IP:8700/v1/completions" "{\"prompt\":\"$(words 100)\",\"kv_transfer_params\":$params}" win-2)
check "after the attacks the windowed consumer still serves, verified (HTTP $st)" "[ '$st' = 200 ] && grep -q '\"mismatched_bytes\":0' '$tmp/resp'"
exit $fail

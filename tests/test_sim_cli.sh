#!/bin/sh
# kvbridge-sim as a user runs it: --help, a small study twice with the same
# seed (byte-identical outputs), another seed (different outputs), and bad
# input that must stop before simulating with the file, line and field.
builddir=${top_builddir:-.}
sim="$builddir/src/tools/kvbridge-sim"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0; fail=0
ok() { n=$((n+1)); echo "ok $n - $1"; }
notok() { n=$((n+1)); fail=1; echo "not ok $n - $1"; sed 's/^/# /' "$tmp/out" 2>/dev/null | tail -n 20; }
check() { if eval "$2"; then ok "$1"; else notok "$1"; fi; }
echo "1..13"

"$sim" --help >"$tmp/out" 2>&1
check "--help explains the outputs and options" "grep -q -- '--nic-policy' '$tmp/out' && grep -q 'requests.csv' '$tmp/out'"

run() { "$sim" -q --no-plots --events -P 2 -D 2 --nics 4 --requests 60 --rate 8 --abort-prob 0.1 "$@" >"$tmp/out" 2>&1; }
run -s 7 -o "$tmp/a"; rc=$?
check "small study runs (rc $rc)" "[ $rc -eq 0 ] && grep -q 'stale reads *0' '$tmp/out'"
run -s 7 -o "$tmp/b"
same=1
for f in requests.csv nics.csv events.jsonl; do cmp -s "$tmp/a/$f" "$tmp/b/$f" || same=0; done
grep -v 'wall' "$tmp/a/summary.txt" > "$tmp/a.s"; grep -v 'wall' "$tmp/b/summary.txt" > "$tmp/b.s"
cmp -s "$tmp/a.s" "$tmp/b.s" || same=0
check "same seed: byte-identical requests.csv, nics.csv, events.jsonl, summary" "[ $same -eq 1 ]"
run -s 8 -o "$tmp/c"
check "another seed: different requests.csv" "! cmp -s '$tmp/a/requests.csv' '$tmp/c/requests.csv'"
check "requests.csv has a row per request" "[ \$(wc -l < '$tmp/a/requests.csv') -eq 61 ]"

printf '{"timestamp": 0, "input_length": 100, "output_length": 5, "hash_ids": [1]}\n{"timestamp": 5, "input_length": -3, "output_length": 5, "hash_ids": []}\n' > "$tmp/bad.jsonl"
"$sim" -q --no-plots -t "$tmp/bad.jsonl" -o "$tmp/d" >"$tmp/out" 2>&1; rc=$?
check "malformed trace line: error names file, line, field (rc $rc)" "[ $rc -ne 0 ] && grep -q 'bad.jsonl:2' '$tmp/out' && grep -q 'input_length' '$tmp/out' && [ ! -e '$tmp/d/requests.csv' ]"

"$sim" -q --no-plots -m no-such-model -o "$tmp/d" >"$tmp/out" 2>&1; rc=$?
check "unknown model preset (rc $rc)" "[ $rc -eq 2 ] && grep -q \"unknown model 'no-such-model'\" '$tmp/out'"

printf '[platform]\nnics_per_node = 0\n' > "$tmp/zero.ini"
"$sim" -q --no-plots -c "$tmp/zero.ini" -o "$tmp/d" >"$tmp/out" 2>&1; rc=$?
check "platform with zero NICs (rc $rc)" "[ $rc -ne 0 ] && grep -q 'nics_per_node' '$tmp/out'"

cat > "$tmp/split.xml" <<'XML'
<?xml version='1.0'?>
<!DOCTYPE platform SYSTEM "https://simgrid.org/simgrid.dtd">
<platform version="4.1">
  <zone id="world" routing="Full">
    <zone id="a" routing="Full">
      <host id="p0-nic0" speed="1Gf"/>
      <host id="x" speed="1Gf"/>
      <link id="la" bandwidth="1GBps" latency="0"/>
      <route src="p0-nic0" dst="x"><link_ctn id="la"/></route>
    </zone>
    <zone id="b" routing="Full">
      <host id="d0-nic0" speed="1Gf"/>
      <host id="y" speed="1Gf"/>
      <link id="lb" bandwidth="1GBps" latency="0"/>
      <route src="d0-nic0" dst="y"><link_ctn id="lb"/></route>
    </zone>
  </zone>
</platform>
XML
"$sim" -q --no-plots --platform "$tmp/split.xml" -o "$tmp/d" >"$tmp/out" 2>&1; rc=$?
check "unreachable route: error names the hosts (rc $rc)" "[ $rc -ne 0 ] && grep -q 'p0-nic0' '$tmp/out' && grep -q 'd0-nic0' '$tmp/out'"

"$sim" -q --no-plots --fault 'crash:decode@12' -o "$tmp/d" >"$tmp/out" 2>&1; rc=$?
check "bad fault spec (rc $rc)" "[ $rc -eq 2 ] && grep -q 'crash:ROLE:NODE@T' '$tmp/out'"

printf '[platform]\nnics_per_node = 4\nbogus = 1\n' > "$tmp/bad.ini"
"$sim" -q --no-plots -c "$tmp/bad.ini" -o "$tmp/d" >"$tmp/out" 2>&1; rc=$?
check "unknown config key names file, group, key (rc $rc)" "[ $rc -ne 0 ] && grep -q 'bad.ini' '$tmp/out' && grep -q 'bogus' '$tmp/out'"

printf '[study]\nmodel = llama-3-8b\nabort_prob = 0.5\n' > "$tmp/study.ini"
run -s 7 -c "$tmp/study.ini" -m qwen2.5-0.5b --abort-prob 0 -o "$tmp/f"; rc=$?
check "the command line beats the study file (rc $rc)" "[ $rc -eq 0 ] && grep -q '^summary (qwen2.5-0.5b' '$tmp/out' && grep -q ' 0 aborted' '$tmp/out'"

run -s 7 --fault crash:decode:1@3 --lease-policy heartbeat --heartbeat 1 -o "$tmp/e"; rc=$?
check "decode crash with heartbeat leases: requests lost, no stale read (rc $rc)" "[ $rc -eq 0 ] && grep -q 'lost to crashes' '$tmp/out' && grep -q 'stale reads *0' '$tmp/out'"
exit $fail

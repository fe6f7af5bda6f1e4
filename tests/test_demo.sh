#!/bin/sh
# kvbridge-demo as a user runs it: --help, a bad option, a real run whose
# summary must report every byte verified, and its JSONL event log.
builddir=${top_builddir:-.}
demo="$builddir/src/tools/kvbridge-demo"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0; fail=0
ok() { n=$((n+1)); echo "ok $n - $1"; }
notok() { n=$((n+1)); fail=1; echo "not ok $n - $1"; }
echo "1..6"

if "$demo" --help | grep -q -- '--model'; then ok "--help lists --model"; else notok "--help lists --model"; fi

"$demo" --model no-such-model >"$tmp/out" 2>&1; rc=$?
if [ $rc -eq 2 ] && grep -q "unknown model 'no-such-model'" "$tmp/out" && grep -q qwen2.5-0.5b "$tmp/out"; then
	ok "unknown model: exit 2 and the list of presets"
else notok "unknown model (rc=$rc)"; cat "$tmp/out" | sed 's/^/# /'; fi

"$demo" --requests 0 >"$tmp/out" 2>&1; rc=$?
if [ $rc -eq 2 ]; then ok "--requests 0 refused"; else notok "--requests 0 (rc=$rc)"; fi

"$demo" --tokens 256 --requests 6 --nics 3 --events "$tmp/ev.jsonl" >"$tmp/out" 2>&1; rc=$?
sed 's/^/# /' "$tmp/out"
if [ $rc -eq 0 ] && grep -q 'result *OK' "$tmp/out"; then ok "demo run: result OK"; else notok "demo run (rc=$rc)"; fi

# 6 requests x 16 blocks x 24 layers x 8 KiB
if grep -q 'verified *18874368 of 18874368 bytes, 0 mismatched' "$tmp/out"; then
	ok "every byte verified"; else notok "byte count"; fi

lines=$(grep -c '"event":"transfer"' "$tmp/ev.jsonl" 2>/dev/null || echo 0)
if [ "$lines" -eq 12 ] && grep -q '"status":"KVB_OK"' "$tmp/ev.jsonl"; then
	ok "event log: 12 transfer records"; else notok "event log has $lines records"; fi
exit $fail

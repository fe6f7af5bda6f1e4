#!/bin/bash
# tests/vm/run-in-vm.sh: run a command inside a qemu VM with two SoftRoCE
# (rdma_rxe) devices, rxe0 on eth0 and rxe1 on eth1, which reach each other.
#
# The guest boots Debian's kernel with a busybox initramfs (build-image.sh),
# mounts the host's root filesystem read-only over virtio-9p and chroots into
# it, so the host's libibverbs, rxe provider, perftest, python3 and build tree
# are what runs.  The command's stdout and stderr stream to ours; we exit
# with its exit status.  See docs/softroce-vm.md.
set -eu

prog=${0##*/}
here=$(cd "$(dirname "$0")" && pwd -P)

usage() {
	cat <<EOF
usage: $prog [options] -- COMMAND [ARG]...

Boot the SoftRoCE test VM, run COMMAND in it (as root, in the host's
filesystem seen read-only, working directory = the current one, the
current environment), print its output and exit with its exit status.

Inside the guest: eth0 10.0.1.1/24 with rxe0, eth1 10.0.1.2/24 with rxe1,
both virtio NICs on one qemu hub; RoCE v2 GID index of each in
\$KVB_VM_GID_INDEX0/\$KVB_VM_GID_INDEX1; KVB_VM=1; ulimit -l unlimited; /tmp, /run and
/dev/shm are empty tmpfs; \$KVB_VM_SCRATCH is a directory shared read-write
with the host (removed afterwards).

Options:
  --accel tcg|kvm|auto
                    accelerator (default \$VM_ACCEL or tcg); kvm needs a
                    usable /dev/kvm and a CPU with vmx/svm; auto picks kvm
                    when both are there, else tcg
  --mem MIB         guest memory in MiB (default 2048)
  --cpus N          vCPUs (default 1: fastest under TCG on a 2-core host)
  --timeout SEC     kill the VM after SEC seconds (default 300)
  --rails           four NICs as two rails, like two hosts with two NICs
                    each: eth0 10.0.1.1 (rxe0) and eth2 10.0.1.2 (rxe2) on
                    hub 0, eth1 10.0.2.1 (rxe1) and eth3 10.0.2.2 (rxe3) on
                    hub 1; taking one netdev down cuts exactly one rail
  --mtu N           MTU of eth0/eth1 (default 1500: rxe active_mtu 1024;
                    9000 gives 4096)
  --rw DIR          share host directory DIR read-write at the same path
                    (repeatable; paths without whitespace)
  --no-env          do not carry the current environment into the guest
  --keep-log FILE   write the guest console and qemu's messages to FILE
  --cache DIR       image cache (default \$KVB_VM_CACHE or
                    ~/.cache/kvbridge-vm); built there by build-image.sh
  -v, --verbose     print boot/command timings on stderr
  -h, --help        this text

Exit status: COMMAND's; 77 when the VM cannot be made or run here (no
qemu, no image, no KVM with --accel kvm); 124 on timeout; 99 when the guest
failed before COMMAND ran or died under it (details on stderr).
EOF
}

accel=${VM_ACCEL:-tcg}
mem=2048 cpus=1 timeout=300 mtu=1500 keep_log="" pass_env=1 verbose=0 rails=0
cache=${KVB_VM_CACHE:-${HOME:-/root}/.cache/kvbridge-vm}
rw=""
need() { [ $# -ge 2 ] || { echo "$prog: $1 needs an argument" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
	case $1 in
	--accel) need "$@"; accel=$2; shift ;;
	--mem) need "$@"; mem=$2; shift ;;
	--cpus) need "$@"; cpus=$2; shift ;;
	--timeout) need "$@"; timeout=$2; shift ;;
	--mtu) need "$@"; mtu=$2; shift ;;
	--rails) rails=1 ;;
	--rw) need "$@"; [ -d "$2" ] || { echo "$prog: --rw $2: not a directory" >&2; exit 2; }
		d=$(cd "$2" && pwd -P)
		case $d in *[[:space:]]*) echo "$prog: --rw $d: whitespace in the path" >&2; exit 2 ;; esac
		rw="$rw $d"; shift ;;
	--no-env) pass_env=0 ;;
	--keep-log) need "$@"; keep_log=$2; shift ;;
	--cache) need "$@"; cache=$2; shift ;;
	-v|--verbose) verbose=1 ;;
	-h|--help) usage; exit 0 ;;
	--) shift; break ;;
	-*) echo "$prog: unknown option $1 (see --help)" >&2; exit 2 ;;
	*) break ;;
	esac
	shift
done
[ $# -ge 1 ] || { echo "$prog: no command given (see --help)" >&2; exit 2; }
for v in "$mem" "$cpus" "$timeout" "$mtu"; do
	case $v in ''|*[!0-9]*) echo "$prog: not a number: $v" >&2; exit 2 ;; esac
done
kvm_ok() {
	[ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo
}
if [ "$accel" = auto ]; then
	if kvm_ok; then accel=kvm; else accel=tcg; fi
fi
case $accel in
tcg) accel_args="-accel tcg -cpu max" ;;
kvm) accel_args="-accel kvm -cpu host" ;;
*) echo "$prog: --accel must be tcg, kvm or auto" >&2; exit 2 ;;
esac

skip() { echo "$prog: SKIP: $*" >&2; exit 77; }

# 1. the image (cached; builds or installs what is missing)
set +e
"$here/build-image.sh" -q --cache "$cache"
brc=$?
set -e
case $brc in
0) ;;
77) skip "the VM image cannot be built here (see above)" ;;
*) echo "$prog: build-image.sh failed with status $brc" >&2; exit 99 ;;
esac
command -v qemu-system-x86_64 >/dev/null 2>&1 || skip "qemu-system-x86_64 not installed"
if [ "$accel" = kvm ]; then
	{ [ -r /dev/kvm ] && [ -w /dev/kvm ]; } || skip "--accel kvm: /dev/kvm is missing or not accessible"
	grep -qwE 'vmx|svm' /proc/cpuinfo ||
		skip "--accel kvm: the CPU shows no vmx/svm (a PVM or emulated /dev/kvm cannot run a stock kernel)"
fi
kernel=$cache/vmlinux
[ -f "$kernel" ] || kernel=$cache/vmlinuz

# 2. the per-run directory: console log, output fifos, the scratch share
work=$(mktemp -d "${TMPDIR:-/tmp}/kvb-vm.XXXXXX")
work=$(cd "$work" && pwd -P)
share=$work/share
mkdir "$share"
qpid="" opid="" epid=""
cleanup() {
	[ -n "$qpid" ] && kill "$qpid" 2>/dev/null
	[ -n "$opid" ] && kill "$opid" 2>/dev/null
	[ -n "$epid" ] && kill "$epid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

case $share in *[[:space:]]*) skip "the temporary directory path $share contains whitespace" ;; esac
cwd=$(pwd -P)
# The guest's /tmp is a fresh tmpfs.  Host paths under /tmp that the run
# needs (the working directory, this harness, absolute paths among the
# arguments) are made visible, read-only, by binding their top-level
# directory into it.
hosttmp=""
for p in "$cwd" "$here" "$@"; do
	case $p in /tmp/?*) ;; *) continue ;; esac
	p=${p#/tmp/} p=${p%%/*}
	case $p in *[[:space:]]*|.|..) continue ;; esac
	[ -e "/tmp/$p" ] || continue
	case " $hosttmp " in *" $p "*) ;; *) hosttmp="$hosttmp $p" ;; esac
done
hosttmp=${hosttmp# }

q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
{
	echo "KVB_SCRATCH=$(q "$share")"
	echo "KVB_HOSTTMP=$(q "$hosttmp")"
	echo "KVB_RW=$(q "${rw# }")"
	if [ $rails = 1 ]; then
		echo "KVB_NETDEVS='eth0 eth1 eth2 eth3'"
		echo "KVB_IPS='10.0.1.1 10.0.2.1 10.0.1.2 10.0.2.2'"
		echo "KVB_MACS='52:54:00:4b:56:01 52:54:00:4b:56:02 52:54:00:4b:56:03 52:54:00:4b:56:04'"
	else
		echo "KVB_NETDEVS='eth0 eth1'"
		echo "KVB_IPS='10.0.1.1 10.0.1.2'"
		echo "KVB_MACS='52:54:00:4b:56:01 52:54:00:4b:56:02'"
	fi
	echo "KVB_PREFIX=24"
	echo "KVB_MTU=$mtu"
} >"$share/config"
cp "$here/guest-stage2.sh" "$share/stage2.sh"

# cmd.sh runs under the host's bash in the guest: environment, the VM's
# KVB_VM_* variables, working directory, command
{
	echo "# generated by $prog"
	if [ $pass_env = 1 ]; then
		for name in $(compgen -e); do
			case $name in
			PWD|OLDPWD|SHLVL|_|TMPDIR|SHELLOPTS|BASHOPTS|BASH_ENV|ENV|TERM) continue ;;
			esac
			printf 'export %s=%q\n' "$name" "${!name}"
		done
	else
		echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root"
	fi
	echo '. "${0%/*}/vmenv.sh"'
	printf 'cd %q || exit 127\n' "$cwd"
	printf 'exec'
	printf ' %q' "$@"
	echo
} >"$share/cmd.sh"

mkfifo "$work/out" "$work/err"
cat "$work/out" &
opid=$!
cat "$work/err" >&2 &
epid=$!

# 3. boot.  Nothing leaves the VM: the NICs sit on a hub with no host
# backend (qemu warns "hub 0 is not connected to host network").
p9="security_model=none,multidevs=remap"
# NICs in PCI order = eth0, eth1, ...; with --rails, hub 0 joins eth0 and
# eth2, hub 1 joins eth1 and eth3
if [ $rails = 1 ]; then hubs="0 1 0 1"; else hubs="0 0"; fi
nic_args="" i=0
for h in $hubs; do
	i=$((i + 1))
	nic_args="$nic_args -netdev hubport,id=n$i,hubid=$h -device virtio-net-pci,netdev=n$i,mac=52:54:00:4b:56:0$i,romfile="
done
t0=$(date +%s.%N)
# shellcheck disable=SC2086,SC2046
timeout -k 5 "$timeout" qemu-system-x86_64 \
	-nodefaults -no-user-config -display none -no-reboot \
	$accel_args -m "$mem" -smp "$cpus" \
	-kernel "$kernel" -initrd "$cache/initrd.cpio" \
	-append "console=ttyS0 quiet panic=-1 loglevel=4" \
	-chardev file,id=con,path="$work/console.log" -serial chardev:con \
	-chardev file,id=out,path="$work/out" -serial chardev:out \
	-chardev file,id=err,path="$work/err" -serial chardev:err \
	-fsdev local,id=hostroot,path=/,readonly=on,$p9 \
	-device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
	-fsdev local,id=scratch,path="$share",$p9 \
	-device virtio-9p-pci,fsdev=scratch,mount_tag=scratch \
	$(i=0; for d in ${rw}; do
		echo "-fsdev local,id=rw$i,path=$d,$p9 -device virtio-9p-pci,fsdev=rw$i,mount_tag=rw$i"
		i=$((i + 1))
	done) \
	$nic_args \
	</dev/null >"$work/qemu.log" 2>&1 &
qpid=$!
set +e
wait $qpid
qrc=$?
set -e
qpid=""
t1=$(date +%s.%N)

# unblock the copies if qemu never opened the fifos, then let them drain
for f in out err; do exec 3<>"$work/$f"; exec 3>&-; done
wait $opid $epid 2>/dev/null || true
opid="" epid=""

touch "$work/console.log"
if [ -n "$keep_log" ]; then
	{ cat "$work/console.log"; echo "--- qemu (status $qrc)"; cat "$work/qemu.log"; } >"$keep_log" ||
		echo "$prog: cannot write $keep_log" >&2
fi

rc=""
[ -f "$share/rc" ] && rc=$(cat "$share/rc")
[ -n "$rc" ] || rc=$(sed -n 's/^@@KVB-VM-RC=\([0-9]*\).*/\1/p' "$work/console.log" | tail -n 1)

if [ $verbose = 1 ]; then
	st() { sed -n "s/^@@KVB-VM-STAGE $1 \([0-9.]*\).*/\1/p" "$work/console.log" | tail -n 1; }
	echo "$(st modules) $(st ready) $(st command) $(st finished) $t0 $t1" | awk -v acc="$accel" -v c="$cpus" '
		NF == 6 { printf "# vm (%s, %s vCPU): modules loaded at %.1f s, rxe ready at %.1f s, command %.1f s, wall %.1f s\n",
			acc, c, $1, $2, $4 - $3, $6 - $5; next }
		{ printf "# vm: wall %.1f s\n", $NF - $(NF-1) }' >&2
fi

if [ -n "$rc" ]; then
	if grep -qE 'BUG:|Oops|general protection|Call Trace:' "$work/console.log"; then
		echo "$prog: note: the guest kernel logged an oops or BUG during the run:" >&2
		grep -m 3 -E 'BUG:|Oops|general protection' "$work/console.log" | sed 's/^/# /' >&2
	fi
	exit "$rc"
fi
if [ $qrc = 124 ] || [ $qrc = 137 ]; then
	echo "$prog: timed out after $timeout s; console tail:" >&2
	tail -n 20 "$work/console.log" | sed 's/^/# /' >&2
	exit 124
fi
if [ ! -s "$work/console.log" ] && [ $qrc != 0 ]; then
	sed 's/^/# /' "$work/qemu.log" >&2
	skip "qemu failed to start (status $qrc)"
fi
err=$(sed -n 's/^@@KVB-VM-ERROR: //p' "$work/console.log" | head -n 1)
if grep -q '^@@KVB-VM-STAGE command' "$work/console.log"; then
	echo "$prog: the guest died while the command ran (kernel panic?); console tail:" >&2
else
	echo "$prog: the guest failed before the command ran${err:+: $err}; console tail:" >&2
fi
# from the first oops/panic line if there is one, else the last lines
first=$(grep -n -m 1 -E 'Kernel panic|BUG:|Oops|general protection|WARNING:' "$work/console.log" | cut -d: -f1)
if [ -n "$first" ]; then
	sed -n "$first,$((first + 40))p" "$work/console.log"
else
	tail -n 30 "$work/console.log"
fi | sed 's/^/# /' >&2
grep -v 'is not connected to host network' "$work/qemu.log" | sed 's/^/# qemu: /' >&2
exit 99

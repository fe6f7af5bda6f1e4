"""The real Mooncake Transfer Engine (PyPI mooncake-transfer-engine-non-cuda,
TCP transport, P2PHANDSHAKE) and kvbridge move verified bytes both ways.

  Mooncake -> kvbridge: the engine opens kvbridge's segment (handshake type
  1: it parses kvbridge's descriptor), writes random bytes into kvbridge's
  buffer and reads kvbridge's pattern back; kvbridge-bench's target reports
  SHA-256 of its memory to compare.
  kvbridge -> Mooncake: kvbridge-bench fetches the engine's descriptor and
  reads the engine's buffer (checked against the pattern the test wrote
  there) and writes its own pattern into it (checked here).
  Mooncake -> kvbridge's GPU memory (emulated): over TCP kvbridge's server
  stages the bytes to and from the device; over RDMA (a NIC that cannot
  reach GPU memory) the descriptor gives Mooncake no key, so its write fails
  and nothing lands.
  RDMA only: a Mooncake engine that writes and then dies has its endpoints
  retired by kvbridge's probes (KVB_RDMA_PEER_PROBE), while the live
  engine's stay and keep working.

Prints TAP.  Usage: mooncake_peer.py PATH/TO/kvbridge-bench

Over TCP on loopback by default; KVB_INTEROP_PROTO=rdma runs the same checks
over RDMA (the SoftRoCE VM): KVB_INTEROP_MC_HOST / KVB_INTEROP_MC_DEVICES are
the engine's address and devices, KVB_INTEROP_KVB_HOST /
KVB_INTEROP_KVB_DEVICES kvbridge's.
"""
import ctypes
import hashlib
import os
import subprocess
import sys

import patterns

proto = os.environ.get("KVB_INTEROP_PROTO", "tcp")
mc_host = os.environ.get("KVB_INTEROP_MC_HOST", "127.0.0.1")
mc_devs = os.environ.get("KVB_INTEROP_MC_DEVICES", "")
kvb_host = os.environ.get("KVB_INTEROP_KVB_HOST", "127.0.0.1")
kvb_devs = os.environ.get("KVB_INTEROP_KVB_DEVICES", "")
kvb_rdma = ["--rdma-devices", kvb_devs] if proto == "rdma" else []
if proto == "tcp":
    os.environ.setdefault("MC_FORCE_TCP", "1")
os.environ.setdefault("MC_LOG_LEVEL", "WARNING")
from mooncake.engine import TransferEngine  # noqa: E402

bench = sys.argv[1]
n = 0
failed = 0


def check(cond, what):
    global n, failed
    n += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (n, what), flush=True)
    if not cond:
        failed = 1


print("1..%d" % (11 if proto == "rdma" else 9), flush=True)
MB = 1 << 20
eng = TransferEngine()
rc = eng.initialize(mc_host, "P2PHANDSHAKE", proto, mc_devs)
if rc != 0:
    print("Bail out! the Mooncake engine did not initialize (rc %d)" % rc)
    sys.exit(1)
mc_port = eng.get_rpc_port()
# our own memory, registered with the engine (allocate_managed_buffer returns
# 0 with the rdma protocol in wheel 0.3.13); bytes in and out with ctypes
local_buf = ctypes.create_string_buffer(4 * MB)
local = ctypes.addressof(local_buf)
if eng.register_memory(local, 4 * MB) != 0:
    print("Bail out! the Mooncake engine could not register 4 MiB")
    sys.exit(1)


def put(addr, data):
    ctypes.memmove(addr, data, len(data))


def get(addr, n):
    return ctypes.string_at(addr, n)


# ---- Mooncake -> kvbridge --------------------------------------------------
tgt = subprocess.Popen([bench, "--mode", "target", "--buffer-size", "4M", "--fill-seed", "11",
                        "--host", kvb_host] + kvb_rdma,
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
line = tgt.stdout.readline()
fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
seg = fields["segment"]
kaddr = int(fields["buffer"], 16)


def target_sum(off, length):
    tgt.stdin.write("sum %d %d\n" % (off, length))
    tgt.stdin.flush()
    return tgt.stdout.readline().split()[-1]


check(eng.get_first_buffer_address(seg) == kaddr,
      "Mooncake parsed kvbridge's segment descriptor (buffer 0x%x)" % kaddr)
data = os.urandom(MB)
put(local, data)
rc = eng.transfer_sync_write(seg, local, kaddr + MB, MB)
check(rc == 0 and target_sum(MB, MB) == hashlib.sha256(data).hexdigest(),
      "Mooncake wrote 1 MiB into kvbridge: bytes identical (rc %d)" % rc)
rc = eng.transfer_sync_read(seg, local, kaddr + 2 * MB, MB)
got = get(local, MB)
check(rc == 0 and hashlib.sha256(got).hexdigest() == target_sum(2 * MB, MB)
      and got == patterns.bench_fill(11, 3 * MB)[2 * MB:],
      "Mooncake read 1 MiB of kvbridge's pattern: bytes identical (rc %d)" % rc)
rc = eng.transfer_sync_write(seg, local, kaddr + 4 * MB - 100, MB)
if proto == "tcp":
    # kvbridge's TCP server checks the whole range before reading a byte
    check(rc != 0 and target_sum(4 * MB - 100, 100) == hashlib.sha256(
        patterns.bench_fill(11, 4 * MB)[4 * MB - 100:]).hexdigest(),
          "a write past kvbridge's buffer is refused and nothing is written (rc %d)" % rc)
else:
    # one-sided RDMA: the target's CPU is not asked, so the engine's own range
    # check is what refuses; the bytes before the write stay untouched
    check(rc != 0 and target_sum(4 * MB - 4096, 3996) == hashlib.sha256(
        patterns.bench_fill(11, 4 * MB)[4 * MB - 4096:4 * MB - 100]).hexdigest(),
          "a write past kvbridge's buffer fails (rc %d) and nothing before it is touched" % rc)
tgt.stdin.close()
tgt.terminate()
tgt.wait()

# ---- kvbridge -> Mooncake --------------------------------------------------
put(local, patterns.bench_fill(21, 4 * MB))
common = [bench, "--host", kvb_host] + kvb_rdma + [
          "-t", "mooncake://%s:%d" % (mc_host, mc_port), "--remote-addr", str(local),
          "--buffer-size", "4M", "-b", "256K", "--count", "16", "--batch", "4", "-q"]
r = subprocess.run(common + ["--op", "read", "--check-pattern", "21"], capture_output=True, text=True)
check(r.returncode == 0 and "verified 4194304 bytes" in r.stdout,
      "kvbridge read 4 MiB from Mooncake: every byte is the engine's (rc %d) %s" % (
          r.returncode, r.stderr.strip()[-200:]))
r = subprocess.run(common + ["--op", "write"], capture_output=True, text=True)
got = get(local, 4 * MB)
check(r.returncode == 0 and got == patterns.bench_fill(7, 4 * MB),
      "kvbridge wrote 4 MiB into Mooncake: every byte landed (rc %d) %s" % (
          r.returncode, r.stderr.strip()[-200:]))
r = subprocess.run([bench, "--host", kvb_host] + kvb_rdma + [
                    "-t", "mooncake://%s:%d" % (mc_host, mc_port), "--remote-addr", "4096",
                    "--buffer-size", "1M", "-b", "64K", "--count", "1", "-q"],
                   capture_output=True, text=True)
check(r.returncode != 0 and ("refused" in r.stderr or "outside" in r.stderr),
      "a kvbridge write outside Mooncake's memory is refused with a reason: %s" % r.stderr.strip()[-160:])

# ---- Mooncake -> kvbridge's GPU memory (emulated) --------------------------
tgt = subprocess.Popen([bench, "--mode", "target", "--buffer-size", "4M", "--fill-seed", "13",
                        "--memory", "emulated", "--host", kvb_host] + kvb_rdma,
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
line = tgt.stdout.readline()
fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
seg = fields["segment"]
kaddr = int(fields["buffer"], 16)
data = os.urandom(MB)
put(local, data)
before = target_sum(MB, MB)
rc = eng.transfer_sync_write(seg, local, kaddr + MB, MB)
after = target_sum(MB, MB)
if proto == "tcp":
    check(rc == 0 and after == hashlib.sha256(data).hexdigest(),
          "Mooncake wrote 1 MiB into kvbridge's GPU memory over TCP: staged to the device, "
          "bytes identical (rc %d)" % rc)
    rc = eng.transfer_sync_read(seg, local, kaddr + 2 * MB, MB)
    check(rc == 0 and get(local, MB) == patterns.bench_fill(13, 3 * MB)[2 * MB:],
          "Mooncake read 1 MiB of kvbridge's GPU memory over TCP: staged from the device (rc %d)" % rc)
else:
    check(rc != 0 and after == before,
          "Mooncake's RDMA write into GPU memory kvbridge's NIC cannot reach fails (rc %d); the "
          "device memory is untouched" % rc)
    put(local, b"\0" * MB)
    rc = eng.transfer_sync_read(seg, local, kaddr + 2 * MB, MB)
    check(rc != 0 and get(local, MB) != patterns.bench_fill(13, 3 * MB)[2 * MB:],
          "Mooncake's RDMA read of that GPU memory fails too (rc %d): no stale mirror bytes" % rc)
tgt.stdin.close()
tgt.terminate()
tgt.wait()


# ---- RDMA: endpoints of a Mooncake peer that died are reclaimed -------------
def target_endpoints():
    tgt.stdin.write("stats\n")
    tgt.stdin.flush()
    f = dict(kv.split("=", 1) for kv in tgt.stdout.readline().split() if "=" in kv)
    return int(f["rdma_endpoints"])


if proto == "rdma":
    import time
    env = dict(os.environ, KVB_RDMA_PEER_PROBE="1")
    tgt = subprocess.Popen([bench, "--mode", "target", "--buffer-size", "4M", "--host", kvb_host]
                           + kvb_rdma, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                           env=env)
    line = tgt.stdout.readline()
    fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    seg = fields["segment"]
    kaddr = int(fields["buffer"], 16)
    put(local, data)
    rc0 = eng.transfer_sync_write(seg, local, kaddr, MB)
    live = target_endpoints()
    w = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "mooncake_writer.py"),
                        mc_host, mc_devs, seg, hex(kaddr + MB)], capture_output=True, text=True)
    both = target_endpoints()
    t0 = time.time()
    left = both
    while time.time() - t0 < 15 and left > live:
        time.sleep(0.5)
        left = target_endpoints()
    took = time.time() - t0
    check(rc0 == 0 and "wrote 0" in w.stdout and both > live and left == live,
          "a Mooncake engine that wrote and died: its endpoints retired %.1f s after it exited "
          "(%d live, %d with it, %d after)" % (took, live, both, left))
    time.sleep(2.5)  # two more probe rounds: the live engine must keep its endpoints
    rc = eng.transfer_sync_write(seg, local, kaddr + 2 * MB, MB)
    check(rc == 0 and target_endpoints() == live and
          target_sum(2 * MB, MB) == hashlib.sha256(data).hexdigest(),
          "the live engine's endpoints survive the probes: it still writes, bytes identical (rc %d)" % rc)
    tgt.stdin.close()
    tgt.terminate()
    tgt.wait()
sys.exit(failed)

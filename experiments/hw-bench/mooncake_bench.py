#!/usr/bin/env python3
"""Mooncake Transfer Engine throughput on loopback, with the real wheel.

Two measurements, both against one Mooncake target process (TCP transport,
P2PHANDSHAKE, a registered host buffer):

  Mooncake -> Mooncake   a second engine in this process writes blocks into
                         the target with batch_transfer_sync_write (BATCH
                         blocks per call) and times each call;
  kvbridge -> Mooncake   (with --kvbridge-bench PATH) kvbridge-bench -t
                         mooncake://127.0.0.1:PORT --remote-addr ADDR writes
                         into the same target buffer.

The two engines are separate processes (the target is this script started
with --serve), so neither side waits on the other's GIL.  For each block size
and each repeat the two measurements run back to back (interleaved), and the
reported figure is the median over the repeats.

Addressing is kvbridge-bench's: a LOCAL_BUFFER-byte source buffer (256 MiB),
block k of the sweep goes from slot k mod (LOCAL_BUFFER / block) to the same
slot of the target's buffer.  GB/s is 1e9 bytes per second.  Latency: for
Mooncake, of one batch call (BATCH blocks, all in flight, the call returns
when the last completes); for kvbridge-bench, of one request with BATCH in
flight.

CSV (appended, one row per block size, the median run of --repeat):
  --csv FILE      block_bytes,GBps,p50_us,p99_us,batch,ops
  --kvb-csv FILE  kvbridge-bench's own columns
                  (op,block_bytes,batch,threads,nics,ops,GBps,p50_us,p99_us,socket_GBps,ratio)

Environment: MC_FORCE_TCP=1 and MC_LOG_LEVEL=WARNING unless set; any other
MC_* variable reaches both engines (e.g. MC_TCP_LANES_PER_PEER=1: one
connection per peer; the 0.3.13 wheel's client keeps a pool of 4 lanes, i.e.
4 connections, per peer by default, and MC_TCP_ENABLE_CONNECTION_POOL=0
makes it open one connection per request).
"""
import argparse
import csv
import ctypes
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("MC_FORCE_TCP", "1")
os.environ.setdefault("MC_LOG_LEVEL", "WARNING")

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
CSV_COLS = ["block_bytes", "GBps", "p50_us", "p99_us", "batch", "ops"]


def parse_size(s):
    s = s.strip()
    mul = 1
    for suf, m in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB), ("G", GIB), ("M", MIB), ("K", KIB),
                   ("g", GIB), ("m", MIB), ("k", KIB)):
        if s.endswith(suf):
            s, mul = s[: -len(suf)], m
            break
    v = int(float(s) * mul)
    if v <= 0:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return v


def parse_sizes(s):
    try:
        return [parse_size(p) for p in s.split(",") if p.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError("expected sizes like 64K,1M,64M: %s" % e)


def label(b):
    return "%dM" % (b // MIB) if b >= MIB else "%dK" % (b // KIB)


def log(msg):
    print("mooncake_bench: " + msg, file=sys.stderr, flush=True)


def new_engine():
    from mooncake.engine import TransferEngine
    eng = TransferEngine()
    rc = eng.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
    if rc != 0:
        raise SystemExit("mooncake_bench: TransferEngine.initialize failed (rc %d)" % rc)
    return eng


def host_buffer(eng, size, byte):
    """An anonymous mapping, touched (as kvbridge-bench fills its buffers) and
    registered with the engine; returns (mapping, address)."""
    m = mmap.mmap(-1, size)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    ctypes.memset(addr, byte, size)
    rc = eng.register_memory(addr, size)
    if rc != 0:
        raise SystemExit("mooncake_bench: register_memory(%d bytes) failed (rc %d)" % (size, rc))
    return m, addr


def serve(args):
    """Target: register a buffer, print where it is, serve until stdin closes."""
    eng = new_engine()
    _m, addr = host_buffer(eng, args.target_buffer, 1)
    print("ready port=%d addr=%d size=%d" % (eng.get_rpc_port(), addr, args.target_buffer), flush=True)
    for _ in sys.stdin:
        pass
    return 0


class Target:
    def __init__(self, args, logpath):
        self.log = open(logpath, "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", "--target-buffer", str(args.target_buffer)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.close()
            raise SystemExit("mooncake_bench: the Mooncake target did not start (log: %s)" % logpath)
        f = dict(kv.split("=", 1) for kv in line.split()[1:])
        self.port, self.addr, self.size = int(f["port"]), int(f["addr"]), int(f["size"])
        self.segment = "127.0.0.1:%d" % self.port

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def pct(sorted_v, q):
    return sorted_v[min(len(sorted_v) - 1, int(len(sorted_v) * q))]


def mooncake_point(eng, write, tgt, laddr, args, block):
    """One measurement: batch calls for --duration seconds (at least
    --min-calls calls).  Returns dict GBps, p50_us, p99_us, ops."""
    nslots = max(1, args.local_buffer // block)
    B = args.batch
    lens = [block] * B
    lat = []
    slot = 0
    t0 = time.perf_counter()
    end = t0 + args.duration
    while True:
        locs = [laddr + ((slot + k) % nslots) * block for k in range(B)]
        rems = [tgt.addr + ((slot + k) % nslots) * block for k in range(B)]
        s = time.perf_counter()
        rc = write(tgt.segment, locs, rems, lens)
        e = time.perf_counter()
        if rc != 0:
            raise RuntimeError("transfer of %d x %d bytes failed (rc %d)" % (B, block, rc))
        lat.append(e - s)
        slot += B
        if e >= end and len(lat) >= args.min_calls:
            break
    elapsed = time.perf_counter() - t0
    lat.sort()
    return {"GBps": slot * block / elapsed / 1e9, "p50_us": pct(lat, 0.5) * 1e6,
            "p99_us": pct(lat, 0.99) * 1e6, "ops": slot}


def kvbridge_point(args, tgt, block, tmpdir):
    """One kvbridge-bench run against the Mooncake target; returns its CSV row."""
    path = os.path.join(tmpdir, "kvb-%d.csv" % block)
    if os.path.exists(path):
        os.unlink(path)
    cmd = [args.kvbridge_bench, "-t", "mooncake://127.0.0.1:%d" % tgt.port, "--remote-addr", str(tgt.addr),
           "--buffer-size", str(args.local_buffer), "-b", str(block), "-B", str(args.batch),
           "-d", str(args.duration), "-r", "1", "--csv", path, "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(path):
        raise RuntimeError("kvbridge-bench failed (rc %d): %s\n  command: %s"
                           % (r.returncode, r.stderr.strip()[-400:], " ".join(cmd)))
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return rows[-1]


def median_run(runs, key):
    """The run whose rate is the median (upper median for an even count, as
    kvbridge-bench does)."""
    s = sorted(runs, key=lambda r: float(r[key]))
    return s[len(s) // 2]


def append_csv(path, cols, rows):
    fresh = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        if fresh:
            w.writeheader()
        w.writerows(rows)


def main():
    ap = argparse.ArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__,
        epilog="Example: mooncake_bench.py --repeat 3 --csv mooncake.csv "
               "--kvbridge-bench build/main/src/tools/kvbridge-bench --kvb-csv kvb_to_mooncake.csv")
    ap.add_argument("-b", "--block-sizes", type=parse_sizes, default=parse_sizes("64K,256K,1M,4M,16M,64M"),
                    help="comma list of block sizes (default 64K,256K,1M,4M,16M,64M)")
    ap.add_argument("-B", "--batch", type=int, default=16,
                    help="blocks per batch_transfer_sync_write call, and kvbridge-bench's requests in "
                         "flight (default 16)")
    ap.add_argument("-d", "--duration", type=float, default=1.0, help="seconds per block size and run (default 1)")
    ap.add_argument("--min-calls", type=int, default=3, help="Mooncake: at least this many batch calls per run (default 3)")
    ap.add_argument("-r", "--repeat", type=int, default=3, help="runs per size, report the median (default 3)")
    ap.add_argument("--local-buffer", type=parse_size, default=256 * MIB,
                    help="initiator buffer, as kvbridge-bench's default (default 256M)")
    ap.add_argument("--target-buffer", type=parse_size, default=1 * GIB, help="target buffer (default 1G)")
    ap.add_argument("--csv", help="append Mooncake -> Mooncake rows (block_bytes,GBps,p50_us,p99_us,batch,ops)")
    ap.add_argument("--kvbridge-bench", metavar="PATH", help="also run kvbridge-bench -> the Mooncake target")
    ap.add_argument("--kvb-csv", help="append kvbridge -> Mooncake rows (kvbridge-bench's CSV columns)")
    ap.add_argument("--no-mooncake", action="store_true", help="skip Mooncake -> Mooncake (only kvbridge -> Mooncake)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args)
    if args.batch < 1 or args.repeat < 1 or args.duration <= 0:
        ap.error("--batch and --repeat must be >= 1, --duration > 0")
    for b in args.block_sizes:
        if b > args.local_buffer or b > args.target_buffer:
            ap.error("block %d is larger than a buffer" % b)
    if args.local_buffer > args.target_buffer:
        ap.error("--local-buffer must not exceed --target-buffer")
    if args.no_mooncake and not args.kvbridge_bench:
        ap.error("--no-mooncake needs --kvbridge-bench")

    tmpdir = tempfile.mkdtemp(prefix="mooncake_bench.")
    tgt = Target(args, os.path.join(tmpdir, "target.log"))
    try:
        eng = new_engine()
        _lm, laddr = host_buffer(eng, args.local_buffer, 2)
        write = getattr(eng, "batch_transfer_sync_write", None)
        batch_api = write is not None
        if not batch_api:  # older wheels: one block per call
            args.batch = 1
            write = lambda seg, l, r, n: eng.transfer_sync_write(seg, l[0], r[0], n[0])  # noqa: E731
        # the first call opens the segment (P2P handshake): keep it out of the timing
        if not args.no_mooncake:
            rc = write(tgt.segment, [laddr], [tgt.addr], [64 * KIB])
            if rc != 0:
                raise SystemExit("mooncake_bench: warm-up write to %s failed (rc %d)" % (tgt.segment, rc))
        print("mooncake_bench: write, Mooncake TCP transport (wheel %s), target %s, %s, %.1f s per size, "
              "median of %d run(s)%s" % (
                  wheel_version(), tgt.segment,
                  "batch_transfer_sync_write of %d blocks per call" % args.batch if batch_api
                  else "transfer_sync_write, ONE block per call (no batch API in this wheel)",
                  args.duration, args.repeat,
                  "".join(", %s=%s" % (k, v) for k, v in sorted(os.environ.items()) if k.startswith("MC_TCP_"))),
              flush=True)
        hdr = "%8s" % "block"
        if not args.no_mooncake:
            hdr += " %12s %12s %12s" % ("Mooncake GB/s", "p50 us/call", "p99 us/call")
        if args.kvbridge_bench:
            hdr += " %14s %10s %10s" % ("kvb->MC GB/s", "p50 us", "p99 us")
        print(hdr, flush=True)
        mc_rows, kvb_rows = [], []
        for block in args.block_sizes:
            mc_runs, kvb_runs = [], []
            for k in range(args.repeat):
                if not args.no_mooncake:
                    log("Mooncake -> Mooncake %s run %d/%d" % (label(block), k + 1, args.repeat))
                    mc_runs.append(mooncake_point(eng, write, tgt, laddr, args, block))
                if args.kvbridge_bench:
                    log("kvbridge -> Mooncake %s run %d/%d" % (label(block), k + 1, args.repeat))
                    kvb_runs.append(kvbridge_point(args, tgt, block, tmpdir))
            line = "%8s" % label(block)
            if mc_runs:
                m = median_run(mc_runs, "GBps")
                m.update(block_bytes=block, batch=args.batch, ops=sum(r["ops"] for r in mc_runs))
                mc_rows.append(m)
                line += " %12.3f %12.1f %12.1f" % (m["GBps"], m["p50_us"], m["p99_us"])
            if kvb_runs:
                r = median_run(kvb_runs, "GBps")
                kvb_rows.append(r)
                line += " %14.3f %10s %10s" % (float(r["GBps"]), r["p50_us"], r["p99_us"])
            print(line, flush=True)
        if args.csv and mc_rows:
            append_csv(args.csv, CSV_COLS, [
                {"block_bytes": r["block_bytes"], "GBps": "%.4f" % r["GBps"], "p50_us": "%.1f" % r["p50_us"],
                 "p99_us": "%.1f" % r["p99_us"], "batch": r["batch"], "ops": r["ops"]} for r in mc_rows])
        if args.kvb_csv and kvb_rows:
            append_csv(args.kvb_csv, ["op", "block_bytes", "batch", "threads", "nics", "ops", "GBps", "p50_us",
                                      "p99_us", "socket_GBps", "ratio"], kvb_rows)
    except RuntimeError as e:
        log(str(e))
        tgt.close()
        with open(os.path.join(tmpdir, "target.log")) as f:
            tail = f.read()[-1500:]
        if tail.strip():
            log("the Mooncake target's log ends:\n" + tail)
        return 1
    finally:
        tgt.close()
        for f in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, f))
        os.rmdir(tmpdir)
    return 0


def wheel_version():
    try:
        from importlib.metadata import version
        for dist in ("mooncake-transfer-engine-non-cuda", "mooncake-transfer-engine"):
            try:
                return version(dist)
            except Exception:
                pass
    except ImportError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())

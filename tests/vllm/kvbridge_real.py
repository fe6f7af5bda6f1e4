"""kvbridge against real vLLM processes (CPU builds): both sides, both wires, and
the relay between vLLM releases.  TAP on stdout; exit 77 with the reason when vLLM
cannot run here.

Usage: kvbridge_real.py PATH/TO/kvbridge-serve WORKDIR

vLLM 0.32.0 (Gen 2, today's wire) and 0.13.0 (Gen 0), the tiny seeded checkpoint of
make_checkpoint.py in float32 (tests/vllm/README.md), kvbridge-serve laid out as
each release lays out its KV cache on CPU (0.32: one region a layer, 32-token
blocks; 0.13: K and V regions, 16-token blocks).  Checks:

  1. kvbridge P -> real 0.32 D: the bytes in D's memory (read back through
     /proc/PID/mem at the addresses D sent) are kvbridge's pattern, every byte;
  2. real 0.32 P -> kvbridge D: kvbridge's bytes are what P's Mooncake engine
     sent (recorded inside P by sitecustomize.py's capture hook), every byte;
  3. the end-to-end proof: real 0.32 P -> kvbridge relay -> real 0.32 D generates
     the token ids (and top-5 logprobs) of one vLLM instance, and D took the prompt
     from the connector; negative control: a relay that corrupts one block
     changes D's answer;
  4. Gen 0: kvbridge P -> real 0.13 D and real 0.13 P -> kvbridge D, bytes as in
     1 and 2, transfers named by vLLM's internal request ids;
  5. the version bridge: real 0.13 P -> kvbridge relay (16-token split blocks to
     32-token packed ones) -> real 0.32 D, tokens as one 0.32 instance.
"""
import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
import harness as h  # noqa: E402
import patterns  # noqa: E402

SERVE = os.path.abspath(sys.argv[1])
WORK = os.path.abspath(sys.argv[2])
N_PLAN = 13
n = 0
failed = 0


def check(cond, what):
    global n, failed
    n += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (n, what), flush=True)
    if not cond:
        failed = 1
    return cond


def note(msg):
    for line in str(msg).splitlines():
        print("# " + line, flush=True)


class Kvb:
    """One kvbridge-serve process; its stderr (KVB_HW_DEBUG=1) in a log file."""

    def __init__(self, name, args, env=None):
        self.name = name
        self.log_path = os.path.join(WORK, name + ".log")
        e = dict(os.environ, KVB_HW_DEBUG="1")
        e.update(env or {})
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([SERVE, "--http-port", "0", "-v"] + args, stdout=subprocess.PIPE,
                                     stderr=self.log, env=e, text=True)
        line = self.proc.stdout.readline()
        if "ready" not in line:
            self.proc.wait(10)
            raise RuntimeError("kvbridge-serve %s did not start:\n%s" % (name, self.tail()))
        self.fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        self.url = "http://127.0.0.1:%s" % self.fields["http"]
        self.bootstrap_url = "http://127.0.0.1:%s" % self.fields.get("bootstrap", "0")

    def tail(self, k=20):
        try:
            return "\n".join(open(self.log_path, errors="replace").read().splitlines()[-k:])
        except OSError:
            return ""

    def pulls(self):
        """The 'vllm pull:' lines: {transfer: (bases, strides, blocks)}."""
        out = {}
        for line in open(self.log_path, errors="replace"):
            m = re.search(r"vllm pull: request=(\S+) transfer=(\S+) decoder=\S+ bases=(\S+) "
                          r"strides=(\S+) blocks=(\S*)", line)
            if m:
                ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
                out[m.group(2)] = (ints(m.group(3)), ints(m.group(4)), ints(m.group(5)))
        return out

    def stats(self):
        return h.http_json(self.url + "/stats")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def read_mem(pids, addr, length):
    for pid in pids:
        try:
            with open("/proc/%d/maps" % pid) as f:
                hit = any(int(a, 16) <= addr < int(b, 16)
                          for a, b in (line.split()[0].split("-") for line in f))
            if not hit:
                continue
            with open("/proc/%d/mem" % pid, "rb") as f:
                f.seek(addr)
                return f.read(length)
        except OSError:
            continue
    raise RuntimeError("no process of %s maps 0x%x" % (pids, addr))


def token_bytes(layout, r, bt, heads, dim, es, slots):
    """Byte ranges (start, len) of token slots `slots` in a block of region r, in vLLM's
    CPU order (packed: per head K [dim][token] then V [token][dim]; split: K regions
    [head][dim][token], V regions [head][token][dim])."""
    out = []
    for h_ in range(heads):
        for s_ in slots:
            if layout == "packed":
                base = h_ * 2 * bt * dim
                out += [((base + d * bt + s_) * es, es) for d in range(dim)]
                out.append(((base + bt * dim + s_ * dim) * es, dim * es))
            elif r % 2 == 0:
                out += [(((h_ * dim + d) * bt + s_) * es, es) for d in range(dim)]
            else:
                out.append((((h_ * bt + s_) * dim) * es, dim * es))
    return out


def check_pattern_in(server, kb, transfer, layout, bt, regions, tokens):
    """Bytes of transfer in a vLLM decoder's memory (where kb's log says it wanted them)
    against kb's pattern: (bad bytes, bytes).  Token tokens-1 and later are left out: the
    decoder computes the last prompt token itself and writes its KV (and that of every
    token it generates) into the same blocks."""
    pulls = kb.pulls()
    if transfer not in pulls:
        raise RuntimeError("%s never served %s" % (kb.name, transfer))
    bases, strides, blocks = pulls[transfer]
    seed = patterns.request_seed(transfer)
    heads, dim, es = 16, 32, 4
    block_bytes = heads * bt * dim * es * (2 if layout == "packed" else 1)
    bad = total = 0
    for r in range(regions):
        for k, b in enumerate(blocks):
            got = read_mem(server.pids(), bases[r] + b * strides[r], block_bytes)
            # kvbridge-serve's pattern counts a block's position from the last
            want = patterns.block_fill(patterns.block_seed(seed, r, len(blocks) - 1 - k), block_bytes)
            slots = [x for x in range(bt) if k * bt + x < tokens - 1]
            for off, ln in token_bytes(layout, r, bt, heads, dim, es, slots):
                bad += sum(1 for x, y in zip(got[off:off + ln], want[off:off + ln]) if x != y)
                total += ln
    return bad, total


def check_writes_in(capture_dir, dump_prefix):
    """What a producer's engine wrote (its capture) against a kvbridge consumer's dump
    (DUMP.kv, DUMP.json): (bad bytes, bytes compared, writes)."""
    side = json.load(open(dump_prefix + ".json"))
    dump = open(dump_prefix + ".kv", "rb").read()
    regions, blocks = side["regions"], side["blocks"]
    pos = {b: i for i, b in enumerate(blocks)}
    offsets, o = [], 0
    for r in regions:
        offsets.append(o)
        o += r["block_bytes"] * len(blocks)
    bad = total = writes = 0
    for meta in sorted(glob.glob(os.path.join(capture_dir, "*.json"))):
        cap = json.load(open(meta))
        data = open(meta[:-5] + ".bin", "rb").read()
        at = 0
        for src, dst, ln in cap["writes"]:
            src_bytes = data[at:at + ln]
            at += ln
            ri = next((i for i, r in enumerate(regions)
                       if r["base"] <= dst < r["base"] + r["num_blocks"] * r["block_stride"]), None)
            if ri is None:
                continue
            r = regions[ri]
            writes += 1
            # one write may cover a run of consecutive blocks
            done = 0
            while done < ln:
                bi, bo = divmod(dst + done - r["base"], r["block_stride"])
                take = min(ln - done, r["block_stride"] - bo)
                meaningful = max(0, min(take, r["block_bytes"] - bo))
                if bi in pos and meaningful:
                    start = offsets[ri] + pos[bi] * r["block_bytes"] + bo
                    got = dump[start:start + meaningful]
                    want = src_bytes[done:done + meaningful]
                    bad += sum(1 for x, y in zip(got, want) if x != y) + abs(len(got) - len(want))
                    total += meaningful
                done += take
    return bad, total, writes


def main():
    h.stop_on_signals()
    os.makedirs(WORK, exist_ok=True)
    print("1..%d" % N_PLAN, flush=True)
    try:
        h.venv_python("0.32.0")
        h.venv_python("0.13.0")
    except h.Skip as e:
        print("1..0 # SKIP %s" % e)
        return 77
    rng = random.Random(11)
    prompts = [h.random_prompt(rng, k) for k in (40, 100, 300)]
    ck = h.make_checkpoint("0.32.0", os.path.join(WORK, "ck"), seed=1)
    kvbs, servers = [], []
    try:
        return run(ck, prompts, kvbs, servers)
    except (h.StartError, RuntimeError) as e:
        note(e)
        print("Bail out! %s" % str(e).splitlines()[0])
        return 1
    finally:
        for k in kvbs:
            k.stop()
        h.stop_all(servers)


def run(ck, prompts, kvbs, servers):
    t0 = time.monotonic()
    cap32 = os.path.join(WORK, "capture-0.32")
    cap13 = os.path.join(WORK, "capture-0.13")
    for d in (cap32, cap13):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    ref = h.Server("0.32.0", ck, WORK, "ref32")
    p32 = h.Server("0.32.0", ck, WORK, "p32", kv_role="kv_producer", engine_id="p32-engine",
                   env={"KVB_TEST_CAPTURE_DIR": cap32})
    d32 = h.Server("0.32.0", ck, WORK, "d32", kv_role="kv_consumer")
    servers += [ref, p32, d32]
    for s in servers:
        s.start()
    # kvbridge processes start while vLLM loads (seconds, not minutes)
    lay32 = ["--model", ck, "--dtype", "float32", "--block-tokens", "32", "--kv-layout", "packed",
             "--blocks", "128"]
    b = h.free_ports(4)
    kbp = Kvb("kb-p32", ["--role", "producer", "--engine-id", "kb-p32", "--bootstrap-port", str(b[0]),
                         "--lease", "8"] + lay32)
    kvbs.append(kbp)
    dump32 = os.path.join(WORK, "dump-0.32")
    shutil.rmtree(dump32, ignore_errors=True)
    os.makedirs(dump32)
    kbd = Kvb("kb-d32", ["--role", "consumer", "--verify", "none", "--dump-dir", dump32] + lay32)
    kvbs.append(kbd)
    relay = Kvb("relay32", ["--role", "relay", "--upstream", p32.url, "--upstream-bootstrap",
                            p32.bootstrap_url, "--engine-id", "relay32", "--bootstrap-port", str(b[1])]
                + lay32)
    bad_relay = Kvb("bad-relay32", ["--role", "relay", "--upstream", p32.url, "--upstream-bootstrap",
                                    p32.bootstrap_url, "--engine-id", "bad32", "--bootstrap-port",
                                    str(b[2]), "--test-corrupt-block", "0"] + lay32)
    kvbs += [relay, bad_relay]
    ready = [s.wait_ready(400) for s in servers]
    note("vLLM 0.32.0 servers ready in %s s" % ", ".join("%.0f" % x for x in ready))

    # 1. kvbridge P -> real D
    before = h.external_kv_tokens(d32) or 0
    bad = total = 0
    router = h.Gen2Router(kbp.url, kbp.bootstrap_url, d32.url)
    for i, pr in enumerate(prompts):
        rid = "kbp-%d-%d" % (os.getpid(), i)
        try:
            router.complete(pr, 4, rid=rid)
        except h.HTTPError as e:
            # D decoded from pattern bytes: NaN logprobs, which its JSON refuses
            note("D's answer on kvbridge's pattern KV: %s" % str(e)[:160])
        bb, tt = check_pattern_in(d32, kbp, "xfer-" + rid, "packed", 32, 2, len(pr))
        bad += bb
        total += tt
    took = (h.external_kv_tokens(d32) or 0) - before
    check(bad == 0 and total == sum(2 * 2 * 16 * 32 * 4 * (len(pr) - 1) for pr in prompts) and
          took == sum(map(len, prompts)),
          "kvbridge P -> vLLM 0.32 D (gen2): %d bytes of the prompts' KV read back from D's memory, "
          "%d differ from kvbridge's pattern; D took %d of %d prompt tokens from the connector"
          % (total, bad, took, sum(map(len, prompts))))

    # 2. real P -> kvbridge D
    ok = True
    bad = total = writes = 0
    for pr in prompts:
        for f in glob.glob(os.path.join(cap32, "*")):
            os.unlink(f)
        try:
            r = h.Gen2Router(p32.url, p32.bootstrap_url, kbd.url).complete(pr, 4)
        except (h.HTTPError, KeyError) as e:  # kvbridge answers no token ids
            r = e
        dumps = sorted(glob.glob(os.path.join(dump32, "*.kv")), key=os.path.getmtime)
        if not dumps:
            ok = False
            note("no dump after %r" % r)
            continue
        bb, tt, ww = check_writes_in(cap32, dumps[-1][:-3])
        bad, total, writes = bad + bb, total + tt, writes + ww
        os.unlink(dumps[-1])
    want = sum(2 * 131072 * ((len(pr) + 31) // 32) for pr in prompts)
    check(ok and bad == 0 and total == want,
          "vLLM 0.32 P -> kvbridge D (gen2): %d bytes P's engine wrote (%d writes) compared with "
          "kvbridge's memory, %d differ (want %d bytes)" % (total, writes, bad, want))

    # 3. the end-to-end proof, and its negative control
    refs = [h.complete(ref.url, pr, 16) for pr in prompts]
    before = h.external_kv_tokens(d32) or 0
    diffs = []
    for pr, rf in zip(prompts, refs):
        got = h.Gen2Router(relay.url, relay.bootstrap_url, d32.url).complete(pr, 16)
        diffs.append(h.compare(rf, got))
    took = (h.external_kv_tokens(d32) or 0) - before
    check(all(d is None for d in diffs) and took == sum(map(len, prompts)),
          "vLLM 0.32 P -> kvbridge relay -> vLLM 0.32 D: 16 tokens of %d prompts equal one "
          "instance's (top-5 logprobs within 1e-3), %d of %d prompt tokens pulled; %s"
          % (len(prompts), took, sum(map(len, prompts)), [d for d in diffs if d] or "no difference"))
    changed = 0
    for pr, rf in zip(prompts, refs):
        got = h.Gen2Router(bad_relay.url, bad_relay.bootstrap_url, d32.url).complete(pr, 16)
        changed += h.compare(rf, got) is not None
    check(changed == len(prompts),
          "negative control: a relay that corrupts the first block changes D's answer for %d of %d "
          "prompts" % (changed, len(prompts)))
    s = relay.stats()
    check(s["connector"]["blocks_held"] == 0 and s["pool"]["free"] == s["pool"]["blocks"],
          "the relay holds nothing afterwards (blocks_held %d, %d of %d blocks free)"
          % (s["connector"]["blocks_held"], s["pool"]["free"], s["pool"]["blocks"]))
    note("0.32.0 checks done at %.0f s" % (time.monotonic() - t0))

    # Gen 0 with vLLM 0.13.0; the 0.32 producer is no longer needed
    h.stop_all([p32])
    servers.remove(p32)
    sp = h.free_ports(3)
    p13 = h.Server("0.13.0", ck, WORK, "p13", kv_role="kv_producer", bootstrap_port=sp[0],
                   env={"KVB_TEST_CAPTURE_DIR": cap13})
    d13 = h.Server("0.13.0", ck, WORK, "d13", kv_role="kv_consumer", bootstrap_port=sp[1])
    servers += [p13, d13]
    for s in (p13, d13):
        s.start()
    lay13 = ["--model", ck, "--dtype", "float32", "--block-tokens", "16", "--kv-layout", "split",
             "--blocks", "256"]
    kbp0 = Kvb("kb-p13", ["--vllm-protocol", "gen0", "--role", "producer"] + lay13,
               env={"VLLM_MOONCAKE_BOOTSTRAP_PORT": str(sp[2])})
    dump13 = os.path.join(WORK, "dump-0.13")
    shutil.rmtree(dump13, ignore_errors=True)
    os.makedirs(dump13)
    kbd0 = Kvb("kb-d13", ["--vllm-protocol", "gen0", "--role", "consumer", "--pull-protocol", "vllm",
                          "--verify", "none", "--dump-dir", dump13] + lay13)
    bridge = Kvb("bridge", ["--role", "relay", "--upstream", p13.url, "--upstream-protocol", "gen0",
                            "--upstream-kv-layout", "split", "--upstream-block-tokens", "16",
                            "--engine-id", "bridge", "--bootstrap-port", str(b[3])] + lay32)
    kvbs += [kbp0, kbd0, bridge]
    ready = [s.wait_ready(400) for s in (p13, d13)]
    note("vLLM 0.13.0 servers ready in %s s" % ", ".join("%.0f" % x for x in ready))

    # 4a. kvbridge P (gen0) -> real 0.13 D
    bad = total = 0
    names = []
    router0 = h.Gen0Router(kbp0.url, d13.url)
    for i, pr in enumerate(prompts):
        rid = "kbp0-%d-%d" % (os.getpid(), i)
        try:
            router0.complete(pr, 4, rid=rid)
        except (h.HTTPError, KeyError) as e:
            note("D's answer on kvbridge's pattern KV: %s" % str(e)[:160])
        names.append("cmpl-%s-0" % rid)
        bb, tt = check_pattern_in(d13, kbp0, names[-1], "split", 16, 4, len(pr))
        bad += bb
        total += tt
    check(bad == 0 and total == sum(2 * 2 * 16 * 32 * 4 * (len(pr) - 1) for pr in prompts),
          "kvbridge P -> vLLM 0.13 D (gen0, transfers named %s...): %d bytes of the prompts' KV "
          "read back from D's memory, %d differ from kvbridge's pattern" % (names[0][:14], total, bad))

    # 4b. real 0.13 P -> kvbridge D (gen0)
    ok = True
    bad = total = writes = 0
    for pr in prompts:
        for f in glob.glob(os.path.join(cap13, "*")):
            os.unlink(f)
        try:
            h.Gen0Router(p13.url, kbd0.url).complete(pr, 4)
        except (h.HTTPError, KeyError):
            pass
        dumps = sorted(glob.glob(os.path.join(dump13, "*.kv")), key=os.path.getmtime)
        if not dumps:
            ok = False
            continue
        bb, tt, ww = check_writes_in(cap13, dumps[-1][:-3])
        bad, total, writes = bad + bb, total + tt, writes + ww
        os.unlink(dumps[-1])
    want = sum(4 * 32768 * ((len(pr) + 15) // 16) for pr in prompts)
    check(ok and bad == 0 and total == want,
          "vLLM 0.13 P -> kvbridge D (gen0): %d bytes P's engine wrote (%d writes) compared with "
          "kvbridge's memory, %d differ (want %d bytes)" % (total, writes, bad, want))

    # 5. the version bridge: 0.13 P -> kvbridge -> 0.32 D, tokens as one 0.32 instance
    diffs = []
    before = h.external_kv_tokens(d32) or 0
    for pr, rf in zip(prompts, refs):
        got = h.Gen2Router(bridge.url, bridge.bootstrap_url, d32.url).complete(pr, 16)
        diffs.append(h.compare(rf, got))
    took = (h.external_kv_tokens(d32) or 0) - before
    check(all(d is None for d in diffs) and took == sum(map(len, prompts)),
          "vLLM 0.13 P (gen0) -> kvbridge relay (16-token split to 32-token packed) -> vLLM 0.32 D "
          "(gen2): 16 tokens of %d prompts equal one 0.32 instance's, %d prompt tokens pulled; %s"
          % (len(prompts), took, [d for d in diffs if d] or "no difference"))
    s = bridge.stats()
    check(s["connector"]["blocks_held"] == 0,
          "the bridge holds nothing afterwards (blocks_held %d)" % s["connector"]["blocks_held"])

    # bad input, with real peers: each gets an error in its own framing, promptly, and
    # everyone keeps serving
    rng = random.Random(5)
    pr = h.random_prompt(rng, 50)

    def d_leg(d, boot, engine, tid, timeout=60):
        t = time.monotonic()
        try:
            h.complete(d.url, pr, 4, {"do_remote_decode": False, "do_remote_prefill": True,
                                      "remote_bootstrap_addr": boot, "remote_engine_id": engine,
                                      "transfer_id": tid}, {"X-Request-Id": tid}, timeout)
            return None, time.monotonic() - t
        except h.HTTPError as e:
            return e.status, time.monotonic() - t

    # a 0.32 decoder sent to kvbridge's Gen 0 port (registered there by hand)
    h.http_json(kbp.bootstrap_url + "/register",
                {"engine_id": "wrong-gen", "dp_rank": 1, "tp_rank": 0, "pp_rank": 0,
                 "addr": "tcp://127.0.0.1:%d" % sp[2]})
    st, took = d_leg(d32, kbp.bootstrap_url, "wrong-gen", "xfer-wrong-gen")
    wrong = kbp0.stats()["hw"]["vllm_wrong_generation"]
    check(st is not None and st >= 400 and took < 20 and wrong >= 1,
          "a vLLM 0.32 D on kvbridge's Gen 0 port: kvbridge answered in Gen 2's framing "
          "(%d wrong-generation peers), D failed the request in %.1f s (HTTP %s)" % (wrong, took, st))
    # a transfer the producer never gets: vLLM's timeout reply, D fails it, keeps serving
    st, took = d_leg(d32, kbp.bootstrap_url, "kb-p32", "xfer-never-prefilled")
    relay.stop()  # the 0.32 P is gone; a relay that still answers proves nothing here
    kvbs.remove(relay)
    check(st is not None and st >= 500 and 6 < took < 30 and "Timeout waiting for P side ready" in
          open(kbp.log_path, errors="replace").read() + open(d32.log_path, errors="replace").read(),
          "a D asking kvbridge for a transfer that never comes: vLLM's 'Timeout waiting for P side "
          "ready.' after the 8 s lease, D failed the request in %.1f s (HTTP %s)" % (took, st))
    # a producer whose layout is not the decoder's: ERROR, which a real D decodes and reports
    bad = Kvb("kb-wrong-layout", ["--role", "producer", "--engine-id", "wrong-layout", "--bootstrap-port",
                                  str(h.free_port()), "--blocks", "64"])
    kvbs.append(bad)
    t = time.monotonic()
    try:
        h.Gen2Router(bad.url, bad.bootstrap_url, d32.url).complete(pr, 4)
        st = None
    except h.HTTPError as e:
        st = e.status
    took = time.monotonic() - t
    check(st is not None and st >= 500 and took < 20 and
          "no matching consumer occurrence" in open(bad.log_path, errors="replace").read(),
          "a kvbridge producer with another model's layout: ERROR with vLLM's pairing words, the "
          "0.32 D failed the request in %.1f s (HTTP %s)" % (took, st))
    # the decoder vanishes while kvbridge waits to write: the lease frees the blocks and
    # kvbridge keeps serving (here a kvbridge consumer)
    import threading
    def doomed_leg():
        try:
            d_leg(d32, kbp.bootstrap_url, "kb-p32", "xfer-vanish", 30)
        except OSError:
            pass  # the decoder is killed under it

    th = threading.Thread(target=doomed_leg, daemon=True)
    th.start()
    time.sleep(2)
    h.stop_all([d32])
    servers.remove(d32)
    try:
        h.complete(kbp.url, pr, 1, {"do_remote_decode": True, "do_remote_prefill": False,
                                    "transfer_id": "xfer-vanish"}, {"X-Request-Id": "vanish"})
    except (h.HTTPError, KeyError):
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = kbp.stats()
        if st["connector"]["blocks_held"] == 0 and st["requests"]["producer_live"] == 0:
            break
        time.sleep(0.5)
    held = st["connector"]["blocks_held"]
    try:
        h.Gen2Router(kbp.url, kbp.bootstrap_url, kbd.url).complete(pr, 4, rid="after-vanish")
    except (h.HTTPError, KeyError):
        pass
    dumps = glob.glob(os.path.join(dump32, "*.kv"))
    after_ok = False
    if dumps:
        data = open(dumps[-1], "rb").read()
        seed = patterns.request_seed("xfer-after-vanish")
        nb = (len(pr) + 31) // 32
        after_ok = all(data[(r * nb + k) * 131072:(r * nb + k + 1) * 131072] ==
                       patterns.block_fill(patterns.block_seed(seed, r, nb - 1 - k), 131072)
                       for r in range(2) for k in range(nb))
    check(held == 0 and after_ok,
          "a vLLM D killed while kvbridge waited to write into it: kvbridge freed the blocks "
          "(held %d) and its next request to another decoder arrived intact" % held)
    note("all checks done at %.0f s" % (time.monotonic() - t0))
    return failed


if __name__ == "__main__":
    sys.exit(main())

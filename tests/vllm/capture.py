"""Capture real MooncakeConnector wire bytes from stock vLLM, for the fixtures in
tests/vllm/captures/ (see its README.md), and read the KV layout each release
registers on CPU from a live decoder's memory.

Usage (root, tcpdump installed, the venvs from install.sh; not part of CI):
    build/vllm/venv-0.32.0/bin/python tests/vllm/capture.py OUTDIR [--work DIR]

0.32.0 (Gen 2): a stock P (kv_producer) and D (kv_consumer) behind the Gen 2 router
contract, tcpdump on loopback: P's POST /register, D's GET /query, both completion
legs, and the ZMTP streams of the D -> P session, from which the MooncakeXferMetadata
frame and the MooncakeXferResponse frames are cut.  Then, from a DEALER here, requests
P must refuse (not msgpack, a Gen 1 flat block list, unknown layer names, an unpaired
TP rank) and one for a transfer_id P never gets (answered after the abort timeout),
and bootstrap registrations P must refuse (400, 422).
0.13.0 (Gen 0): a stock pair behind the sequential toy-proxy contract: P's
kv_transfer_params, the MooncakeAgentMetadata frame D's REQ sends, the reply; and what
P answers a request id it does not know, and bytes that are not msgpack.

Layout: after a request, the D worker's KV blocks are read through /proc/PID/mem at
the addresses D sent P, and matched against layer 0's K and V computed here with
numpy from the checkpoint (V has no RoPE, K has it): which bytes of a block hold
which head, token, K or V.
"""
import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid

import msgpack
import numpy as np
import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import make_checkpoint as mk  # noqa: E402

PROMPT_LENS = (40, 300)


# ---------------------------------------------------------------- pcap, TCP, ZMTP

class Tcpdump:
    def __init__(self, path, ports):
        self.path = path
        flt = "tcp and (" + " or ".join("port %d" % p for p in ports) + ")"
        self.proc = subprocess.Popen(["tcpdump", "-i", "lo", "-s", "0", "-U", "--immediate-mode",
                                      "-w", path, flt],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = self.proc.stderr.readline()  # "listening on lo ..."
        if b"listening" not in line:
            raise RuntimeError("tcpdump: %s" % line)

    def stop(self):
        time.sleep(0.5)
        self.proc.terminate()
        self.proc.wait()


def read_pcap(path):
    """TCP streams: {(src_port, dst_port, syn_time): bytes} in sequence order."""
    with open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack("<I", data[:4])
    e = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype, = struct.unpack(e + "I", data[20:24])
    skip = {1: 14, 113: 16, 276: 20, 0: 4}[linktype]
    off = 24
    segs = {}
    while off + 16 <= len(data):
        ts, tu, incl, _ = struct.unpack(e + "IIII", data[off:off + 16])
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        ip = pkt[skip:]
        if not ip or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 15) * 4
        tot, = struct.unpack("!H", ip[2:4])
        tcp = ip[ihl:tot]
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        flags = tcp[13]
        doff = (tcp[12] >> 4) * 4
        key = (sport, dport)
        st = segs.setdefault(key, {"isn": None, "parts": {}, "t": ts + tu / 1e6})
        if flags & 0x02:  # SYN
            st["isn"] = seq + 1
            continue
        payload = tcp[doff:]
        if payload:
            st["parts"].setdefault(seq, payload)
    out = {}
    for key, st in segs.items():
        if not st["parts"]:
            continue
        base = st["isn"] if st["isn"] is not None else min(st["parts"])
        buf = bytearray()
        for seq in sorted(st["parts"], key=lambda s: (s - base) & 0xFFFFFFFF):
            rel = (seq - base) & 0xFFFFFFFF
            p = st["parts"][seq]
            if rel + len(p) <= len(buf):
                continue
            buf += p[len(buf) - rel:] if rel < len(buf) else p
        out[key] = (st["t"], bytes(buf))
    return out


def conns(streams, server_port):
    """[(t, client_port, client->server bytes, server->client bytes)] for a server port."""
    out = []
    for (sp, dp), (t, b) in streams.items():
        if dp == server_port:
            back = streams.get((dp, sp), (0, b""))[1]
            out.append((t, sp, b, back))
    return sorted(out)


def http_messages(stream):
    """Split an HTTP/1.1 byte stream into messages (Content-Length or chunked)."""
    msgs = []
    i = 0
    while i < len(stream):
        j = stream.find(b"\r\n\r\n", i)
        if j < 0:
            msgs.append(stream[i:])
            break
        head = stream[i:j + 4]
        n = 0
        k = j + 4
        low = head.lower()
        if b"transfer-encoding: chunked" in low:
            while True:
                e = stream.index(b"\r\n", k)
                size = int(stream[k:e].split(b";")[0], 16)
                k = e + 2 + size + 2
                if size == 0:
                    break
        else:
            for line in low.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            k = j + 4 + n
        msgs.append(stream[i:k])
        i = k
    return msgs


def http_body(msg):
    head, _, body = msg.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        out, k = b"", 0
        while True:
            e = body.index(b"\r\n", k)
            size = int(body[k:e].split(b";")[0], 16)
            out += body[e + 2:e + 2 + size]
            k = e + 2 + size + 2
            if size == 0:
                return out
    return body


def zmtp_frames(stream):
    """ZMTP 3.x: (greeting, [(is_command, more, body)])."""
    if len(stream) < 64 or stream[0] != 0xFF or stream[9] != 0x7F:
        raise ValueError("not a ZMTP 3 greeting: %r" % stream[:16])
    out = []
    i = 64
    while i < len(stream):
        flags = stream[i]
        if flags & 2:
            size, = struct.unpack("!Q", stream[i + 1:i + 9])
            i += 9
        else:
            size = stream[i + 1]
            i += 2
        out.append((bool(flags & 4), bool(flags & 1), stream[i:i + size]))
        i += size
    return stream[:64], out


def messages(frames):
    """Group non-command frames into multipart messages."""
    msgs, cur = [], []
    for cmd, more, body in frames:
        if cmd:
            continue
        cur.append(body)
        if not more:
            msgs.append(cur)
            cur = []
    return msgs


# ---------------------------------------------------------------- helpers

class Out:
    def __init__(self, root):
        self.root = root
        self.decoded = {}
        os.makedirs(root, exist_ok=True)

    def write(self, name, data, decoded=None):
        with open(os.path.join(self.root, name), "wb") as f:
            f.write(data)
        if decoded is not None:
            self.decoded[name] = decoded
        print("  %-52s %6d bytes" % (name, len(data)), flush=True)

    def msgpack(self, name, data):
        self.write(name, data, unpack(data))

    def finish(self):
        with open(os.path.join(self.root, "decoded.json"), "w") as f:
            json.dump(self.decoded, f, indent=1, sort_keys=True, default=repr)
            f.write("\n")


def unpack(data):
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:
        return {"not msgpack": str(e), "bytes": data.hex()}


def raw_http(port, request, timeout=10):
    """Send request bytes, read the whole reply (Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        buf = b""
        while True:
            b = s.recv(65536)
            if not b:
                return buf
            buf += b


def post(path, body, ctype="application/json"):
    return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (path.encode(), ctype.encode(), len(body))
            + body)


def dealer_request(addr, payload, timeout_s):
    """One DEALER session to a P ROUTER: send payload, collect replies to FINISH/ERROR."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    s.connect(addr)
    s.send(payload)
    replies = []
    t0 = time.monotonic()
    try:
        while True:
            r = s.recv()
            replies.append((time.monotonic() - t0, r))
            if unpack(r).get("status") in (0, 2):
                break
    except zmq.Again:
        pass
    finally:
        s.close()
    return replies


def req_request(addr, payload, timeout_s=10):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    s.connect(addr)
    try:
        s.send(payload)
        return s.recv()
    except zmq.Again:
        return None
    finally:
        s.close()


# ---------------------------------------------------------------- layout

def load_checkpoint(path):
    with open(os.path.join(path, "model.safetensors"), "rb") as f:
        data = f.read()
    n, = struct.unpack("<Q", data[:8])
    hdr = json.loads(data[8:8 + n])
    out = {}
    for name, meta in hdr.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        u = np.frombuffer(data[8 + n + a:8 + n + b], dtype="<u2").astype(np.uint32) << 16
        out[name] = u.view(np.float32).reshape(meta["shape"])
    return out


def layer0_kv(ckpt, ids):
    """Layer 0's K (after RoPE) and V for prompt ids: two [tokens, kv_heads, head_dim]."""
    w = load_checkpoint(ckpt)
    x = w["model.embed_tokens.weight"][ids].astype(np.float64)
    hs = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w["model.layers.0.input_layernorm.weight"]
    p = "model.layers.0.self_attn."
    k = hs @ w[p + "k_proj.weight"].T.astype(np.float64) + w[p + "k_proj.bias"]
    v = hs @ w[p + "v_proj.weight"].T.astype(np.float64) + w[p + "v_proj.bias"]
    k = k.reshape(len(ids), mk.KV_HEADS, mk.HEAD_DIM)
    v = v.reshape(len(ids), mk.KV_HEADS, mk.HEAD_DIM)
    half = mk.HEAD_DIM // 2
    inv = 1.0 / (10000.0 ** (np.arange(0, mk.HEAD_DIM, 2) / mk.HEAD_DIM))
    ang = np.arange(len(ids))[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    k1, k2 = k[..., :half], k[..., half:]
    k = np.concatenate([k1 * cos - k2 * sin, k2 * cos + k1 * sin], -1)
    return k, v


def read_mem(pids, addr, n):
    for pid in pids:
        try:
            with open("/proc/%d/maps" % pid) as f:
                hit = any(int(a, 16) <= addr < int(b, 16)
                          for a, b in (line.split()[0].split("-") for line in f))
            if not hit:
                continue
            with open("/proc/%d/mem" % pid, "rb") as f:
                f.seek(addr)
                return pid, f.read(n)
        except OSError:
            continue
    raise RuntimeError("no process of %s maps 0x%x" % (pids, addr))


# candidate in-block orders: name -> function(block floats, tokens, heads, dim) -> (K, V)
# as [tokens, heads, dim]
def _cands(bs, heads, dim):
    def hkvtd(a):   # [head][K tokens | V tokens][dim]
        a = a.reshape(heads, 2, bs, dim)
        return a[:, 0].transpose(1, 0, 2), a[:, 1].transpose(1, 0, 2)

    def htkv(a):    # [head][token][K dim | V dim]
        a = a.reshape(heads, bs, 2, dim)
        return a[:, :, 0].transpose(1, 0, 2), a[:, :, 1].transpose(1, 0, 2)

    def kvhtd(a):   # [K | V][head][token][dim]
        a = a.reshape(2, heads, bs, dim)
        return a[0].transpose(1, 0, 2), a[1].transpose(1, 0, 2)

    def thkv(a):    # [token][head][K dim | V dim]
        a = a.reshape(bs, heads, 2, dim)
        return a[:, :, 0], a[:, :, 1]

    def hkdtvtd(a):  # [head][K as dim x token, then V as token x dim]
        a = a.reshape(heads, 2, bs * dim)
        k = a[:, 0].reshape(heads, dim, bs).transpose(2, 0, 1)
        v = a[:, 1].reshape(heads, bs, dim).transpose(1, 0, 2)
        return k, v

    def htd(a):     # one of K or V: [head][token][dim]
        a = a.reshape(heads, bs, dim).transpose(1, 0, 2)
        return a, a

    def hdt(a):     # one of K or V: [head][dim][token]
        a = a.reshape(heads, dim, bs).transpose(2, 0, 1)
        return a, a

    def thd(a):     # one of K or V: [token][head][dim]
        a = a.reshape(bs, heads, dim)
        return a, a
    return {"[head][K dim x token, then V token x dim]": hkdtvtd,
            "[head][K tokens, then V tokens][dim]": hkvtd, "[head][token][K dim, V dim]": htkv,
            "[K, V][head][token][dim]": kvhtd, "[token][head][K dim, V dim]": thkv,
            "[head][token][dim]": htd, "[head][dim][token]": hdt, "[token][head][dim]": thd}


def match_layout(blob, bs, k_ref, v_ref, tokens):
    """Which candidate order puts layer 0's K and V where they are (max abs error)."""
    a = np.frombuffer(blob, dtype=np.float32).astype(np.float64)
    res = {}
    for name, f in _cands(bs, mk.KV_HEADS, mk.HEAD_DIM).items():
        try:
            k, v = f(a)
        except ValueError:
            continue
        res[name] = (float(np.abs(k[:tokens] - k_ref[:tokens]).max()),
                     float(np.abs(v[:tokens] - v_ref[:tokens]).max()))
    return res


# ---------------------------------------------------------------- 0.32.0

def gen2(out_root, work):
    R = "0.32.0"
    out = Out(os.path.join(out_root, R))
    ck = h.make_checkpoint(R, os.path.join(work, "ckpt-seed1"), 1)
    p = h.Server(R, ck, work, "p", kv_role="kv_producer", abort_timeout=5)
    d = h.Server(R, ck, work, "d", kv_role="kv_consumer")
    pc1 = os.path.join(work, "http.pcap")
    td = Tcpdump(pc1, [p.bootstrap_port, p.port, d.port])
    td2 = None
    facts = {}
    try:
        h.start_all([p, d])
        q = h.http_json(p.bootstrap_url + "/query")
        router_addr = q["0"]["worker_addr"]["0"]["0"]
        router_port = int(router_addr.rsplit(":", 1)[1])
        pc2 = os.path.join(work, "zmtp.pcap")
        td2 = Tcpdump(pc2, [router_port])
        rt = h.Gen2Router(p.url, p.bootstrap_url, d.url)
        import random
        rng = random.Random(40)
        prompts = {n: h.random_prompt(rng, n) for n in PROMPT_LENS}
        for i, (n, ids) in enumerate(prompts.items()):
            rt.complete(ids, 4)
            time.sleep(0.5)
            # this request's D -> P session is the newest in the pcap (tcpdump
            # --immediate-mode); read D's blocks now, before another request reuses them
            sess = conns(read_pcap(pc2), router_port)
            assert len(sess) == i + 1, "%d D -> P sessions after %d requests" % (len(sess), i + 1)
            c2s = sess[-1][2]
            meta = unpack(messages(zmtp_frames(c2s)[1])[0][0])
            facts["meta-%d" % n] = meta
            (dreq, (tid, groups)), = meta["req_blocks"].items()
            li = meta["registered_layer_names"].index("model.layers.0.self_attn.attn")
            base, blen = meta["kv_caches_base_addr"][li], meta["block_lens"][li]
            pid, blob = read_mem(d.pids(), base + groups[0][0] * blen, blen)
            k_ref, v_ref = layer0_kv(ck, ids)
            facts["layout-%d" % n] = match_layout(blob, d.block_size, k_ref, v_ref, min(n, d.block_size))
        td2.stop()
        td2 = None
        sessions = []
        for t, cport, c2s, s2c in conns(read_pcap(pc2), router_port):
            g1, f1 = zmtp_frames(c2s)
            g2, f2 = zmtp_frames(s2c)
            sessions.append((c2s, s2c, messages(f1), messages(f2), f1, f2))
        if len(sessions) != len(PROMPT_LENS):
            raise RuntimeError("%d D -> P sessions captured, want %d" % (len(sessions), len(PROMPT_LENS)))
        for n, (c2s, s2c, m1, m2, f1, f2) in zip(PROMPT_LENS, sessions):
            assert len(m1) == 1 and len(m1[0]) == 1, m1
            out.msgpack("xfer-metadata-%dtok.msgpack" % n, m1[0][0])
            for i, m in enumerate(m2):
                assert len(m) == 1, m
                out.msgpack("xfer-response-%dtok-%d.msgpack" % (n, i), m[0])
            if n == PROMPT_LENS[0]:
                out.write("zmtp-d-to-p.bin", c2s, [("command" if c else "message", more, b.hex())
                                                   for c, more, b in f1])
                out.write("zmtp-p-to-d.bin", s2c, [("command" if c else "message", more, b.hex())
                                                   for c, more, b in f2])

        # refusals and the timeout, from a DEALER here
        good = unpack(out_bytes(out, "xfer-metadata-%dtok.msgpack" % PROMPT_LENS[0]))
        cases = []
        cases.append(("error-not-msgpack", b"\xc1 this is not msgpack"))
        m = json.loads(json.dumps(good))
        (dreq, (tid, groups)), = m["req_blocks"].items()
        m["req_blocks"] = {dreq: [tid, groups[0]]}
        cases.append(("error-flat-block-list", msgpack.packb(m)))
        m = json.loads(json.dumps(good))
        m["registered_layer_names"] = ["model.layers.%d.attn" % i for i in range(len(m["registered_layer_names"]))]
        cases.append(("error-unknown-layer-names", msgpack.packb(m)))
        m = json.loads(json.dumps(good))
        m["remote_tp_rank"] = 1
        cases.append(("error-unpaired-tp-rank", msgpack.packb(m)))
        m = json.loads(json.dumps(good))
        rid = "cmpl-capture-%s-0" % uuid.uuid4().hex[:8]
        m["req_blocks"] = {rid: ["xfer-never-sent-to-p", [[7, 8]]]}
        cases.append(("timeout-unknown-transfer-id", msgpack.packb(m)))
        for name, payload in cases:
            replies = dealer_request(router_addr, payload, 15)
            out.write("xfer-request-%s.bin" % name, payload, unpack(payload))
            for i, (dt, rep) in enumerate(replies):
                out.msgpack("xfer-response-%s-%d.msgpack" % (name, i), rep)
                facts["reply-%s-%d" % (name, i)] = "%.1f s" % dt
            if not replies:
                facts["reply-%s" % name] = "no reply in 15 s"

        # bootstrap refusals
        reg = json.loads(http_body(
            http_messages(conns(read_pcap(pc1), p.bootstrap_port)[0][2])[0]))
        bport = p.bootstrap_port
        tries = [
            ("register-identical", post("/register", json.dumps(reg).encode())),
            ("register-other-engine-id", post("/register", json.dumps(
                dict(reg, engine_id="another-engine")).encode())),
            ("register-other-addr", post("/register", json.dumps(
                dict(reg, addr="tcp://127.0.0.1:1")).encode())),
            ("register-missing-field", post("/register", json.dumps(
                {k: v for k, v in reg.items() if k != "addr"}).encode())),
            ("register-wrong-type", post("/register", json.dumps(
                dict(reg, tp_rank="zero")).encode())),
            ("register-not-json", post("/register", b"{engine_id: 1")),
        ]
        for name, req in tries:
            rep = raw_http(bport, req)
            out.write("bootstrap-%s.request.http" % name, req)
            out.write("bootstrap-%s.response.http" % name, rep)
        out.write("bootstrap-query-after.response.http",
                  raw_http(bport, b"GET /query HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))
    finally:
        for t in (td, td2):
            if t:
                t.stop()
        h.stop_all([p, d])

    # HTTP: P's register, D's query, the two completion legs
    streams = read_pcap(pc1)
    for name, port in (("bootstrap", p.bootstrap_port), ("completion-p", p.port), ("completion-d", d.port)):
        for t, cport, c2s, s2c in conns(streams, port):
            reqs, reps = http_messages(c2s), http_messages(s2c)
            for rq, rp in zip(reqs, reps):
                line = rq.split(b"\r\n", 1)[0].decode()
                if name == "bootstrap":
                    # P's own registration, and D's query (httpx; the router's is urllib)
                    if line.startswith("POST /register"):
                        base = "bootstrap-register"
                    elif line.startswith("GET /query") and b"httpx" in rq.lower():
                        base = "bootstrap-query"
                    else:
                        continue
                    if os.path.exists(os.path.join(out.root, base + ".request.http")):
                        continue
                elif "/v1/completions" in line:
                    body = json.loads(http_body(rq))
                    n = len(body["prompt"])
                    base = "%s-%dtok" % (name, n)
                else:
                    continue  # /health, /metrics
                out.write(base + ".request.http", rq)
                out.write(base + ".response.http", rp)
    out.finish()
    return facts, p, d


def out_bytes(out, name):
    with open(os.path.join(out.root, name), "rb") as f:
        return f.read()


# ---------------------------------------------------------------- 0.13.0

def gen0(out_root, work):
    R = "0.13.0"
    out = Out(os.path.join(out_root, R))
    ck = h.make_checkpoint(R, os.path.join(work, "ckpt-seed1"), 1)
    p = h.Server(R, ck, work, "p", kv_role="kv_producer")
    d = h.Server(R, ck, work, "d", kv_role="kv_consumer")
    pc = os.path.join(work, "all.pcap")
    td = Tcpdump(pc, [p.bootstrap_port, p.port, d.port])
    facts = {}
    try:
        h.start_all([p, d])
        rt = h.Gen0Router(p.url, d.url)
        import random
        rng = random.Random(40)
        prompts = {n: h.random_prompt(rng, n) for n in PROMPT_LENS}
        for i, (n, ids) in enumerate(prompts.items()):
            rt.complete(ids, 4)
            time.sleep(0.5)
            sess = conns(read_pcap(pc), p.bootstrap_port)
            assert len(sess) == i + 1, "%d D -> P sessions after %d requests" % (len(sess), i + 1)
            c2s = sess[-1][2]
            meta = unpack(messages(zmtp_frames(c2s)[1])[0][1])
            facts["meta-%d" % n] = meta
            blocks = meta["block_ids"][0]
            # K and V of each layer are regions of their own; one block_len for all
            # (tensor bytes / blocks): heads x block size x head dim x 4 bytes
            facts["regions-%d" % n] = len(meta["kv_caches_base_addr"])
            blen = mk.KV_HEADS * d.block_size * mk.HEAD_DIM * 4
            _, kblob = read_mem(d.pids(), meta["kv_caches_base_addr"][0] + blocks[0] * blen, blen)
            _, vblob = read_mem(d.pids(), meta["kv_caches_base_addr"][1] + blocks[0] * blen, blen)
            k_ref, v_ref = layer0_kv(ck, ids)
            tok = min(n, d.block_size)
            facts["layout-%d-K-region" % n] = {k: v[0] for k, v in match_layout(kblob, d.block_size, k_ref, v_ref, tok).items()}
            facts["layout-%d-V-region" % n] = {k: v[1] for k, v in match_layout(vblob, d.block_size, k_ref, v_ref, tok).items()}
        td.stop()
        td = None
        streams = read_pcap(pc)
        side = conns(streams, p.bootstrap_port)
        if len(side) != len(PROMPT_LENS):
            raise RuntimeError("%d D -> P side-channel sessions, want %d" % (len(side), len(PROMPT_LENS)))
        for n, (t, cport, c2s, s2c) in zip(PROMPT_LENS, side):
            g1, f1 = zmtp_frames(c2s)
            g2, f2 = zmtp_frames(s2c)
            m1, m2 = messages(f1), messages(f2)
            assert len(m1) == 1 and len(m1[0]) == 2 and m1[0][0] == b"", m1  # REQ: delimiter, payload
            out.msgpack("agent-metadata-%dtok.msgpack" % n, m1[0][1])
            out.write("agent-reply-%dtok.bin" % n, m2[0][1], [x.hex() for x in m2[0]])
            if n == PROMPT_LENS[0]:
                out.write("zmtp-d-to-p.bin", c2s, [("command" if c else "message", more, b.hex())
                                                   for c, more, b in f1])
                out.write("zmtp-p-to-d.bin", s2c, [("command" if c else "message", more, b.hex())
                                                   for c, more, b in f2])
        for name, port in (("completion-p", p.port), ("completion-d", d.port)):
            for t, cport, c2s, s2c in conns(streams, port):
                for rq, rp in zip(http_messages(c2s), http_messages(s2c)):
                    if b"/v1/completions" not in rq.split(b"\r\n", 1)[0]:
                        continue
                    n = len(json.loads(http_body(rq))["prompt"])
                    out.write("%s-%dtok.request.http" % (name, n), rq)
                    out.write("%s-%dtok.response.http" % (name, n), rp)
        # what P answers a request id it does not know, and bytes that are not msgpack
        addr = "tcp://127.0.0.1:%d" % p.bootstrap_port
        good = unpack(out_bytes(out, "agent-metadata-%dtok.msgpack" % PROMPT_LENS[0]))
        unknown = msgpack.packb(dict(good, request_ids=["cmpl-never-prefilled-0"]))
        for name, payload in (("unknown-request-id", unknown), ("not-msgpack", b"\xc1 not msgpack")):
            rep = req_request(addr, payload)
            out.write("agent-request-%s.bin" % name, payload, unpack(payload))
            out.write("agent-reply-%s.bin" % name, rep or b"", (rep or b"").decode(errors="replace"))
    finally:
        if td:
            td.stop()
        h.stop_all([p, d])
    out.finish()
    return facts, p, d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--work", default=os.path.join(h.TOP, "build", "capture"))
    ap.add_argument("--only", choices=("0.32.0", "0.13.0"))
    a = ap.parse_args()
    if not shutil.which("tcpdump"):
        sys.exit("capture.py: needs tcpdump (apt-get install tcpdump) and root")
    h.stop_on_signals()
    facts = {}
    for R, fn in (("0.32.0", gen2), ("0.13.0", gen0)):
        if a.only and a.only != R:
            continue
        w = os.path.join(a.work, R)
        shutil.rmtree(w, ignore_errors=True)
        print("vllm %s:" % R, flush=True)
        f, p, d = fn(a.outdir, w)
        facts[R] = f
        for s in (p, d):
            print("  %s log: %s" % (s.name, s.log_path))
    print(json.dumps(facts, indent=1, default=repr))


if __name__ == "__main__":
    main()

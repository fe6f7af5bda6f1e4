#!/usr/bin/env python3
"""What an attacker sends to kvbridge's ports, and what comes back (stdlib only).

Used by tests/chaos/driver.py, which runs this file inside the attacker's
network namespace (ip netns exec):

  attacks.py scan  TARGETS.json OUT.json   one probe of each kind at each port;
                                           OUT says, per probe, what came back
  attacks.py storm TARGETS.json OUT.json   until TARGETS' stop_file exists:
                                           malformed frames, slowloris and idle
                                           connections at every port; OUT counts

TARGETS.json: {"role": "outsider" | "insider", "ports": [{"daemon", "host",
"port", "kind"}], "registered": {daemon: [addr, ...]}, "stop_file", ...}.
A port's kind is http, handshake (Mooncake handshake and kvbridge stream),
data (Mooncake TCP transport), zmq (vLLM Gen 0 side channel) or other; every
probe goes to every port whatever its kind, since a port an outsider
reaches must give nothing to any protocol.

The wire formats are the Mooncake ones (src/backends/hw/kvb_mc_wire.h):
handshake frames are u64 length LE | u8 type | payload; TCP transport
requests a 24-byte header u64 size | u64 addr | u8 opcode (READ 0, WRITE 1,
| 0x80 for v2) | 7 zero bytes, a v2 status u64 LE "MCTV" << 32 | code.
ZMQ is spoken as ZMTP 3.0 with the NULL mechanism, just enough to deliver
a message as a DEALER would.
"""
import json
import os
import random
import socket
import struct
import sys
import threading
import time

MC_CONNECTION, MC_METADATA, MC_NOTIFY, MC_PROBE = 0, 1, 2, 3
KVB_HELLO, KVB_FRAME, KVB_AUTH = 0x10, 0x11, 0x14
OP_READ, OP_WRITE, OP_V2 = 0, 1, 0x80
STATUS_MAGIC = 0x4D435456
MARKER = 0xA5  # what an attacker's WRITE carries; no pattern block is all 0xA5

# ---- one connection ---------------------------------------------------------


def connect(host, port, timeout=3.0):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def exchange(host, port, payload=b"", wait=2.0, expect=1 << 20):
    """Connect, send payload, read until the peer closes, `expect` bytes
    came, or `wait` s of silence.  Returns (reply bytes, how it ended):
    "closed" (EOF or reset), "silent" (still open after wait), "refused"
    (no connection at all)."""
    try:
        s = connect(host, port)
    except OSError:
        return b"", "refused"
    got = b""
    end = "silent"
    try:
        if payload:
            try:
                s.sendall(payload)
            except OSError:
                pass  # closed at accept: the reply is what matters
        s.settimeout(wait)
        while len(got) < expect:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                end = "closed"
                break
            if not chunk:
                end = "closed"
                break
            got += chunk
    finally:
        s.close()
    return got, end


# ---- Mooncake handshake and TCP transport frames ------------------------------


def mc_frame(mtype, payload):
    return struct.pack("<Q", len(payload) + 1) + bytes([mtype]) + payload


def mc_frames(data):
    """Split whole handshake frames: [(type, payload)]."""
    out = []
    while len(data) >= 9:
        n = struct.unpack("<Q", data[:8])[0]
        if n < 1 or len(data) < 8 + n:
            break
        out.append((data[8], data[9:8 + n]))
        data = data[8 + n:]
    return out


def tcp_header(size, addr, op):
    return struct.pack("<QQB7x", size, addr, op)


def tcp_status(data):
    """The v2 status code in the first 8 bytes, or None."""
    if len(data) < 8:
        return None
    v = struct.unpack("<Q", data[:8])[0]
    return v & 0xFFFFFFFF if v >> 32 == STATUS_MAGIC else None


def fake_segment(host):
    """A TCP segment descriptor naming the attacker (for a kvbridge hello)."""
    return json.dumps({"name": "%s:40000" % host, "protocol": "tcp", "tcp_data_port": 40001,
                       "tcp_proto_version": 2, "buffers": []}).encode()


# ---- ZMTP 3.0, NULL mechanism, as a DEALER ------------------------------------


def zmtp_greeting():
    return b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\x00" + b"\0" * 31


def zmtp_frame(body, more=False, command=False):
    flags = (0x01 if more else 0) | (0x04 if command else 0)
    if len(body) > 255:
        return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def zmtp_ready():
    prop = bytes([11]) + b"Socket-Type" + struct.pack(">I", 6) + b"DEALER"
    return zmtp_frame(b"\x05READY" + prop, command=True)


def zmtp_parse(data):
    """Frames after the 64-byte greeting: [(is_command, body)]."""
    out = []
    i = 64
    while i + 2 <= len(data):
        flags = data[i]
        if flags & 0x02:
            if i + 9 > len(data):
                break
            n = struct.unpack(">Q", data[i + 1:i + 9])[0]
            start = i + 9
        else:
            n = data[i + 1]
            start = i + 2
        if start + n > len(data):
            break
        out.append((bool(flags & 0x04), data[start:start + n]))
        i = start + n
    return out


def zmq_message(host, port, frames, wait=2.0):
    """Deliver one message (REQ-style: empty delimiter first) and return the
    message frames that came back within wait (commands left out), or None
    when no ZMTP peer answered at all."""
    try:
        s = connect(host, port)
    except OSError:
        return None
    got = b""
    try:
        s.sendall(zmtp_greeting() + zmtp_ready())
        # the peer's greeting and READY first (libzmq drops a connection whose
        # first read holds more than the greeting), then the message
        s.settimeout(wait)
        while not zmtp_parse(got):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        for i, f in enumerate(frames):
            s.sendall(zmtp_frame(f, more=i + 1 < len(frames)))
        s.settimeout(0.2)
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                if any(not c for c, _ in zmtp_parse(got)):
                    break
                continue
            except OSError:
                break
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    finally:
        s.close()
    if len(got) < 10:
        return None
    return [b for c, b in zmtp_parse(got) if not c]


def kvb_stream(host, port, me, then, wait=3.0):
    """Open a kvbridge stream without the secret: hello, then what then(the
    challenge) gives.  Refused when a challenge came, no descriptor (HELLO
    answer) ever did, and the listener closed."""
    try:
        s = connect(host, port)
    except OSError as e:
        return False, "no connection: %s" % e
    data = b""
    try:
        s.sendall(mc_frame(KVB_HELLO, fake_segment(me)))
        s.settimeout(wait)
        while not mc_frames(data):
            c = s.recv(4096)
            if not c:
                break
            data += c
        fr = mc_frames(data)
        if not fr or fr[0][0] != KVB_AUTH:
            return False, "no challenge: %s" % [f[0] for f in fr]
        s.sendall(then(fr[0][1]))
        rest = b""
        while True:
            c = s.recv(4096)
            if not c:
                break
            rest += c
        types = [(ft, p[:1].hex()) for ft, p in mc_frames(rest)]
        return all(ft != KVB_HELLO for ft, _ in types), "after the challenge: %s, closed" % types
    except socket.timeout:
        return False, "still open %.0f s after the challenge" % wait
    except OSError as e:
        return True, "reset (%s)" % e
    finally:
        s.close()


def zmtp_only(data):
    """A ZMQ peer's greeting and commands, and no message."""
    return len(data) >= 10 and data[0] == 0xFF and data[9] == 0x7F and all(c for c, _ in zmtp_parse(data))


# ---- HTTP -----------------------------------------------------------------------


def http_req(method, path, host, body=b"", headers=()):
    h = "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (method, path, host)
    for k, v in headers:
        h += "%s: %s\r\n" % (k, v)
    if body or method == "POST":
        h += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    return h.encode() + b"\r\n" + body


def http_status(reply):
    try:
        return int(reply.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


COMPLETION = json.dumps({"prompt": "scan", "max_tokens": 1,
                         "kv_transfer_params": {"do_remote_decode": True}}).encode()

# ---- the scan -------------------------------------------------------------------


def probes(t, registered, me):
    """(name, payload, wait) for port t: every protocol at every port."""
    host = t["host"]
    out = [("tcp connect", b"", 1.0),
           ("http GET /health", http_req("GET", "/health", host), 1.0),
           ("http GET /stats", http_req("GET", "/stats", host), 1.0),
           ("http GET /layout", http_req("GET", "/layout", host), 1.0),
           ("http POST /v1/completions", http_req("POST", "/v1/completions", host, COMPLETION), 1.0),
           ("mooncake metadata", mc_frame(MC_METADATA, fake_segment(me)), 1.0),
           ("mooncake probe", mc_frame(MC_PROBE, b"{}"), 1.0),
           ("kvbridge hello", mc_frame(KVB_HELLO, fake_segment(me)), 1.0)]
    for addr in registered[:2] + [0x1000]:
        where = "registered" if addr != 0x1000 else "unregistered"
        out += [("tcp READ v2 %s" % where, tcp_header(4096, addr, OP_READ | OP_V2), 1.0),
                ("tcp WRITE v2 %s" % where, tcp_header(4096, addr, OP_WRITE | OP_V2) + bytes([MARKER]) * 4096, 1.0),
                ("tcp READ v1 %s" % where, tcp_header(4096, addr, OP_READ), 1.0),
                ("tcp WRITE v1 %s" % where, tcp_header(4096, addr, OP_WRITE) + bytes([MARKER]) * 4096, 1.0)]
    return out


def scan_outsider(conf):
    """Everything from outside the allowed networks must get nothing."""
    res = []
    for t in conf["ports"]:
        regs = [a for d, addrs in conf["registered"].items() for a in addrs]
        if t["kind"] == "zmq":
            r = zmq_message(t["host"], t["port"], [b"", b"\x81\xa4junk\xc1"])
            res.append({"daemon": t["daemon"], "port": t["port"], "kind": t["kind"],
                        "probe": "zmq message", "got": len(r) if r else 0, "end": "-",
                        "refused": not r})
            continue
        for name, payload, wait in probes(t, regs, conf["me"]):
            got, end = exchange(t["host"], t["port"], payload, wait)
            res.append({"daemon": t["daemon"], "port": t["port"], "kind": t["kind"], "probe": name,
                        "got": len(got), "end": end, "refused": not got and end != "silent"})
    return res


def scan_insider(conf):
    """From an allowed address without the key or the secret: every HTTP
    endpoint but /health 401, READ/WRITE at registered addresses refused, the
    kvbridge stream refused, bad side-channel messages answered with an error."""
    res = []

    def add(t, probe, refused, detail):
        res.append({"daemon": t["daemon"], "port": t["port"], "kind": t["kind"], "probe": probe,
                    "refused": bool(refused), "detail": detail})

    for t in conf["ports"]:
        host, port = t["host"], t["port"]
        if t["kind"] == "http":
            got, _ = exchange(host, port, http_req("GET", "/health", host))
            res.append({"daemon": t["daemon"], "port": port, "kind": "http", "probe": "GET /health (open)",
                        "refused": None, "detail": http_status(got)})
            for m, p, b in (("GET", "/stats", b""), ("GET", "/layout", b""), ("GET", "/nowhere", b""),
                            ("POST", "/v1/completions", COMPLETION),
                            ("POST", "/v1/chat/completions", COMPLETION)):
                for auth in ((), (("Authorization", "Bearer wrong-key-0123456789abc"),)):
                    got, _ = exchange(host, port, http_req(m, p, host, b, auth))
                    st = http_status(got)
                    add(t, "%s %s%s" % (m, p, " wrong key" if auth else ""), st == 401, st)
        elif t["kind"] == "data":
            regs = conf["registered"].get(t["daemon"], [])
            for addr in regs:
                for op, name in ((OP_WRITE, "WRITE"), (OP_READ, "READ")):
                    pay = bytes([MARKER]) * 4096 if op == OP_WRITE else b""
                    got, end = exchange(host, port, tcp_header(4096, addr, op | OP_V2) + pay, expect=8)
                    st = tcp_status(got)
                    add(t, "tcp %s v2 registered" % name, st == 1 and len(got) == 8, "status %s" % st)
                    got, end = exchange(host, port, tcp_header(4096, addr, op) + pay)
                    add(t, "tcp %s v1 registered" % name, not got and end == "closed", "%d bytes, %s" % (len(got), end))
            got, end = exchange(host, port, tcp_header(4096, 0x1000, OP_WRITE | OP_V2) + bytes([MARKER]) * 4096, expect=8)
            add(t, "tcp WRITE v2 unregistered", tcp_status(got) == 1, "status %s" % tcp_status(got))
        elif t["kind"] == "handshake":
            # a hello is answered with a challenge, never with a descriptor;
            # a frame instead of the proof, or a forged proof, ends the stream
            for probe, then in (("kvbridge stream, frame before the proof",
                                 lambda ch: mc_frame(KVB_FRAME, b"\x01" * 32)),
                                ("kvbridge stream, forged proof",
                                 lambda ch: mc_frame(KVB_AUTH, bytes([2]) + ch[1:33] + os.urandom(64)))):
                ok, detail = kvb_stream(host, port, conf["me"], then)
                add(t, probe, ok, detail)
        elif t["kind"] == "zmq":
            r = zmq_message(host, port, [b"", b"\x81\xa4junk\xc1"])
            add(t, "zmq bad msgpack", r is not None and any(b"error" in f for f in r),
                "reply %s" % (r[-1][:60] if r else r))
    return res


# ---- the storm -------------------------------------------------------------------


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}

    def add(self, kind, outcome):
        with self.lock:
            k = self.c.setdefault(kind, {})
            k[outcome] = k.get(outcome, 0) + 1


def malformed(t, rng, me, regs):
    """(kind, payload) of a bad input for port t."""
    host = t["host"]
    k = t["kind"]
    choices = [("random bytes", lambda: os.urandom(rng.randint(1, 4096)))]
    if k in ("handshake", "other"):
        choices += [
            ("mooncake truncated", lambda: mc_frame(MC_METADATA, b'{"name":"x"')[:rng.randint(1, 12)]),
            ("mooncake oversized", lambda: struct.pack("<Q", 1 << 40) + b"\x01{}"),
            ("mooncake zero length", lambda: struct.pack("<Q", 0)),
            ("mooncake bad json", lambda: mc_frame(MC_CONNECTION, b'{"qp_num":[1,2' + os.urandom(64))),
            ("mooncake bad type", lambda: mc_frame(rng.choice([4, 9, 0x15, 0x7f, 0xfe]), b"{}")),
            ("kvbridge hello bad", lambda: mc_frame(KVB_HELLO, b'{"name":"' + os.urandom(40) + b'"}')),
        ]
    if k in ("data", "other"):
        choices += [
            ("tcp bad opcode", lambda: tcp_header(64, 0x1000, rng.choice([2, 7, 0x7f, 0xff]))),
            ("tcp size 0", lambda: tcp_header(0, 0x1000, OP_WRITE | OP_V2)),
            ("tcp wrapping", lambda: tcp_header(1 << 20, (1 << 64) - 4096, OP_READ | OP_V2)),
            ("tcp oversized", lambda: tcp_header(1 << 50, rng.choice(regs or [0x1000]), OP_WRITE | OP_V2) + os.urandom(256)),
            ("tcp truncated", lambda: tcp_header(64, 0x1000, OP_WRITE)[:rng.randint(1, 23)]),
        ]
    if k in ("http", "other"):
        choices += [
            ("http garbage line", lambda: b"\x00\xffGET\t/ HTTP/9\r\n\r\n"),
            ("http huge header", lambda: b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n"),
            ("http bad length", lambda: b"POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n{}"),
            ("http huge length", lambda: b"POST /v1/completions HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            ("http chunked", lambda: b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            ("http bad json", lambda: http_req("POST", "/v1/completions", host, b'{"prompt": [1,2,' + os.urandom(20))),
        ]
    if k == "zmq":
        choices += [("zmq garbage greeting", lambda: b"\xff" + os.urandom(200))]
    return rng.choice(choices)


def storm(conf):
    """Until the stop file appears: per port, one thread of malformed input,
    slowloris where it is HTTP (or frames byte by byte elsewhere), and idle
    connections held open.  Counts what each kind got."""
    counts = Counts()
    stop = conf["stop_file"]
    outsider = conf["role"] == "outsider"
    regs = [a for addrs in conf["registered"].values() for a in addrs]
    held = []
    held_lock = threading.Lock()

    def stopped():
        return os.path.exists(stop)

    def bad_input(t, seed):
        rng = random.Random(seed)
        while not stopped():
            if t["kind"] == "zmq" and rng.random() < 0.5:
                r = zmq_message(t["host"], t["port"], [b"", os.urandom(rng.randint(1, 300))], wait=1.0)
                kind = "zmq bad msgpack"
                if outsider:
                    counts.add(kind, "nothing back" if not r else "ANSWERED")
                else:
                    counts.add(kind, "error reply" if r and any(b"error" in f for f in r) else
                               ("no reply" if not r else "other reply"))
                continue
            kind, make = malformed(t, rng, conf["me"], regs)
            got, end = exchange(t["host"], t["port"], make(), wait=6.0, expect=65536)
            if outsider:
                counts.add("outsider " + kind, "nothing back" if not got else
                           ("ZMQ greeting only" if t["kind"] == "zmq" and zmtp_only(got) else "ANSWERED"))
            elif t["kind"] == "http" and got:
                st = http_status(got)
                counts.add(kind, "HTTP %s" % st if st else "other reply")
            elif t["kind"] == "zmq":
                counts.add(kind, "closed" if end == "closed" else end)
            else:
                st = tcp_status(got) if t["kind"] == "data" else None
                counts.add(kind, "status rejected" if st == 1 else
                           ("closed" if end == "closed" and not got else
                            ("replied, closed" if end == "closed" else end)))
            time.sleep(0.02)

    def slowloris(t, seed):
        rng = random.Random(seed)
        while not stopped():
            if t["kind"] == "http":
                msg = http_req("GET", "/stats", t["host"], headers=[("X-Slow-%d" % i, "x" * 20) for i in range(200)])
            elif t["kind"] == "data":
                msg = tcp_header(4096, rng.choice(regs or [0x1000]), OP_WRITE | OP_V2)
            else:
                msg = mc_frame(MC_PROBE, b"{}" + b" " * 2000)
            try:
                s = connect(t["host"], t["port"])
            except OSError:
                counts.add("slowloris", "no connection")
                time.sleep(0.5)
                continue
            outcome = "cut at the end"
            try:
                s.settimeout(0.0)
                for i in range(len(msg)):
                    if stopped():
                        break
                    s.send(msg[i:i + 1])
                    time.sleep(0.25)
                    try:
                        if s.recv(4096) == b"":
                            outcome = "closed by the daemon"
                            break
                    except BlockingIOError:
                        pass
                else:
                    outcome = "sent whole"
            except OSError:
                outcome = "closed by the daemon"
            s.close()
            counts.add("slowloris" if not outsider else "outsider slowloris", outcome)

    def idle(t):
        try:
            s = connect(t["host"], t["port"])
        except OSError:
            counts.add("idle connection", "no connection")
            return
        with held_lock:
            held.append((t, s))

    threads = []
    for i, t in enumerate(conf["ports"]):
        threads.append(threading.Thread(target=bad_input, args=(t, conf["seed"] + i), daemon=True))
        threads.append(threading.Thread(target=slowloris, args=(t, conf["seed"] + 1000 + i), daemon=True))
        for _ in range(conf.get("idle_per_port", 4)):
            idle(t)
    for th in threads:
        th.start()
    while not stopped():
        time.sleep(0.1)
    for th in threads:
        th.join(timeout=10)
    # what became of the idle connections: closed by the daemon, or still open
    for t, s in held:
        # what the daemon sent before it closed (a ZMQ greeting) is read first
        s.settimeout(0.0)
        closed = False
        try:
            while True:
                data = s.recv(4096)
                if not data:
                    closed = True
                    break
        except BlockingIOError:
            pass
        except OSError:
            closed = True
        kind = "idle connection, %s %s" % ("proxy" if t["daemon"] == "proxy" else "worker", t["kind"])
        kind = "outsider " + kind if outsider else kind
        counts.add(kind, "closed by the daemon" if closed else "open at the end")
        s.close()
    return counts.c


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("scan", "storm"):
        sys.exit(__doc__)
    with open(sys.argv[2]) as f:
        conf = json.load(f)
    if sys.argv[1] == "scan":
        out = scan_outsider(conf) if conf["role"] == "outsider" else scan_insider(conf)
    else:
        out = storm(conf)
    tmp = sys.argv[3] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.rename(tmp, sys.argv[3])


if __name__ == "__main__":
    main()

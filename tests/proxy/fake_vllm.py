#!/usr/bin/env python3
"""A fake vLLM P/D pair for tests/test_proxy.sh (stdlib only).

One process serves three ports on 127.0.0.1:
  P   the prefiller's OpenAI front (/health, /v1/completions, /v1/chat/completions)
      and the test's control endpoints (POST /_ctl, GET /_log);
  B   P's bootstrap server (GET /query);
  D   the decoder's OpenAI front.
Every request is recorded as it arrives (headers, body, times); P's and D's
answers are written raw, so a test can compare what the client got with
what D sent byte for byte (D's raw answer is kept under --dir, named by
X-Request-Id).  Behaviour is set with POST /_ctl {key: value}:
  health        status of P's /health (200)
  query_status  status of B's /query (200)
  query         the /query body (a string as is, anything else as JSON)
  p_delay       seconds P waits before answering (0)
  p_status      P's status (200); p_body its body
  p_busy_n      P answers the next N requests 503 "KV pool full" (0)
  d_delay       seconds D waits before answering (0); it stops waiting
                when the proxy closes the connection
  gen0          P answers kv_transfer_params {remote_host, remote_port, ...}
  d_stream      D answers text/event-stream in chunks, with pauses
  d_wait_for_p  D answers only once the P leg of the same X-Request-Id has
                arrived (at most 5 s), and says in its answer whether it did
Prints "ports p=N b=N d=N" when listening.
"""
import argparse
import json
import os
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
cfg = {
    "health": 200, "query_status": 200, "query": "{}", "p_delay": 0.0, "p_status": 200,
    "p_body": None, "gen0": False, "d_stream": False, "d_wait_for_p": False, "p_busy_n": 0,
    "d_delay": 0.0,
}
log = []
p_started = {}  # X-Request-Id -> threading.Event
args = None


def p_event(rid):
    with lock:
        return p_started.setdefault(rid, threading.Event())


def raw_response(status, ctype, body, chunks=None):
    head = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nConnection: close\r\n" % (
        status, "OK" if status == 200 else "Error", ctype)
    if chunks is None:
        return (head + "Content-Length: %d\r\n\r\n" % len(body)).encode() + body
    return [(head + "Transfer-Encoding: chunked\r\n\r\n").encode()] + [
        b"%x\r\n%s\r\n" % (len(c), c) for c in chunks] + [b"0\r\n\r\n"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    role = "?"

    def log_message(self, fmt, *a):
        pass

    def record(self, body):
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode("latin-1")
        rec = {"role": self.role, "method": self.command, "path": self.path,
               "headers": {k.lower(): v for k, v in self.headers.items()},
               "body": parsed, "t0": time.time()}
        with lock:
            log.append(rec)
        return rec

    def send_raw(self, data):
        self.close_connection = True
        if isinstance(data, list):
            for i, part in enumerate(data):
                self.wfile.write(part)
                self.wfile.flush()
                if 0 < i < len(data) - 1:
                    time.sleep(0.05)
        else:
            self.wfile.write(data)
        self.wfile.flush()

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def json(self, status, obj):
        self.send_raw(raw_response(status, "application/json", json.dumps(obj).encode()))

    def do_GET(self):
        rec = self.record(b"")
        with lock:
            c = dict(cfg)
        if self.role == "p" and self.path == "/_log":
            with lock:
                data = json.dumps(log).encode()
            self.send_raw(raw_response(200, "application/json", data))
        elif self.role == "p" and self.path == "/health":
            self.json(c["health"], {} if c["health"] == 200 else {"detail": "starting"})
        elif self.role == "b" and self.path == "/query":
            self.send_raw(raw_response(c["query_status"], "application/json", c["query"].encode()))
        else:
            self.json(404, {"detail": "Not Found"})
        rec["t1"] = time.time()

    def do_POST(self):
        body = self.read_body()
        if self.role == "p" and self.path == "/_ctl":
            with lock:
                cfg.update(json.loads(body))
                if not isinstance(cfg["query"], str):
                    cfg["query"] = json.dumps(cfg["query"])
            self.json(200, {"ok": True})
            return
        rec = self.record(body)
        with lock:
            c = dict(cfg)
        rid = self.headers.get("X-Request-Id", "")
        if self.role == "p":
            with lock:
                busy = cfg["p_busy_n"] > 0
                if busy:
                    cfg["p_busy_n"] -= 1
            if busy:
                self.json(503, {"error": {"message": "not enough free KV blocks", "type": "KVPoolFull",
                                          "code": 503}})
                rec["t1"] = time.time()
                return
            p_event(rid).set()
            time.sleep(c["p_delay"])
            if c["p_body"] is not None:
                out = c["p_body"].encode()
            elif c["gen0"]:
                out = json.dumps({"id": "cmpl-p", "choices": [{"text": "p"}], "kv_transfer_params": {
                    "do_remote_prefill": True, "do_remote_decode": False, "remote_engine_id": "gen0-eng",
                    "remote_block_ids": [1, 2], "remote_host": "127.0.0.1", "remote_port": 5557}}).encode()
            else:
                out = json.dumps({"id": "cmpl-p", "choices": [{"text": "p"}],
                                  "kv_transfer_params": None}).encode()
            self.send_raw(raw_response(c["p_status"], "application/json", out))
        elif self.role == "d":
            end = time.time() + c["d_delay"]
            while time.time() < end:  # until then, or until the proxy hangs up
                r, _, _ = select.select([self.connection], [], [], 0.05)
                if r and not self.connection.recv(1, socket.MSG_PEEK):
                    rec["hung_up"] = True
                    rec["t1"] = time.time()
                    return
            saw_p = None
            if c["d_wait_for_p"]:
                saw_p = p_event(rid).wait(5.0)
            if c["d_stream"]:
                chunks = [b'data: {"id":"cmpl-d","choices":[{"text":"tok%d"}]}\n\n' % i for i in range(5)]
                chunks.append(b"data: [DONE]\n\n")
                data = raw_response(200, "text/event-stream", b"", chunks)
                raw = b"".join(data)
            else:
                out = json.dumps({"id": "cmpl-d", "object": "text_completion",
                                  "choices": [{"index": 0, "text": " decoded"}],
                                  "d_saw_p_leg": saw_p, "kv_transfer_params": None}).encode()
                data = raw = raw_response(200, "application/json", out)
            if rid and "/" not in rid:
                with open(os.path.join(args.dir, "d-%s.raw" % rid), "wb") as f:
                    f.write(raw)
            self.send_raw(data)
        rec["t1"] = time.time()


def serve(role):
    h = type("H_" + role, (Handler,), {"role": role})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), h)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def main():
    global args
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--set", default="{}", help="initial settings, JSON")
    args = ap.parse_args()
    cfg.update(json.loads(args.set))
    if not isinstance(cfg["query"], str):
        cfg["query"] = json.dumps(cfg["query"])
    ports = {r: serve(r) for r in ("p", "b", "d")}
    print("ports p=%d b=%d d=%d" % (ports["p"], ports["b"], ports["d"]), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())

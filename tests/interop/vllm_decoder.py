"""A vLLM Gen 0 decoder written from the spec (pyzmq + msgpack, the real
Mooncake Transfer Engine as its transfer engine) pulls KV caches from
kvbridge-serve --role producer over vLLM's side channel.

  - the producer "prefills" requests (HTTP, do_remote_decode);
  - the decoder sends MooncakeAgentMetadata {remote_hostname, remote_port,
    request_ids, kv_caches_base_addr, block_ids} to the producer's ROUTER at
    VLLM_MOONCAKE_BOOTSTRAP_PORT + tp_rank, as a REQ client (3 frames) and as
    a DEALER client (2 frames);
  - kvbridge writes the blocks into the engine's memory and answers
    trans_done; the test checks every byte against the producer's pattern;
  - malformed msgpack, an unknown request and a bad base address get
    trans_error, and the producer keeps serving.

Prints TAP.  Usage: vllm_decoder.py PATH/TO/kvbridge-serve
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

import msgpack
import zmq

import patterns

os.environ.setdefault("MC_FORCE_TCP", "1")
os.environ.setdefault("MC_LOG_LEVEL", "WARNING")
from mooncake.engine import TransferEngine  # noqa: E402

serve = sys.argv[1]
n = 0
failed = 0


def check(cond, what):
    global n, failed
    n += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (n, what), flush=True)
    if not cond:
        failed = 1


print("1..8", flush=True)
base = 21000 + os.getpid() % 20000
env = dict(os.environ, VLLM_MOONCAKE_BOOTSTRAP_PORT=str(base))
prod = subprocess.Popen([serve, "--vllm-protocol", "gen0", "--role", "producer", "--http-port", "0", "--blocks", "512",
                         "--lease", "3", "-v"], stdout=subprocess.PIPE, stderr=None,
                        text=True, env=env)  # its log goes to ours
ready = prod.stdout.readline()
fields = dict(kv.split("=", 1) for kv in ready.split() if "=" in kv)
http = "http://127.0.0.1:%s" % fields["http"]


def http_json(path, body=None, rid=None):
    req = urllib.request.Request(http + path, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    if rid:
        req.add_header("X-Request-Id", rid)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


layout = http_json("/layout")
regions = layout["regions"]
stride = regions[0]["block_stride"]
bbytes = regions[0]["block_bytes"]
D_BLOCKS = 64
eng = TransferEngine()
assert eng.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
size = len(regions) * D_BLOCKS * stride
buf = eng.allocate_managed_buffer(size)
eng.write_bytes_to_buffer(buf, bytes(size), size)
bases = [buf + i * D_BLOCKS * stride for i in range(len(regions))]
ctx = zmq.Context()


def metadata(rids, blocks, bases_=None):
    # msgspec encodes a Struct as a map in field declaration order
    return msgpack.packb({"remote_hostname": "127.0.0.1", "remote_port": eng.get_rpc_port(),
                          "request_ids": rids, "kv_caches_base_addr": bases_ or bases,
                          "block_ids": blocks})


def ask(payload, dealer=False, timeout_ms=15000):
    s = ctx.socket(zmq.DEALER if dealer else zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, timeout_ms)
    s.connect("tcp://127.0.0.1:%d" % base)
    s.send(payload)
    try:
        return s.recv()
    except zmq.Again:
        return b"<timeout>"
    finally:
        s.close()


def internal(rid, suffix=""):
    """vLLM's internal request id for X-Request-Id rid (0.13; 0.14+ add -<8 hex>)."""
    return "cmpl-%s-0%s" % (rid, suffix)


def verify(rid, dblocks):
    seed = patterns.request_seed(internal(rid))
    bad = 0
    for r in range(len(regions)):
        for k, b in enumerate(dblocks):
            got = eng.read_bytes_from_buffer(bases[r] + b * stride, bbytes)
            # positions count from the last block (kvbridge-serve's pattern)
            bad += got != patterns.block_fill(patterns.block_seed(seed, r, len(dblocks) - 1 - k), bbytes)
    return bad


def prefill(rid, tokens):
    body = {"prompt": "x", "kv_transfer_params": {"do_remote_decode": True, "kvbridge_tokens": tokens}}
    return http_json("/v1/completions", body, rid)["kv_transfer_params"]


kp = prefill("req-a", 100)
check(kp["remote_port"] == base and kp["do_remote_prefill"] is True,
      "the producer answers vLLM's kv_transfer_params (remote_host, remote_port %d)" % kp["remote_port"])
blocks_a = list(range(10, 17))  # 100 tokens = 7 blocks of 16
reply = ask(metadata([internal("req-a")], [blocks_a]))
check(reply == b"trans_done" and verify("req-a", blocks_a) == 0,
      "REQ client (3 frames): trans_done, %d blocks x %d layers verified (reply %r)" % (
          len(blocks_a), len(regions), reply))

prefill("req-b", 40)
prefill("req-c", 17)
blocks_b, blocks_c = [30, 31, 32], [40, 41]
# req-c as a 0.14/0.15 decoder names it: with its engine's random suffix
reply = ask(metadata([internal("req-b"), internal("req-c", "-0a1b2c3d")], [blocks_b, blocks_c]),
            dealer=True)
check(reply == b"trans_done" and verify("req-b", blocks_b) == 0 and verify("req-c", blocks_c) == 0,
      "DEALER client (2 frames), two requests in one message, one with a 0.14+ id suffix: "
      "trans_done, bytes verified (reply %r)" % reply)

check(ask(b"\xc1\x00garbage") == b"trans_error", "malformed msgpack: trans_error")
check(ask(msgpack.packb({"remote_hostname": "127.0.0.1"})) == b"trans_error",
      "metadata missing required fields: trans_error")
prefill("req-d", 16)
check(ask(metadata([internal("req-d")], [[50]], [4096] * len(regions))) == b"trans_error",
      "base addresses outside the decoder's registered memory: trans_error, nothing written")
t0 = time.time()
check(ask(metadata([internal("never-prefilled")], [[60]])) == b"trans_error",
      "unknown request: trans_error once the producer stops waiting (%.1f s)" % (time.time() - t0))

prefill("req-e", 64)
blocks_e = [1, 2, 3, 4]
reply = ask(metadata([internal("req-e")], [blocks_e]))
check(reply == b"trans_done" and verify("req-e", blocks_e) == 0,
      "the producer kept serving after bad messages: trans_done, bytes verified (reply %r)" % reply)
prod.terminate()
prod.wait(timeout=10)
sys.exit(failed)

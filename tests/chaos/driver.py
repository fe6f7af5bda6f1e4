#!/usr/bin/env python3
"""The chaos and security suite (issue 12): run by tests/test_chaos.sh inside
the cluster's decoder namespace, after it built the network namespaces.

What it shows, as TAP, then as a table (also written to --table):
  1. scan: from an outsider (an address outside --allow-peers) every port of
     every daemon, found from /proc, gives nothing to any protocol; from an
     insider (allowed address, no --api-key, no --secret-file) HTTP answers
     401, the TCP transport refuses READ and WRITE at registered addresses
     outside a pull, the kvbridge stream refuses it, the side channel answers
     an error; and nothing changed (no byte written, no stream, no block).
  2. load: >= 500 requests at 32 concurrent through the proxy, every byte
     verified by the consumers (kvbridge's stream and the vLLM Gen 0 side
     channel), while both attackers send malformed frames, slowloris and idle
     connections to every port.
  3. faults: SIGSTOP/SIGCONT and SIGKILL of the producer, a consumer and the
     proxy while transfers cross a shaped link; killed ones restarted on the
     same ports; every request in flight ends with an answer and a reason,
     and the survivors serve verified requests again.
  4. end: 0 bytes wrong, 0 blocks held, every request terminal with a
     reason, file descriptors and RSS bounded.
"""
import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(HERE))
import listeners  # noqa: E402  (tests/listeners.py)

FD_SLACK = 16            # fds a daemon may hold beyond its after-warm-up count
RSS_SLACK_KB = 32 * 1024  # RSS growth allowed once the KV pool is touched


# ---- TAP ------------------------------------------------------------------------

class Tap:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def check(self, ok, desc, diag=None):
        self.n += 1
        print("%s %d - %s" % ("ok" if ok else "not ok", self.n, desc), flush=True)
        if not ok:
            self.failed += 1
            for line in (diag or "").splitlines()[:40]:
                print("#   " + line, flush=True)
        return ok

    def note(self, text):
        for line in text.splitlines():
            print("# " + line, flush=True)


tap = Tap()

# ---- daemons ----------------------------------------------------------------------


class Daemon:
    """One kvbridge-serve or kvbridge-proxy, started (and restarted) with the
    same command line, so on the same ports."""

    def __init__(self, name, ns, argv, host, http_port, key, tmp, env=None):
        self.name, self.ns, self.argv, self.host = name, ns, argv, host
        self.http_port, self.key, self.tmp = http_port, key, tmp
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.starts = 0
        self.warm = None  # (fds, rss kB) after warm-up of this instance

    def start(self):
        self.starts += 1
        out = os.path.join(self.tmp, "%s.%d.out" % (self.name, self.starts))
        self.log = os.path.join(self.tmp, "%s.%d.log" % (self.name, self.starts))
        cmd = (["ip", "netns", "exec", self.ns] if self.ns else []) + self.argv
        with open(out, "w") as fo, open(self.log, "w") as fe:
            # ip netns exec and the libtool wrapper both exec: the pid is the daemon's
            self.proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=self.env)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            with open(out) as f:
                if "ready" in f.read():
                    self.warm = None
                    return True
            time.sleep(0.05)
        with open(self.log) as f:
            tap.note("%s did not start:\n%s" % (self.name, f.read()[-2000:]))
        return False

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        os.kill(self.pid, sig)

    def http(self, method, path, body=None, timeout=10, key=True, headers=None):
        c = http.client.HTTPConnection(self.host, self.http_port, timeout=timeout)
        h = dict(headers or {})
        if key and self.key:
            h["Authorization"] = "Bearer " + self.key
        if body is not None:
            h["Content-Type"] = "application/json"
        try:
            c.request(method, path, json.dumps(body) if body is not None else None, h)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def stats(self):
        st, b = self.http("GET", "/stats")
        if st != 200:
            raise RuntimeError("%s /stats: HTTP %s" % (self.name, st))
        return json.loads(b)

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def rss_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def listening(self):
        mine = listeners.inodes(self.pid)
        out = []
        for table, v6 in (("tcp", False), ("tcp6", True)):
            with open("/proc/%d/net/%s" % (self.pid, table)) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and cols[9] in mine:
                        host, port = cols[1].split(":")
                        out.append((listeners.addr(host, v6), int(port, 16)))
        return out

    def log_lines(self):
        """stderr lines of every instance so far"""
        n = 0
        for i in range(1, self.starts + 1):
            with open(os.path.join(self.tmp, "%s.%d.log" % (self.name, i)), errors="replace") as f:
                n += sum(1 for _ in f)
        return n


def flat(st):
    """/stats as one level: requests.*, connector.*, hw.* merged."""
    out = {}
    for k, v in st.items():
        if isinstance(v, dict):
            out.update(v)
        else:
            out[k] = v
    return out


# ---- requests ---------------------------------------------------------------------


class Requests:
    """Every request this suite sent, with how it ended."""

    def __init__(self):
        self.lock = threading.Lock()
        self.all = []

    def send(self, proxy, phase, words, timeout):
        body = {"model": "chaos", "prompt": " ".join("w%d" % i for i in range(words)), "max_tokens": 1}
        t0 = time.time()
        rec = {"phase": phase, "words": words}
        try:
            st, data = proxy.http("POST", "/v1/completions", body, timeout=timeout)
            rec["status"] = st
            if st == 200:
                j = json.loads(data)
                kv = j.get("kvbridge", {})
                rec["verified"] = kv.get("mismatched_bytes") == 0 and kv.get("verified_bytes", 0) > 0
                rec["reason"] = "verified" if rec["verified"] else "200 without verification"
            else:
                try:
                    rec["reason"] = json.loads(data)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    rec["reason"] = data[:200].decode(errors="replace")
                if "KV verification failed" in rec["reason"]:
                    rec["bytes_wrong"] = int(rec["reason"].split("failed: ")[1].split()[0])
        except (TimeoutError, OSError, http.client.HTTPException) as e:
            hung = isinstance(e, TimeoutError) or "timed out" in str(e)
            rec["status"] = "hung" if hung else "connection"
            rec["reason"] = "%s: %s" % (type(e).__name__, e)
        rec["s"] = time.time() - t0
        with self.lock:
            self.all.append(rec)
        return rec

    def run(self, proxy, phase, n, workers, words, min_s=0.0, timeout=30):
        """n requests (at least; more while min_s has not passed) on `workers`
        threads; words(i) gives each prompt's length."""
        t0 = time.time()
        lock = threading.Lock()
        nxt = [0]

        def work():
            while True:
                with lock:
                    i = nxt[0]
                    if i >= n and time.time() - t0 >= min_s:
                        return
                    nxt[0] += 1
                self.send(proxy, phase, words(i), timeout)

        ths = [threading.Thread(target=work) for _ in range(workers)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        return [r for r in self.all if r["phase"] == phase]


# ---- the suite --------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    for a in ("serve", "proxy", "tmp", "table", "ns-p", "ns-o", "ns-i", "ip-p", "ip-d", "ip-o", "ip-i",
              "allow", "dev-p", "secret", "key", "proxy-key"):
        ap.add_argument("--" + a, required=True)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--load-seconds", type=float, default=20)
    args = ap.parse_args()
    t_start = time.time()
    tmp = args.tmp
    blocks, lease = 640, 10  # a lease outlasts a 2.5 s SIGSTOP on the shaped link
    common = ["--vllm-protocol", "gen0", "--blocks", str(blocks), "--allow-peers", args.allow,
              "--api-key", args.key, "--secret-file", args.secret]
    env = {"VLLM_MOONCAKE_BOOTSTRAP_PORT": "8998"}
    prod = Daemon("producer", args.ns_p, [args.serve, "--role", "producer", "--host", args.ip_p,
                  "--http-port", "8100", "--rpc-port", "15100", "--data-port", "15101",
                  "--lease", str(lease)] + common, args.ip_p, 8100, args.key, tmp, env)
    c_kvb = Daemon("consumer-kvb", None, [args.serve, "--role", "consumer", "--host", args.ip_d,
                   "--http-port", "8200", "--rpc-port", "15200", "--data-port", "15201",
                   "--pull-protocol", "kvb"] + common, args.ip_d, 8200, args.key, tmp, env)
    c_vllm = Daemon("consumer-vllm", None, [args.serve, "--role", "consumer", "--host", args.ip_d,
                    "--http-port", "8300", "--rpc-port", "15300", "--data-port", "15301",
                    "--pull-protocol", "vllm"] + common, args.ip_d, 8300, args.key, tmp, env)
    proxy = Daemon("proxy", None, [args.proxy, "--vllm-protocol", "gen0", "--host", args.ip_d, "--port", "8000",
                   "--allow-peers", args.allow, "--api-key", args.proxy_key, "--timeout", "30",
                   "--prefiller-host", args.ip_p, "--prefiller-port", "8100",
                   "--decoder-host", args.ip_d, "--decoder-port", "8200,8300"],
                   args.ip_d, 8000, args.proxy_key, tmp, {"OPENAI_API_KEY": args.key})
    serves = [prod, c_kvb, c_vllm]
    daemons = serves + [proxy]
    reqs = Requests()
    attacks = {}   # kind -> {outcome: count}
    table_rows = {}
    try:
        for d in daemons:
            if not tap.check(d.start(), "%s starts (pid %s)" % (d.name, d.proc.pid if d.proc else "-")):
                return 1
        warm_up(args, daemons, prod, (c_kvb, c_vllm), proxy, reqs, blocks)
        scan(args, daemons, serves, proxy, attacks)
        load_and_storm(args, daemons, serves, proxy, reqs, attacks)
        counted = {d.name: flat(d.stats()) for d in serves}
        for d in daemons:
            table_rows[d.name] = {"fds0": d.warm[0], "rss0": d.warm[1], "fds1": d.fds(), "rss1": d.rss_kb(),
                                  "inst": 1}
        faults(args, daemons, prod, (c_kvb, c_vllm), proxy, reqs, blocks)
        end_checks(args, daemons, serves, proxy, reqs, attacks, table_rows, counted, lease, t_start)
    finally:
        for d in daemons:
            if d.alive():
                d.signal(signal.SIGCONT)
                d.signal(signal.SIGTERM)
        for d in daemons:
            if d.proc:
                try:
                    d.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    d.signal(signal.SIGKILL)
    print("1..%d" % tap.n, flush=True)
    return 1 if tap.failed else 0


def sample(d):
    """This instance's after-warm-up fds and RSS."""
    d.warm = (d.fds(), d.rss_kb())


def warm_up(args, daemons, prod, consumers, proxy, reqs, blocks):
    """Every KV block of every pool touched once (a request the size of the
    pool, straight to the producer and each consumer), then requests through
    the proxy: what follows is measured against this."""
    ok = True
    for c in consumers:
        ok &= full_pool(prod, c, blocks, "warm-" + c.name)
    # the proxy's first requests
    recs = reqs.run(proxy, "warm-up", 32, 8, lambda i: 16 + 40 * i)
    good = sum(1 for r in recs if r.get("verified"))
    tap.check(ok and good == len(recs), "warm-up: a whole-pool transfer to each consumer and %d of %d requests "
              "through the proxy verified" % (good, len(recs)),
              "\n".join(str(r) for r in recs if not r.get("verified"))[:3000])
    time.sleep(0.5)
    for d in daemons:
        sample(d)


def full_pool(prod, cons, blocks, rid, wait=15):
    """A request the size of the pool, prefilled on prod and pulled by cons;
    while prod still holds blocks of a killed peer's pulls (until their lease
    ends) it answers 503, and the request is tried again."""
    deadline = time.time() + wait
    while True:
        st, b = prod.http("POST", "/v1/completions", {"prompt": "x", "kv_transfer_params": {
            "do_remote_decode": True, "kvbridge_tokens": blocks * 16}}, headers={"X-Request-Id": rid}, timeout=30)
        if st != 503 or time.time() > deadline:
            break
        time.sleep(0.5)
    if st != 200:
        tap.note("whole-pool prefill: HTTP %s %s" % (st, b[:300]))
        return False
    params = json.loads(b)["kv_transfer_params"]
    st, b = cons.http("POST", "/v1/completions", {"prompt": "x", "kv_transfer_params": params},
                      headers={"X-Request-Id": rid}, timeout=60)
    if st != 200 or b'"mismatched_bytes":0' not in b:
        tap.note("whole-pool pull from %s: HTTP %s %s" % (cons.name, st, b[:300]))
        return False
    return True


def targets(args, daemons, serves, role, me):
    """Every listening port of every daemon, read from /proc, with its kind."""
    ports = []
    registered = {}
    for d in daemons:
        kinds = {d.http_port: "http"}
        if d in serves:
            st = d.stats()
            kinds[int(st["segment"].rsplit(":", 1)[1])] = "handshake"
            kinds[st["data_port"]] = "data"
            if st.get("side_channel_port"):
                kinds[st["side_channel_port"]] = "zmq"
            lay = json.loads(d.http("GET", "/layout")[1])
            regs = lay["regions"]
            registered[d.name] = [regs[0]["base"], regs[len(regs) // 2]["base"] + 5 * regs[0]["block_stride"],
                                  regs[-1]["base"] + regs[-1]["block_stride"] * (regs[-1]["num_blocks"] - 1)]
        for host, port in sorted(set(d.listening())):
            ports.append({"daemon": d.name, "host": host, "port": port, "kind": kinds.get(port, "other")})
    return {"role": role, "me": me, "ports": ports, "registered": registered}


def in_ns(ns, *cmd, timeout=120):
    return subprocess.run(["ip", "netns", "exec", ns] + list(cmd), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def attack_run(args, ns, mode, conf, name):
    path = os.path.join(args.tmp, name + ".json")
    with open(path, "w") as f:
        json.dump(conf, f)
    out = os.path.join(args.tmp, name + ".out.json")
    r = in_ns(ns, sys.executable, os.path.join(HERE, "attacks.py"), mode, path, out)
    if r.returncode:
        tap.note("%s: exit %d\n%s" % (name, r.returncode, r.stdout.decode(errors="replace")[-2000:]))
        return None
    with open(out) as f:
        return json.load(f)


def count(attacks, kind, outcome, n=1):
    k = attacks.setdefault(kind, {})
    k[outcome] = k.get(outcome, 0) + n


def scan(args, daemons, serves, proxy, attacks):
    before = {d.name: flat(d.stats()) for d in serves}
    pbefore = json.loads(proxy.http("GET", "/stats")[1])
    conf = targets(args, daemons, serves, "outsider", args.ip_o)
    kinds = sorted(set((p["daemon"], p["kind"]) for p in conf["ports"]))
    tap.note("listening: " + ", ".join("%s %s:%d (%s)" % (p["daemon"], p["host"], p["port"], p["kind"])
                                       for p in conf["ports"]))
    want = {(d.name, "http") for d in daemons} | {(d.name, k) for d in serves for k in ("handshake", "data")} \
        | {("producer", "zmq")}
    tap.check(want <= set(kinds) and all(p["host"] != "0.0.0.0" for p in conf["ports"]),
              "every daemon's ports found in /proc, none on every interface (%d ports)" % len(conf["ports"]),
              "missing %s" % (want - set(kinds)))
    res = attack_run(args, args.ns_o, "scan", conf, "scan-outsider")
    if not tap.check(res is not None, "outsider scan ran"):
        return
    bad = [r for r in res if not r["refused"]]
    for r in res:
        count(attacks, "scan, outsider: " + r["probe"].split(" registered")[0].split(" unregistered")[0],
              "refused" if r["refused"] else "ANSWERED")
    tap.check(not bad, "outsider %s: %d probes at %d ports (HTTP, Mooncake handshake, kvbridge hello, TCP READ/WRITE "
              "at registered and unregistered addresses, ZMQ): nothing came back" % (args.ip_o, len(res), len(conf["ports"])),
              "\n".join(json.dumps(r) for r in bad))
    mid = {d.name: flat(d.stats()) for d in serves}
    pmid = json.loads(proxy.http("GET", "/stats")[1])
    grew = {n: mid[n]["peers_refused"] - before[n]["peers_refused"] for n in mid}
    grew["proxy"] = pmid.get("peers_refused", 0) - pbefore.get("peers_refused", 0)
    tap.check(all(v >= 10 for v in grew.values()), "the outsider's connections were counted (peers_refused +%s)" %
              ", +".join("%d %s" % (v, n) for n, v in grew.items()))

    conf = targets(args, daemons, serves, "insider", args.ip_i)
    res = attack_run(args, args.ns_i, "scan", conf, "scan-insider")
    if not tap.check(res is not None, "insider scan ran"):
        return
    controls = [r for r in res if r["refused"] is None]
    tap.check(controls and all(r["detail"] == 200 for r in controls),
              "insider %s reaches every daemon: /health 200 on %d HTTP ports" % (args.ip_i, len(controls)),
              "\n".join(json.dumps(r) for r in controls))
    res = [r for r in res if r["refused"] is not None]
    for r in res:
        count(attacks, "scan, insider: " + r["probe"], "refused" if r["refused"] else "GOT THROUGH")
    for what, pred in (("HTTP without the key (or with a wrong one): 401", lambda r: r["kind"] == "http"),
                       ("TCP READ/WRITE at registered and unregistered addresses outside a pull: refused",
                        lambda r: r["kind"] == "data"),
                       ("kvbridge stream without the secret (a frame before the proof, a forged proof): refused",
                        lambda r: r["kind"] == "handshake"),
                       ("side channel, bad message: answered with an error", lambda r: r["kind"] == "zmq")):
        sel = [r for r in res if pred(r)]
        bad = [r for r in sel if not r["refused"]]
        tap.check(sel and not bad, "insider: %s (%d probes)" % (what, len(sel)), "\n".join(json.dumps(r) for r in bad))
    after = {d.name: flat(d.stats()) for d in serves}

    def delta(n, k):
        return after[n][k] - mid[n][k]
    n_regs = len(conf["registered"]["producer"])
    tap.check(all(delta(n, "window_refused") >= 4 * n_regs for n in after),
              "window_refused grew on every worker (+%s)" % ", +".join("%d %s" % (delta(n, "window_refused"), n)
                                                                     for n in after))
    tap.check(all(delta(n, "auth_failures") >= 2 for n in after),
              "auth_failures grew on every worker (+%s)" % ", +".join("%d %s" % (delta(n, "auth_failures"), n)
                                                                    for n in after))
    same = ("tcp_bytes_in", "tcp_bytes_out", "tcp_requests_served", "served_ok", "served_failed", "streams_opened",
            "blocks_held", "producer_live", "consumer_live", "transfers_ok", "transfers_failed", "bytes_sent")
    changed = ["%s %s %s -> %s" % (n, k, before[n][k], after[n][k]) for n in after for k in same
               if before[n][k] != after[n][k]]
    tap.check(not changed, "nothing changed: no byte written or read, no stream, no transfer, no block taken",
              "\n".join(changed))


def load_and_storm(args, daemons, serves, proxy, reqs, attacks):
    stop = os.path.join(args.tmp, "storm.stop")
    storms = []
    for role, ns, me, seed in (("insider", args.ns_i, args.ip_i, 1), ("outsider", args.ns_o, args.ip_o, 2)):
        conf = targets(args, daemons, serves, role, me)
        conf.update(stop_file=stop, seed=seed * 7919, idle_per_port=4)
        path = os.path.join(args.tmp, "storm-%s.json" % role)
        with open(path, "w") as f:
            json.dump(conf, f)
        out = os.path.join(args.tmp, "storm-%s.out.json" % role)
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, os.path.join(HERE, "attacks.py"),
                              "storm", path, out], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        storms.append((role, p, out))
    time.sleep(1.0)
    t0 = time.time()
    recs = reqs.run(proxy, "load", args.requests, 32, lambda i: 8 + (i * 37) % 160,
                    min_s=args.load_seconds, timeout=60)
    took = time.time() - t0
    with open(stop, "w"):
        pass
    results = {}
    for role, p, out in storms:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
        if os.path.exists(out):
            with open(out) as f:
                results[role] = json.load(f)
        else:
            tap.note("%s storm: no result\n%s" % (role, p.stdout.read().decode(errors="replace")[-2000:]))
    good = sum(1 for r in recs if r.get("verified"))
    tap.check(len(recs) >= args.requests and good == len(recs),
              "load under attack: %d of %d requests at 32 concurrent verified in %.1f s (kvbridge stream and "
              "Gen 0 side channel)" % (good, len(recs), took),
              "\n".join(json.dumps(r) for r in recs if not r.get("verified"))[:3000])
    tap.check(set(results) == {"insider", "outsider"}, "both attackers' storms ran and reported")
    through = []
    total = 0
    for role, res in results.items():
        for kind, outs in res.items():
            for o, v in outs.items():
                count(attacks, "storm, %s: %s" % (role, kind.replace("outsider ", "")), o, v)
                total += v
                if "ANSWERED" in o or "other reply" in o:
                    through.append("%s %s: %s x%d" % (role, kind, o, v))
    tap.check(not through and total > 200, "the storm (%d attacks): nothing answered the outsider; the insider's "
              "malformed input refused" % total, "\n".join(through))
    # an outsider holds no descriptor anywhere, the ZMQ side channel (which
    # accepts before anyone can look) included
    idle = {k: v for k, v in results.get("outsider", {}).items() if "idle connection" in k}
    held = sorted("%s: %d" % (k, v["open at the end"]) for k, v in idle.items() if v.get("open at the end"))
    tap.check(idle and not held, "the outsider's idle connections were shut down on every port, the ZMQ side "
              "channel included (%d connections)" % sum(sum(v.values()) for v in idle.values()), "\n".join(held))
    tap.check(all(d.alive() for d in daemons) and all(d.http("GET", "/health", key=False)[0] == 200 for d in daemons),
              "every daemon alive and healthy after the storm")


def shape(args, rate):
    dev = args.dev_p
    if rate:
        cmd = ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "64kb", "latency", "400ms"]
    else:
        cmd = ["tc", "qdisc", "del", "dev", dev, "root"]
    in_ns(args.ns_p, *cmd)


def faults(args, daemons, prod, consumers, proxy, reqs, blocks):
    """SIGSTOP then SIGCONT, and SIGKILL then a restart on the same ports, of
    each daemon while requests cross the shaped link."""
    c_kvb = consumers[0]
    plan = [(prod, signal.SIGSTOP), (c_kvb, signal.SIGSTOP), (proxy, signal.SIGSTOP),
            (c_kvb, signal.SIGKILL), (proxy, signal.SIGKILL), (prod, signal.SIGKILL)]
    for victim, sig in plan:
        phase = "%s %s" % (signal.Signals(sig).name, victim.name)
        shape(args, "200mbit")  # a 2000-token request (24.6 MB) takes about 1 s alone
        ths = []
        for i in range(4):
            th = threading.Thread(target=reqs.send, args=(proxy, phase, 1500 + 250 * i, 30))
            th.start()
            ths.append(th)
            time.sleep(0.05)
        time.sleep(0.8)
        live = flat(prod.stats()) if prod.alive() else {}
        mid = live.get("producer_live", 0) + live.get("blocks_held", 0)
        victim.signal(sig)
        if sig == signal.SIGSTOP:
            time.sleep(2.5)
            victim.signal(signal.SIGCONT)
        else:
            victim.proc.wait(timeout=5)
            restarted = victim.start()
        for th in ths:
            th.join(timeout=45)
        shape(args, None)
        recs = [r for r in reqs.all if r["phase"] == phase]
        hung = [r for r in recs if r["status"] == "hung"]
        noreason = [r for r in recs if not r.get("reason")]
        outcome = ", ".join(sorted("%s" % (r["status"]) for r in recs))
        tap.check(len(recs) == 4 and not hung and not noreason and mid > 0,
                  "%s mid-transfer (%d blocks in flight): every request answered with a reason (%s)%s" %
                  (phase, mid, outcome, "; restarted on the same ports" if sig == signal.SIGKILL else ""),
                  "\n".join(json.dumps(r) for r in recs))
        if sig == signal.SIGKILL:
            if victim is prod:
                restarted &= full_pool(prod, consumers[1], blocks, "rewarm-producer")
            elif victim in consumers:
                restarted &= full_pool(prod, victim, blocks, "rewarm-" + victim.name)
            tap.check(restarted, "%s restarted on the same ports%s" % (
                victim.name, "" if victim is proxy else "; a whole-pool transfer through it verified"))
        after = reqs.run(proxy, "after " + phase, 6, 3, lambda i: 100 + 300 * i, timeout=30)
        good = sum(1 for r in after if r.get("verified"))
        tap.check(good == len(after), "after %s: %d of %d requests verified" % (phase, good, len(after)),
                  "\n".join(json.dumps(r) for r in after if not r.get("verified")))
        if sig == signal.SIGKILL:
            time.sleep(0.3)
            sample(victim)


def end_checks(args, daemons, serves, proxy, reqs, attacks, rows, counted, lease, t_start):
    time.sleep(lease + 1.5)
    stats = {d.name: flat(d.stats()) for d in serves}
    held = {n: (s["blocks_held"], s["producer_live"], s["consumer_live"]) for n, s in stats.items()}
    tap.check(all(v == (0, 0, 0) for v in held.values()),
              "after the leases: 0 blocks held, no request live on any worker (%s)" %
              ", ".join("%s %s" % (n, v[0]) for n, v in held.items()))
    wrong = sum(s["mismatched_bytes"] for n, s in stats.items()) + sum(r.get("bytes_wrong", 0) for r in reqs.all)
    tap.check(wrong == 0, "0 bytes wrong (mismatched_bytes summed over consumers and answers)")
    hung = [r for r in reqs.all if r["status"] == "hung"]
    noreason = [r for r in reqs.all if r["status"] != 200 and not r.get("reason")]
    tap.check(not hung and not noreason, "every request terminal with a reason (%d sent)" % len(reqs.all),
              "\n".join(json.dumps(r) for r in hung + noreason))
    for d in daemons:
        r = rows.setdefault(d.name, {})
        r.update(fds2=d.fds(), rss2=d.rss_kb(), fds_w=d.warm[0], rss_w=d.warm[1], inst=d.starts,
                 log=d.log_lines())
    bounded = []
    for n, r in rows.items():
        if r["fds1"] > r["fds0"] + FD_SLACK or r["rss1"] > r["rss0"] + RSS_SLACK_KB:
            bounded.append("%s first instance: fds %d -> %d, RSS %d -> %d kB" % (n, r["fds0"], r["fds1"],
                                                                                r["rss0"], r["rss1"]))
        if r["fds2"] > r["fds_w"] + FD_SLACK or r["rss2"] > r["rss_w"] + RSS_SLACK_KB:
            bounded.append("%s now: fds %d -> %d, RSS %d -> %d kB" % (n, r["fds_w"], r["fds2"], r["rss_w"], r["rss2"]))
    tap.check(not bounded, "file descriptors within +%d and RSS within +%d MiB of after warm-up, every daemon" %
              (FD_SLACK, RSS_SLACK_KB // 1024), "\n".join(bounded))
    quiet = {d.name: d.log_lines() for d in daemons}
    supp = {n: s["warnings_suppressed"] for n, s in stats.items()}
    tap.check(all(v < 400 for v in quiet.values()), "no warning storm: log lines %s; warnings held back %s" %
              (quiet, supp))
    with open(os.path.join(args.tmp, "requests.json"), "w") as f:
        json.dump(reqs.all, f, indent=0)
    table = render(reqs, attacks, rows, stats, counted, wrong, time.time() - t_start)
    with open(args.table, "w") as f:
        f.write(table)
    tap.note(table)


def render(reqs, attacks, rows, stats, counted, wrong, took):
    out = ["chaos and security suite: %.0f s" % took, ""]
    out.append("%-28s %6s %8s %18s %5s" % ("requests", "sent", "verified", "failed with reason", "hung"))
    phases = []
    for r in reqs.all:
        if r["phase"] not in phases:
            phases.append(r["phase"])
    groups = {}
    for p in phases:
        g = "after faults" if p.startswith("after ") else p
        groups.setdefault(g, []).extend(r for r in reqs.all if r["phase"] == p)
    tot = [0, 0, 0, 0]
    for g, rs in groups.items():
        v = [len(rs), sum(1 for r in rs if r.get("verified")),
             sum(1 for r in rs if not r.get("verified") and r["status"] != "hung" and r.get("reason")),
             sum(1 for r in rs if r["status"] == "hung")]
        tot = [a + b for a, b in zip(tot, v)]
        out.append("%-28s %6d %8d %18d %5d" % ((g,) + tuple(v)))
    out.append("%-28s %6d %8d %18d %5d" % (("total",) + tuple(tot)))
    reasons = {}
    for r in reqs.all:
        if not r.get("verified"):
            k = "%s: %s" % (r["status"], r.get("reason", "")[:150])
            reasons[k] = reasons.get(k, 0) + 1
    if reasons:
        out.append("")
        out.append("failures by reason:")
        for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]):
            out.append("  %4d  %s" % (v, k))
    out.append("")
    out.append("%-52s %6s %8s  %s" % ("attacks (kind)", "sent", "refused", "outcomes"))
    tot_s = tot_r = 0
    for kind in sorted(attacks):
        outs = attacks[kind]
        sent = sum(outs.values())
        bad = sum(v for o, v in outs.items() if o in ("ANSWERED", "GOT THROUGH", "other reply"))
        tot_s += sent
        tot_r += sent - bad
        out.append("%-52s %6d %8d  %s" % (kind[:52], sent, sent - bad,
                                          ", ".join("%s %d" % (o, v) for o, v in sorted(outs.items()))))
    out.append("%-52s %6d %8d" % ("total", tot_s, tot_r))
    out.append("")
    out.append("bytes wrong: %d    blocks leaked: %d" % (wrong, sum(s["blocks_held"] for s in stats.values())))
    out.append("refusals the workers counted (first runs, before the faults):")
    for n, s in counted.items():
        out.append("  %-14s peers_refused %6d  window_refused %4d  auth_failures %3d  warnings_suppressed %6d  "
                   "malformed_messages %d  handshake_errors %d  tcp_requests_rejected %d" %
                   (n, s["peers_refused"], s["window_refused"], s["auth_failures"], s["warnings_suppressed"],
                    s["malformed_messages"], s["handshake_errors"], s["tcp_requests_rejected"]))
    out.append("")
    out.append("%-14s %5s | %15s %17s | %15s %17s | %5s" % ("daemon", "runs", "fds warm->after", "RSS MiB warm->after",
                                                          "fds (last run)", "RSS MiB (last run)", "log"))
    for n, r in rows.items():
        out.append("%-14s %5d | %6d -> %-6d %7.1f -> %-7.1f | %6d -> %-6d %7.1f -> %-7.1f | %5d" % (
            n, r["inst"], r["fds0"], r["fds1"], r["rss0"] / 1024, r["rss1"] / 1024,
            r["fds_w"], r["fds2"], r["rss_w"] / 1024, r["rss2"] / 1024, r["log"]))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())

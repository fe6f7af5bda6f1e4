"""Stock vLLM only: a MooncakeConnector P/D pair of one release must give the tokens of
a single instance, with the prompt's KV pulled from P, and a P serving other weights
must change them.  Proves the harness (tests/vllm/harness.py) before kvbridge sits
between real vLLM processes.  Prints TAP (plan at the end).

Usage: stock_smoke.py --work DIR RELEASE...    (python3: stdlib only)

Per release, four servers at once (about 3 GiB each): a reference without a connector,
P1 (kv_producer, checkpoint seed 1), P2 (kv_producer, seed 2: the negative control)
and D (kv_consumer, seed 1).  Prompts of 5, 40, 100, 300 and 480 random token ids
(fixed seed) go through the release's router contract (Gen 2: concurrent legs with a
transfer_id; Gen 0: P first, its kv_transfer_params to D); D must answer the
reference's 16 greedy tokens with every top-5 logprob within 1e-3, and D's metrics
must count every prompt token as pulled, none as computed.  Then the same prompts
from P2: D must differ from the reference for at least one, with the KV still
pulled (so the check above could fail).  A release that is not installed or whose
servers do not start is skipped, saying why; if none runs, exit 77.
"""
import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

LENGTHS = (5, 40, 100, 300, 480)
MAX_TOKENS = 16
TOL = 1e-3

n = 0
failed = 0
skipped = []


def tap(cond, what):
    global n, failed
    n += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (n, what), flush=True)
    if not cond:
        failed += 1
    return cond


def diag(text):
    for line in str(text).splitlines():
        print("# " + line, flush=True)


def route(release, p, d):
    if h.wire_gen(release) == 0:
        return h.Gen0Router(p.url, d.url)
    return h.Gen2Router(p.url, p.bootstrap_url, d.url)


def run(release, work):
    global n
    t0 = time.monotonic()
    gen = h.wire_gen(release)
    if gen not in (0, 2):
        raise h.Skip("vllm %s speaks Gen %s; this smoke covers Gen 0 and Gen 2" % (release, gen))
    h.venv_python(release)
    top = os.path.join(work, release)
    ck1 = h.make_checkpoint(release, os.path.join(top, "ckpt-seed1"), 1)
    ck2 = h.make_checkpoint(release, os.path.join(top, "ckpt-seed2"), 2)
    ref = h.Server(release, ck1, top, "ref")
    p1 = h.Server(release, ck1, top, "p1", kv_role="kv_producer")
    p2 = h.Server(release, ck2, top, "p2", kv_role="kv_producer")
    d = h.Server(release, ck1, top, "d", kv_role="kv_consumer")
    servers = [ref, p1, p2, d]
    try:
        try:
            ready = h.start_all(servers, timeout=420)
        except h.StartError as e:
            raise h.Skip("vllm %s did not start: %s" % (release, e))
        t_ready = time.monotonic() - t0
        diag("vllm %s: 4 servers healthy in %.0f s (%s), block size %d"
             % (release, t_ready, ", ".join("%s %.0f s" % (s.name, r) for s, r in zip(servers, ready)),
                d.block_size))

        rng = random.Random(20261206)
        prompts = [h.random_prompt(rng, k) for k in LENGTHS]
        refs = [h.complete(ref.url, ids, MAX_TOKENS) for ids in prompts]
        tap(all(len(r.token_ids) == MAX_TOKENS and len(r.top_logprobs) == MAX_TOKENS for r in refs),
            "vllm %s: the reference answers %d tokens with top-5 logprobs" % (release, MAX_TOKENS))
        before = h.external_kv_tokens(d) or 0.0

        router = route(release, p1, d)
        t_req = time.monotonic()
        for ids, want in zip(prompts, refs):
            try:
                got = router.complete(ids, MAX_TOKENS)
            except Exception as e:  # the check fails, the rest still runs
                tap(False, "vllm %s: %d-token prompt through P1 -> D: %s" % (release, len(ids), e))
                continue
            bad = h.compare(want, got, TOL)
            p_ok = not isinstance(got.prefill, Exception)
            tap(bad is None and p_ok,
                "vllm %s: %d-token prompt through P1 -> D equals the reference (%d tokens, "
                "logprobs max diff %.2g)" % (release, len(ids), len(got.token_ids),
                                             h.max_logprob_diff(want, got)))
            if bad:
                diag(bad)
            if not p_ok:
                diag("P's leg: %s" % got.prefill)
        t_req = time.monotonic() - t_req

        pulled = (h.external_kv_tokens(d) or 0.0) - before
        total = sum(LENGTHS)
        tap(pulled == total,
            "vllm %s: D's metrics count all %d prompt tokens as pulled over the connector (%g)"
            % (release, total, pulled))
        by_source = h.prompt_tokens_by_source(d)
        if by_source:
            tap(by_source.get("local_compute", 0.0) == 0.0,
                "vllm %s: D computed no prompt token itself (%s)" % (release, by_source))

        router2 = route(release, p2, d)
        differ = 0
        before2 = h.external_kv_tokens(d) or 0.0
        for ids, want in zip(prompts, refs):
            got = router2.complete(ids, MAX_TOKENS)
            differ += h.compare(want, got, TOL) is not None
        pulled2 = (h.external_kv_tokens(d) or 0.0) - before2
        tap(differ >= 1 and pulled2 == total,
            "vllm %s: negative control: KV from P2 (seed 2) changes D's answer for %d of %d "
            "prompts (%g tokens pulled)" % (release, differ, len(prompts), pulled2))
        diag("vllm %s: %d prompts through P1 -> D in %.1f s; total %.0f s"
             % (release, len(prompts), t_req, time.monotonic() - t0))
    finally:
        t_stop = time.monotonic()
        try:
            h.stop_all(servers)
            stopped = True
        except RuntimeError as e:
            stopped = False
            diag(e)
        if any(s.proc for s in servers):
            left = [s.name for s in servers if s.pids()]
            ipc = [s.name for s in servers if os.path.exists(os.path.join(s.dir, "ipc"))]
            tap(stopped and not left and not ipc,
                "vllm %s: all servers stopped in %.1f s, no process or IPC socket left"
                % (release, time.monotonic() - t_stop))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("releases", nargs="+")
    a = ap.parse_args()
    h.stop_on_signals()
    for r in a.releases:
        try:
            run(r, os.path.abspath(a.work))
        except h.Skip as e:
            skipped.append(r)
            tap(True, "vllm %s # SKIP %s" % (r, str(e).splitlines()[0]))
            diag(e)
    print("1..%d" % n, flush=True)
    if failed:
        return 1
    return 77 if len(skipped) == len(a.releases) else 0


if __name__ == "__main__":
    sys.exit(main())

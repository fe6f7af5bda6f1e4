"""Check a relay's layout conversion: a consumer's dump against the
producer's pattern moved token by token.

The producer (kvbridge-serve) filled each block of a request with the test
pattern of its transfer id (patterns.py), in its own layout; the relay
moved every token's K and V of every head into the consumer's layout; the
consumer dumped what it received (--dump-dir: regions after each other,
blocks in request order).  Layouts as kvb_model_layout_kv makes them, bytes in each block as vLLM's CPU
attention kernels keep them (tests/vllm/README.md):
  packed  one region a layer; per head K as [dim][token], then V as
          [token][dim]
  split   K and V regions a layer (K0, V0, K1, V1, ...); K region
          [head][dim][token], V region [head][token][dim]
Usage: kvconv.py DUMP TRANSFER_ID TOKENS PRODUCER_LAYOUT_JSON CONSUMER_LAYOUT_JSON
Exit 0 when every byte of every token is where it belongs.
"""
import json
import sys

import patterns


def where(lay, layer, v, h, s, d):
    D, bt, es = lay["head_dim"], lay["block_tokens"], lay["dtype_bytes"]
    if lay["kv_layout"] == "split":
        return 2 * layer + v, ((h * bt + s) * D + d if v else (h * D + d) * bt + s) * es
    return layer, (h * 2 * bt * D + (bt * D + s * D + d if v else d * bt + s)) * es


def main():
    dump_path, tid, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    p, d = json.loads(sys.argv[4]), json.loads(sys.argv[5])
    dump = open(dump_path, "rb").read()
    es = d["dtype_bytes"]
    heads = d["kv_heads"]
    p_blocks = {}
    seed = patterns.request_seed(tid)

    def p_block(region, k):
        if (region, k) not in p_blocks:
            n = p["regions"][region]["block_bytes"]
            # kvbridge-serve counts a block's pattern position from the last
            n_p = (tokens + p["block_tokens"] - 1) // p["block_tokens"]
            p_blocks[(region, k)] = patterns.block_fill(patterns.block_seed(seed, region, n_p - 1 - k), n)
        return p_blocks[(region, k)]

    n_d = (tokens + d["block_tokens"] - 1) // d["block_tokens"]
    d_bb = d["regions"][0]["block_bytes"]
    want_len = len(d["regions"]) * n_d * d_bb
    if len(dump) != want_len:
        print("dump holds %d bytes, want %d" % (len(dump), want_len))
        return 1
    bad = 0
    for t in range(tokens):
        for layer in range(d["layers"]):
            for v in (0, 1):
                for h in range(heads):
                    for dim in range(d["head_dim"]):
                        pr, po = where(p, layer, v, h, t % p["block_tokens"], dim)
                        dr, do = where(d, layer, v, h, t % d["block_tokens"], dim)
                        src = p_block(pr, t // p["block_tokens"])[po:po + es]
                        at = (dr * n_d + t // d["block_tokens"]) * d_bb + do
                        if dump[at:at + es] != src:
                            bad += 1
    print("%s: %d tokens, %d elements differ" % (tid, tokens, bad))
    return 0 if bad == 0 else 1


sys.exit(main())

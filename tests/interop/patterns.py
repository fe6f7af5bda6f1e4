"""The byte patterns kvbridge's tools write, recomputed in Python, so an
interop test can check bytes that crossed between kvbridge and another
engine without trusting either side's own report."""
import struct

M64 = (1 << 64) - 1


def bench_fill(seed, length):
    """kvbridge-bench's buffer pattern (src/tools/kvbridge_bench.c fill())."""
    out = bytearray(length)
    x = (seed * 0x9E3779B97F4A7C15 + 1) & M64
    words = length // 8
    for i in range(words):
        x ^= (x << 13) & M64
        x ^= x >> 7
        x ^= (x << 17) & M64
        struct.pack_into("<Q", out, i * 8, x)
    for i in range(words * 8, length):
        out[i] = (seed + i) & 0xFF
    return bytes(out)


def mix(x):
    """splitmix64's finalizer (src/tools/kvb_pattern.h kvb_pattern_mix)."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def request_seed(request_id):
    h = 0xCBF29CE484222325
    for c in request_id.encode():
        h = ((h ^ c) * 0x100000001B3) & M64
    return h


def block_seed(req_seed, region, k):
    return mix(req_seed ^ (region << 40) ^ k)


def block_fill(seed, length):
    """kvb_pattern_fill: 8 bytes of mix(seed ^ word index) per word."""
    out = bytearray(length)
    for w in range((length + 7) // 8):
        v = mix(seed ^ w)
        chunk = struct.pack("<Q", v)
        n = min(8, length - w * 8)
        out[w * 8:w * 8 + n] = chunk[:n]
    return bytes(out)

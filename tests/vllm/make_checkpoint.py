"""Write a seeded random tiny Qwen2ForCausalLM checkpoint (no download).

Usage: make_checkpoint.py DIR --seed N

DIR gets config.json and model.safetensors (bfloat16, about 12 MB): 2 layers,
hidden 512, intermediate 1024, 16 heads, 16 KV heads (head dim 32), vocab 1024,
an untied lm_head.  Embeddings are N(0, 1), projection weights N(0, 1/fan_in),
biases 0, norms 1.0.

Why not vLLM's --load-format dummy: the dummy loader fills every tensor from
one fixed seed whatever --seed says, and its outputs then depend on the last
prompt token only, so a test comparing tokens passes with no KV moved at all.
With these weights the output depends on the whole context, and two seeds give
two different models (the negative control).

Needs only numpy (both vLLM venvs have it): the safetensors file is written
here (8-byte header length, JSON header, raw little-endian data), so the
checkpoint does not depend on which torch or safetensors is installed.  The
same seed gives the same bytes for a given numpy (the tests build a checkpoint
once and serve it from every instance); --check prints the file's sha256.
"""
import argparse
import hashlib
import json
import os
import struct
import sys

import numpy as np

LAYERS = 2
HIDDEN = 512
INTER = 1024
HEADS = 16
KV_HEADS = 16
HEAD_DIM = HIDDEN // HEADS
VOCAB = 1024


def config():
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "max_window_layers": LAYERS,
        "use_sliding_window": False,
        "sliding_window": None,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "use_cache": True,
    }


def to_bf16(a):
    """float32 -> bfloat16 bits (uint16), round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype("<u2")


def tensors(seed):
    rng = np.random.default_rng(seed)
    out = {}

    def normal(shape, std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def proj(name, rows, cols, bias=False):
        out[name + ".weight"] = normal((rows, cols), cols ** -0.5)
        if bias:
            out[name + ".bias"] = np.zeros(rows, np.float32)

    out["model.embed_tokens.weight"] = normal((VOCAB, HIDDEN), 1.0)
    for i in range(LAYERS):
        p = "model.layers.%d." % i
        out[p + "input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        out[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        proj(p + "self_attn.q_proj", HEADS * HEAD_DIM, HIDDEN, bias=True)
        proj(p + "self_attn.k_proj", KV_HEADS * HEAD_DIM, HIDDEN, bias=True)
        proj(p + "self_attn.v_proj", KV_HEADS * HEAD_DIM, HIDDEN, bias=True)
        proj(p + "self_attn.o_proj", HIDDEN, HEADS * HEAD_DIM)
        proj(p + "mlp.gate_proj", INTER, HIDDEN)
        proj(p + "mlp.up_proj", INTER, HIDDEN)
        proj(p + "mlp.down_proj", HIDDEN, INTER)
    out["model.norm.weight"] = np.ones(HIDDEN, np.float32)
    proj("lm_head", VOCAB, HIDDEN)
    return out


def write_safetensors(path, named):
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    off = 0
    for name in sorted(named):
        b = to_bf16(named[name]).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(named[name].shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # the data starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--check", action="store_true", help="print the sha256 of model.safetensors")
    a = ap.parse_args(argv)
    os.makedirs(a.dir, exist_ok=True)
    with open(os.path.join(a.dir, "config.json"), "w") as f:
        json.dump(config(), f, indent=1)
        f.write("\n")
    st = os.path.join(a.dir, "model.safetensors")
    write_safetensors(st, tensors(a.seed))
    if a.check:
        with open(st, "rb") as f:
            print(hashlib.sha256(f.read()).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

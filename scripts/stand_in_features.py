#!/usr/bin/env python3
"""Which inputs could a cheap stand-in use? A side study for docs/STAND-INS.md.

For a few layers of SmolLM2-135M (default: 5, 14 and 15, the layers the shipped router skips
at budget 0.9) it records, at full depth, each layer's input h and its update y = out - h on
WikiText-2 512-token chunks 0-13 (fit) and 14-19 (validation; the stand-ins' own ranges),
every 2nd token, and reports the validation R^2 (rows weighted 1/mean(h^2), as
`buddy calibrate stand-ins` weighs them) of ridge regressions (relative ridge 0.1, full rank)
of y on:

  linear        h/rms(h), the shipped stand-ins' input
  +mlp N        plus N of the layer's own MLP hidden units computed on h (the input before
                attention), the N with the largest mean |activation| on the fit rows
  +own mlp      plus the layer's whole MLP output on h (costs ~75 % of a layer)
  +own attn     plus the layer's own attention output (an upper bound, costs the attention)
  +attn l-1     plus the attention output of the layer before (free when that layer ran)
  +ctx mean     plus the running mean of h/rms(h) over the positions so far (O(1) per token)

A numpy float32 re-implementation of the forward pass (weights dequantised by the `gguf`
package, tokens from llama-cpp-python: development tools, not product dependencies).
    python3 scripts/stand_in_features.py [layers]      # about 3 minutes on one core
"""
import os, sys
import numpy as np
import gguf
from llama_cpp import Llama

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(root, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
DATA = os.path.join(root, "..", "shared", "data", "wikitext2_valid.txt")
DIM, HEADS, KV_HEADS, HEAD_DIM, LAYERS, ROPE_BASE, EPS = 576, 9, 3, 64, 30, 100000.0, 1e-5

reader = gguf.GGUFReader(MODEL)
tensors = {t.name: t for t in reader.tensors}


def weight(name):
    t = tensors[name]
    a = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    return a.reshape([int(x) for x in reversed(t.shape)]) if a.ndim == 1 else a


embedding = weight("token_embd.weight")
layers = [{k: weight(f"blk.{l}.{n}.weight") for k, n in
           [("attn_norm", "attn_norm"), ("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output"),
            ("ffn_norm", "ffn_norm"), ("gate", "ffn_gate"), ("up", "ffn_up"), ("down", "ffn_down")]}
          for l in range(LAYERS)]


def rms_norm(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w


def rope(x):  # [n, heads, 64], rotating adjacent pairs (llama.cpp's layout for this model)
    n = x.shape[0]
    angle = np.arange(n)[:, None] * ROPE_BASE ** (-2 * np.arange(HEAD_DIM // 2)[None, :] / HEAD_DIM)
    c, s = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    out[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
    return out


def attention(ly, h):
    n = h.shape[0]
    x = rms_norm(h, ly["attn_norm"])
    q = rope((x @ ly["q"].T).reshape(n, HEADS, HEAD_DIM))
    k = np.repeat(rope((x @ ly["k"].T).reshape(n, KV_HEADS, HEAD_DIM)), HEADS // KV_HEADS, axis=1)
    v = np.repeat((x @ ly["v"].T).reshape(n, KV_HEADS, HEAD_DIM), HEADS // KV_HEADS, axis=1)
    s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(HEAD_DIM) + np.triu(np.full((n, n), -1e30, np.float32), 1)[None]
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, v).reshape(n, DIM) @ ly["o"].T


def mlp_hidden(ly, h):
    x = rms_norm(h, ly["ffn_norm"])
    g = x @ ly["gate"].T
    return g / (1 + np.exp(-g)) * (x @ ly["up"].T)


def validation_r2(features, y, weights, n_fit, ridge=0.1):
    f, t, w = features[:n_fit], y[:n_fit], weights[:n_fit]
    mf, mt = (f * w[:, None]).sum(0) / w.sum(), (t * w[:, None]).sum(0) / w.sum()
    fc, tc = (f - mf) * np.sqrt(w)[:, None], (t - mt) * np.sqrt(w)[:, None]
    c = fc.T @ fc
    b = np.linalg.solve(c + ridge * np.trace(c) / c.shape[0] * np.eye(c.shape[0]), fc.T @ tc)
    fv, tv, wv = features[n_fit:], y[n_fit:], weights[n_fit:]
    err = ((tv - (fv - mf) @ b - mt) ** 2).sum(1) @ wv
    total = ((tv - (tv * wv[:, None]).sum(0) / wv.sum()) ** 2).sum(1) @ wv
    return 1 - err / total


def main():
    watch = [int(a) for a in sys.argv[1].split(",")] if len(sys.argv) > 1 else [5, 14, 15]
    tokenizer = Llama(MODEL, vocab_only=True, verbose=False)
    ids = tokenizer.tokenize(open(DATA, encoding="utf-8").read()[:400000].encode(), add_bos=False)
    rec = {l: {k: [] for k in ("h", "y", "attn", "attn_prev", "ctx")} for l in watch}
    for chunk in range(20):  # 0-13 fit, 14-19 validation
        h = embedding[np.array(ids[chunk * 512:(chunk + 1) * 512])]
        previous_attention = None
        for l in range(LAYERS):
            ly = layers[l]
            a = attention(ly, h)
            out = h + a + mlp_hidden(ly, h + a) @ ly["down"].T
            if l in watch:
                xn = h / np.sqrt((h * h).mean(1, keepdims=True))
                ctx = np.cumsum(xn, 0) / np.arange(1, h.shape[0] + 1)[:, None]
                for key, value in (("h", h), ("y", out - h), ("attn", a), ("attn_prev", previous_attention), ("ctx", ctx)):
                    rec[l][key].append(value[::2])
            previous_attention = a
            h = out
    print("| layer | linear | +mlp 128 | +mlp 256 | +own mlp | +own attn | +attn l-1 | +ctx mean |")
    print("|---|---|---|---|---|---|---|---|")
    for l in watch:
        get = lambda k: np.concatenate(rec[l][k]).astype(np.float64)
        h, y = get("h"), get("y")
        n_fit = sum(x.shape[0] for x in rec[l]["h"][:14])
        weights = 1 / (h * h).mean(1)
        x = h / np.sqrt((h * h).mean(1, keepdims=True))
        hidden = mlp_hidden(layers[l], h.astype(np.float32)).astype(np.float64)
        order = np.argsort(-np.abs(hidden[:n_fit]).mean(0))
        with_ = lambda extra: validation_r2(np.concatenate([x, extra], 1), y, weights, n_fit)
        cells = [validation_r2(x, y, weights, n_fit), with_(hidden[:, order[:128]]), with_(hidden[:, order[:256]]),
                 with_(hidden @ layers[l]["down"].T.astype(np.float64)), with_(get("attn")), with_(get("attn_prev")), with_(get("ctx"))]
        print(f"| {l} | " + " | ".join(f"{v:.3f}" for v in cells) + " |", flush=True)


if __name__ == "__main__":
    main()

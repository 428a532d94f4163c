#!/usr/bin/env python3
"""Would a small learned MLP beat a linear stand-in? A side study for docs/STAND-INS.md.

Records, at full depth, the input h and update y = out - h of layers 5, 14 and 15 of
SmolLM2-135M on WikiText-2 512-token chunks 0-13 (fit) and 14-19 (validation), every 2nd
token (the numpy forward pass of scripts/stand_in_features.py), then reports the validation
R^2 (rows weighted 1/mean(h^2)) of
  linear          the full-rank ridge fit of y on h/rms(h) (relative ridge 0.1)
  linear + mlpH   that fit plus an H-unit SiLU MLP of h/rms(h) trained (Adam, full batch,
                  weight decay 0.01) on its residual; the best validation score of the run
  mlp128 alone    the MLP alone on y
    python3 scripts/stand_in_mlp_study.py      # about 10 minutes on one core
"""
import os, sys
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stand_in_features as S
from llama_cpp import Llama

WATCH = [5, 14, 15]
rng = np.random.default_rng(0)


def record():
    tok = Llama(S.MODEL, vocab_only=True, verbose=False)
    ids = tok.tokenize(open(S.DATA, encoding="utf-8").read()[:400000].encode(), add_bos=False)
    rec = {l: ([], []) for l in WATCH}
    for chunk in range(20):
        h = S.embedding[np.array(ids[chunk * 512:(chunk + 1) * 512])]
        for l in range(max(WATCH) + 1):
            ly = S.layers[l]
            a = S.attention(ly, h)
            out = h + a + S.mlp_hidden(ly, h + a) @ ly["down"].T
            if l in WATCH:
                rec[l][0].append(h[::2]); rec[l][1].append((out - h)[::2])
            h = out
    return {l: (np.concatenate(rec[l][0]).astype(np.float64), np.concatenate(rec[l][1]).astype(np.float64)) for l in WATCH}


def ridge_fit(x, y, w, ridge=0.1):
    xa = np.hstack([x, np.ones((len(x), 1))])
    c = (xa * w[:, None]).T @ xa
    d = c.shape[0] - 1
    c[np.arange(d), np.arange(d)] += ridge * np.trace(c[:d, :d]) / d
    return np.linalg.solve(c, (xa * w[:, None]).T @ y)


def train_mlp(x, r, w, xv, rv, score, hidden, steps=1500, lr=3e-4, wd=1e-2):
    n, d = x.shape
    params = [rng.normal(0, 1 / np.sqrt(d), (d, hidden)).astype(np.float32), np.zeros(hidden, np.float32),
              np.zeros((hidden, d), np.float32), np.zeros(d, np.float32)]
    m1 = [np.zeros_like(p) for p in params]; m2 = [np.zeros_like(p) for p in params]
    ws = (w / w.mean()).astype(np.float32)[:, None]
    best = -np.inf
    for t in range(1, steps + 1):
        w1, b1, w2, b2 = params
        z = x @ w1 + b1; s = 1 / (1 + np.exp(-z)); a = z * s
        g = 2 * (a @ w2 + b2 - r) * ws / n
        gz = (g @ w2.T) * (s * (1 + z * (1 - s)))
        for i, gp in enumerate([x.T @ gz, gz.sum(0), a.T @ g, g.sum(0)]):
            gp = gp + wd * params[i]
            m1[i] = 0.9 * m1[i] + 0.1 * gp; m2[i] = 0.999 * m2[i] + 0.001 * gp * gp
            params[i] -= lr * (m1[i] / (1 - 0.9 ** t)) / (np.sqrt(m2[i] / (1 - 0.999 ** t)) + 1e-8)
        if t % 50 == 0:
            zv = xv @ params[0] + params[1]
            best = max(best, score(zv / (1 + np.exp(-zv)) @ params[2] + params[3], rv))
    return best


def main():
    print("| layer | linear | linear + mlp64 | linear + mlp128 | mlp128 alone |")
    print("|---|---|---|---|---|")
    for l, (h, y) in record().items():
        n_fit = 14 * 256
        w = 1 / (h * h).mean(1)
        x = h / np.sqrt((h * h).mean(1, keepdims=True))
        wv, yv = w[n_fit:], y[n_fit:]
        total = ((yv - (yv * wv[:, None]).sum(0) / wv.sum()) ** 2).sum(1) @ wv
        b = ridge_fit(x[:n_fit], y[:n_fit], w[:n_fit])
        res = y - (x @ b[:-1] + b[-1])
        base = 1 - ((res[n_fit:] ** 2).sum(1) @ wv) / total
        on_residual = lambda p, rv: 1 - (((rv - p) ** 2).sum(1) @ wv) / total
        xf, xv = x[:n_fit].astype(np.float32), x[n_fit:].astype(np.float32)
        cells = [base]
        for hidden in (64, 128):
            cells.append(train_mlp(xf, res[:n_fit].astype(np.float32), w[:n_fit], xv, res[n_fit:], on_residual, hidden))
        cells.append(train_mlp(xf, y[:n_fit].astype(np.float32), w[:n_fit], xv, yv, on_residual, 128))
        print(f"| {l} | " + " | ".join(f"{v:.3f}" for v in cells) + " |", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Which prompt features predict how far a routed reply drifts? A side study for
docs/TRAINING.md ("The prompt's last state as the predictor's features").

Reads the curves `buddy train predictor` measured (its `<out>.curves.json`: per prompt the
features it used and the mean KL at each grid budget) and, for the 40 train-split MT-Bench
chat prompts among them, recomputes hidden states with a numpy float32 forward pass (the one
in scripts/stand_in_features.py; the chat template with the model's default system prompt).
Reports the 5-fold cross-validated R^2 (20 seeded repeats) of ridge fits of a prompt's mean
log KL over the grid on: the curves' own features (layer 0's pooled K/V and hidden state), the
normalised hidden state after layers 0, 3, 7, ..., 29 at the last prompt token or averaged over
the user turn, and MT-Bench's category (one-hot). Then --budget auto simulated with each
feature set (per-budget ridge on log KL, each prompt chosen by a fit without it) against a
fixed budget of the same mean compute and the best prompt-blind mix.
    python3 scripts/predictor_feature_study.py CURVES.json     # about 2 minutes on one core
"""
import json, os, sys
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stand_in_features as F  # noqa: E402  (loads the model's weights)
from llama_cpp import Llama  # noqa: E402

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
WATCH = (0, 3, 7, 11, 15, 19, 23, 27, 29)


def states(questions, tokenizer):
    out = []
    for q in questions:
        head = SYSTEM + "<|im_start|>user\n"
        ids = tokenizer.tokenize((head + q + "<|im_end|>\n<|im_start|>assistant\n").encode(), add_bos=False, special=True)
        start = len(tokenizer.tokenize(head.encode(), add_bos=False, special=True))
        h, rec = F.embedding[np.array(ids)], {}
        for l in range(F.LAYERS):
            ly = F.layers[l]
            a = F.attention(ly, h)
            h = h + a + F.mlp_hidden(ly, h + a) @ ly["down"].T
            if l in WATCH:
                x = h / np.sqrt((h * h).mean(1, keepdims=True))
                rec[(l, "last")], rec[(l, "mean")] = x[-1], x[start:].mean(0)
        out.append(rec)
    return out


def ridge_predict(xtr, ytr, xte, lam):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a, b = (xtr - mu) / sd / np.sqrt(xtr.shape[1]), (xte - mu) / sd / np.sqrt(xtr.shape[1])
    return b @ a.T @ np.linalg.solve(a @ a.T + lam * np.eye(len(a)), ytr - ytr.mean(0)) + ytr.mean(0)


def cv_r2(x, y, lam, reps=20):
    rng, err, tot = np.random.default_rng(1), 0.0, 0.0
    for _ in range(reps):
        p = rng.permutation(len(y))
        for f in range(5):
            te, tr = p[f::5], np.setdiff1d(p, p[f::5])
            err += ((y[te] - ridge_predict(x[tr], y[tr], x[te], lam)) ** 2).sum()
            tot += ((y[te] - y[tr].mean()) ** 2).sum()
    return 1 - err / tot


def simulate(x, logkl, kl, tokens, ks, lam, tolerances=(0.25, 0.4, 0.6, 1.0), reps=10):
    rng, w = np.random.default_rng(2), tokens / tokens.sum()
    kall, klall = np.append(ks, 28), np.hstack([kl, np.zeros((len(kl), 1))])
    mean_curve = np.append((w[:, None] * kl).sum(0), 0)
    hull = lambda k: min([np.interp(k, kall, mean_curve)] + [mean_curve[i] + (mean_curve[j] - mean_curve[i]) * (k - kall[i]) / (kall[j] - kall[i])
                          for i in range(len(kall)) for j in range(len(kall)) if kall[i] <= k <= kall[j] and kall[j] > kall[i]])
    for t in tolerances:
        rows = []
        for _ in range(reps):
            p, pred = rng.permutation(len(kl)), np.zeros_like(logkl)
            for f in range(5):
                te = p[f::5]
                pred[te] = ridge_predict(x[np.setdiff1d(p, te)], logkl[np.setdiff1d(p, te)], x[te], lam)
            pk = np.exp(np.maximum.accumulate(pred[:, ::-1], axis=1)[:, ::-1])   # non-increasing in the budget
            choice = np.array([next((i for i in range(len(ks)) if pk[n, i] <= t), len(ks)) for n in range(len(kl))])
            k = (w * kall[choice]).sum()
            rows.append((k, (w * klall[np.arange(len(kl)), choice]).sum(), np.interp(k, kall, mean_curve), hull(k)))
        k, auto, fixed, mix = np.mean(rows, 0)
        print(f"  tolerance {t}: mean k {k:.2f}, auto {auto:.4f}, fixed {fixed:.4f} ({(auto / fixed - 1) * 100:+.1f} %), "
              f"best mix {mix:.4f} ({(auto / mix - 1) * 100:+.1f} %)")


def main():
    saved = json.load(open(sys.argv[1]))
    curves = {int(c["id"].split("-")[1]): c for c in saved["curves"] if c["id"].startswith("chat-")}
    data = os.path.join(os.path.dirname(F.DATA), "mt_bench_questions.jsonl")
    questions = {q["question_id"]: q for q in map(json.loads, open(data))}
    ids = sorted(curves)
    kl = np.array([curves[i]["kl"] for i in ids])
    logkl, tokens = np.log(kl), np.array([curves[i]["tokens"] for i in ids], float)
    level = logkl.mean(1)
    ks = np.round(np.array(saved["budgets"]) * 28)
    rec = states([questions[i]["turns"][0] for i in ids], Llama(F.MODEL, vocab_only=True, verbose=False))
    sets = {"curves' own features (layer 0)": np.array([curves[i]["features"] for i in ids])}
    for l in WATCH:
        for kind in ("last", "mean"):
            sets[f"layer {l} {kind}"] = np.array([r[(l, kind)] for r in rec])
    categories = sorted({questions[i]["category"] for i in ids})
    sets["category (one-hot)"] = np.array([[questions[i]["category"] == c for c in categories] for i in ids], float)
    print("cross-validated R^2 of the mean log KL, ridge 0.01 / 0.1 / 1 / 10:")
    for name, x in sets.items():
        print(f"  {name}: " + " / ".join(f"{cv_r2(x, level, lam):.3f}" for lam in (0.01, 0.1, 1, 10)))
    for name in ("curves' own features (layer 0)", "layer 29 last", "layer 15 last"):
        print(f"--budget auto simulated with {name}, ridge 1:")
        simulate(sets[name], logkl, kl, tokens, ks, 1.0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Can the Budget Predictor rank prompts *within* one kind of request? A side study for
docs/TRAINING.md ("Sending a share of requests to full depth").

Reads the curves `buddy train predictor` measured (`<out>.curves.json`: per prompt the
features it used and the mean KL at each grid budget) and the request files that say each
prompt's kind. The rule studied: every prompt runs at 0.8 except the share q of its kind whose
predicted KL at 0.8 is highest, which run at full depth (KL 0). The prediction is a ridge fit
of log KL at 0.8 on the standardised features, made without the prompt (5-fold by prompt,
seeded repeats). Reported per kind, against the fixed budget of the same mean layers
(interpolated between the grid's 0.8 and 0.85) and against a blind share (the same q at random):

    python3 scripts/auto_share_study.py CURVES.json MT_BENCH.jsonl REQUESTS.jsonl [more curve files]
"""
import json, sys
import numpy as np

LAYERS = 28  # routable layers of SmolLM2-135M (30 in all; first and last always run)
SHARE = 0.25  # of each kind sent to full depth


def top_share(scores, idx):
    """The SHARE of the positions `idx` with the highest `scores`."""
    return idx[np.argsort(-scores[idx])[: int(round(SHARE * len(idx)))]]


def spearman(a, b):
    return np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1]


def routable(b):
    return max(1, min(LAYERS, int(round(b * LAYERS))))


def load(paths):
    curves, grid = {}, None
    for p in paths:
        d = json.load(open(p))
        grid = d["budgets"]
        for c in d["curves"]:
            curves[c["id"]] = c
    return grid, list(curves.values())


def kinds(mt_path, req_path):
    kind = {}
    for line in open(req_path):
        q = json.loads(line)
        kind["chat-" + q["question_id"]] = q["category"]
    for line in open(mt_path):
        q = json.loads(line)
        kind["chat-%s" % q["question_id"]] = "mt-bench"
    return kind


def cv_predictions(X, y, lam, folds=5, seed=0):
    n = len(y)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    pred = np.zeros(n)
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        mu, sd = X[train].mean(0), X[train].std(0) + 1e-6
        Z = (X[train] - mu) / sd / np.sqrt(X.shape[1])
        K = Z @ Z.T
        alpha = np.linalg.solve(K + lam * np.eye(len(train)), y[train] - y[train].mean())
        Zt = (X[test] - mu) / sd / np.sqrt(X.shape[1])
        pred[test] = y[train].mean() + Zt @ (Z.T @ alpha)
    return pred


def main():
    curve_paths = [sys.argv[1]] + sys.argv[4:]
    grid, curves = load(curve_paths)
    kind = kinds(sys.argv[2], sys.argv[3])
    curves = [c for c in curves if c["id"] in kind]
    i80, i85 = grid.index(0.8), grid.index(0.85)
    X = np.array([c["features"] for c in curves], dtype=np.float64)
    kl80 = np.array([c["kl"][i80] for c in curves])
    kl85 = np.array([c["kl"][i85] for c in curves])
    y = np.log(kl80)
    labels = np.array([kind[c["id"]] for c in curves])
    print(f"{len(curves)} chat curves; kinds: " + ", ".join(f"{k} {np.sum(labels == k)}" for k in sorted(set(labels))))
    k80, k85 = routable(0.8), routable(0.85)
    layers = k80 + SHARE * (LAYERS - k80)
    t = (layers - k80) / (k85 - k80)
    fixed = (1 - t) * kl80 + t * kl85  # per prompt, the fixed budget of the same mean layers
    kinds_seen = sorted(set(labels))
    for lam in (1.0, 10.0):
        print(f"\nridge lambda {lam}")
        preds = [cv_predictions(X, y, lam, seed=s) for s in range(10)]
        # Per prediction, the prompts the rule runs at full depth: the top share of each kind.
        chosen = []
        for p in preds:
            sel = np.zeros(len(labels), bool)
            for g in kinds_seen:
                sel[top_share(p, np.where(labels == g)[0])] = True
            chosen.append(sel)
        print(f"share {SHARE} at full depth: mean layers {layers:.2f}; per kind: rank corr, auto KL, blind KL, fixed KL, auto vs fixed (s.e.), auto vs blind, oracle")
        for k in kinds_seen + ["all"]:
            m = labels == k if k != "all" else np.ones(len(labels), bool)
            auto = np.mean([np.where(sel, 0.0, kl80)[m] for sel in chosen], 0)
            n = m.sum()
            rc = np.mean([spearman(p[m], y[m]) for p in preds])
            blind = (1 - SHARE) * kl80[m]
            d = auto - fixed[m]
            se = d.std(ddof=1) / np.sqrt(n) / fixed[m].mean()
            top = np.zeros(n, bool)
            top[top_share(kl80[m], np.arange(n))] = True
            oracle = np.where(top, 0.0, kl80[m]).mean()
            print(f"  {k:10s} n={n:3d}  rho {rc:+.2f}  auto {auto.mean():.4f}  blind {blind.mean():.4f}  fixed {fixed[m].mean():.4f}"
                  f"  {100 * d.mean() / fixed[m].mean():+.1f} % ± {100 * se:.1f}  vs blind {100 * (auto.mean() / blind.mean() - 1):+.1f} %  oracle {oracle:.4f}")
        # One share over all prompts instead of one per kind: what the prediction knows about
        # kinds, against the same blind share and against ranking by each kind's true mean.
        everyone = np.arange(len(labels))
        overall = np.mean([np.where(np.isin(everyone, top_share(p, everyone)), 0.0, kl80).mean() for p in preds])
        mean_of_kind = {k: kl80[labels == k].mean() for k in kinds_seen}
        kind_mean = np.array([mean_of_kind[k] for k in labels])
        by_kind = np.where(np.isin(everyone, top_share(kind_mean, everyone)), 0.0, kl80).mean()
        blind_all = (1 - SHARE) * kl80.mean()
        print(f"  one share over all kinds: auto {overall:.4f} ({100 * (overall / blind_all - 1):+.1f} % vs blind),"
              f" ranked by each kind's true mean {by_kind:.4f} ({100 * (by_kind / blind_all - 1):+.1f} %)")

if __name__ == "__main__":
    main()

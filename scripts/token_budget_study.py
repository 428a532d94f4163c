"""Offline study: can a reply's own signals steer the budget token by token? (docs/TRAINING.md,
"Deciding from the reply itself")

Reads `buddy eval chat --positions` CSVs (one method at budgets 0.7, 0.75, 0.8, 0.85 and 0.9, the
same prompts, prompts at full depth) and prints, for pairs of budgets mixed token by token at
the mean layer count of 0.8: the fixed 0.8 run, a token-blind mix, a rule on the previous
position's routed entropy, a ridge predictor of the gain cross-validated by prompt, and an
oracle; then how persistent the gain is, what the previous token's identity and a reply's first
16 tokens say, and where along the reply and in how few positions the KL lies.
Offline: every position's KL is the one measured with its budget at every position, so the
keys and values a mixed run would leave are not modelled.

    python3 scripts/token_budget_study.py POSITIONS.csv [MORE.csv ...]
"""
import csv, sys, math, random
import numpy as np

def load(paths):
    kl = {}      # (prompt, t) -> {budget: kl}
    feat = {}    # (prompt, t, budget) -> (entropy, logprob, ref_entropy)
    for p in paths:
        for r in csv.DictReader(open(p)):
            key = (p + ':' + r['prompt'], int(r['position']))
            b = float(r['budget'])
            kl.setdefault(key, {})[b] = float(r['kl'])
            feat[key + (b,)] = (float(r['routed_entropy']), float(r['routed_log_probability']), float(r['reference_entropy']), int(r['token']))
    return kl, feat

def k_of(b, L=28): return round(b * L)

def positions_with_every_budget(kl):
    """The budgets recorded and the (prompt, position) keys that have a row at each of them."""
    budgets = sorted({b for v in kl.values() for b in v})
    return budgets, sorted(k for k in kl if len(kl[k]) == len(budgets))

def main(kl, feat):
    budgets, keys = positions_with_every_budget(kl)
    prompts = sorted({k[0] for k in keys})
    print(f"{len(keys)} positions, {len(prompts)} prompts, budgets {budgets}")
    K = np.array([[kl[k][b] for b in budgets] for k in keys])
    print("mean KL per budget:", " ".join(f"{b}:{m:.4f}" for b, m in zip(budgets, K.mean(0))))
    # features for row t: row t-1's routed entropy / log-prob at 0.8 (what the run saw before deciding)
    ref_b = 0.8
    X = []
    for (p, t) in keys:
        if t == 0:
            X.append([0, 0, 1, t])
        else:
            e, lp, _, _ = feat[(p, t - 1, ref_b)]
            X.append([e, lp, 0, t])
    X = np.array(X, dtype=float)
    pidx = np.array([prompts.index(k[0]) for k in keys])
    i8 = budgets.index(0.8)
    for lo, hi in [(0.7, 0.9), (0.75, 0.85), (0.75, 0.9), (0.7, 0.85)]:
        ilo, ihi = budgets.index(lo), budgets.index(hi)
        f = (k_of(0.8) - k_of(lo)) / (k_of(hi) - k_of(lo))
        g = K[:, ilo] - K[:, ihi]
        blind = (1 - f) * K[:, ilo].mean() + f * K[:, ihi].mean()
        # oracle: top f fraction by true gain
        n_hi = int(round(f * len(g)))
        order = np.argsort(-g)
        oracle = K[:, ilo].sum() - g[order[:n_hi]].sum()
        oracle /= len(g)
        # cross-validated predictor: 5 folds by prompt; features: entropy, logprob, first-row flag, log position
        Z = np.column_stack([np.ones(len(X)), X[:, 0], X[:, 1], X[:, 2], np.log1p(X[:, 3]), X[:, 0] ** 2, X[:, 0] * X[:, 1]])
        pred = np.zeros(len(g))
        folds = pidx % 5
        for fo in range(5):
            tr, te = folds != fo, folds == fo
            w = np.linalg.lstsq(Z[tr].T @ Z[tr] + 1e-3 * np.eye(Z.shape[1]), Z[tr].T @ g[tr], rcond=None)[0]
            pred[te] = Z[te] @ w
        order = np.argsort(-pred)
        sel = np.zeros(len(g), bool); sel[order[:n_hi]] = True
        policy = (K[sel, ihi].sum() + K[~sel, ilo].sum()) / len(g)
        r2 = 1 - ((g - pred) ** 2).mean() / g.var()
        # entropy alone
        order = np.argsort(-X[:, 0]); sel = np.zeros(len(g), bool); sel[order[:n_hi]] = True
        ent = (K[sel, ihi].sum() + K[~sel, ilo].sum()) / len(g)
        # per-prompt paired s.e. of policy vs token-blind mix
        print(f"lo {lo} hi {hi} f_hi {f:.2f}: fixed 0.8 {K[:, i8].mean():.4f} | token-blind mix {blind:.4f} | entropy rule {ent:.4f} | CV predictor {policy:.4f} (R2 {r2:.3f}) | oracle {oracle:.4f}")


def extra(kl, feat):
    budgets, keys = positions_with_every_budget(kl)
    ilo, ihi = budgets.index(0.75), budgets.index(0.9)
    g = {k: kl[k][0.75] - kl[k][0.9] for k in keys}
    # persistence: corr(g_t, g_{t-1})
    a = [(g[(p, t)], g[(p, t - 1)]) for (p, t) in keys if t > 0 and (p, t - 1) in g]
    a = np.array(a); print("corr(g_t, g_{t-1}) =", np.corrcoef(a.T)[0, 1])
    b = [(g[(p, t)], kl[(p, t - 1)][0.8]) for (p, t) in keys if t > 0]
    b = np.array(b); print("corr(g_t, KL_{t-1}(0.8)) =", np.corrcoef(b.T)[0, 1])
    # previous token identity, target-encoded with 5-fold CV by prompt
    prompts = sorted({k[0] for k in keys})
    pid = {p: i % 5 for i, p in enumerate(prompts)}
    prev = {k: (feat[(k[0], k[1] - 1, 0.8)][3] if k[1] > 0 else -1) for k in keys}
    pred, true = [], []
    for fo in range(5):
        sums = {}
        for k in keys:
            if pid[k[0]] != fo:
                s = sums.setdefault(prev[k], [0.0, 0]); s[0] += g[k]; s[1] += 1
        mu = np.mean([g[k] for k in keys if pid[k[0]] != fo])
        for k in keys:
            if pid[k[0]] == fo:
                s = sums.get(prev[k], [0.0, 0])
                pred.append((s[0] + 5 * mu) / (s[1] + 5)); true.append(g[k])
    pred, true = np.array(pred), np.array(true)
    print("previous-token identity, CV R2 =", 1 - ((true - pred) ** 2).mean() / true.var(), " corr", np.corrcoef(pred, true)[0, 1])
    print("g std", true.std(), "mean", true.mean())


def midreply(kl, feat, head=16):
    """Per prompt: do the first `head` reply tokens' observable signals (at 0.8) predict the
    rest of the reply's drift level and gain (KL 0.75 - KL 0.9)?"""
    budgets, keys = positions_with_every_budget(kl)
    by = {}
    for k in keys: by.setdefault(k[0], []).append(k[1])
    rows = []
    for p, ts in by.items():
        ts = sorted(ts)
        if len(ts) < head + 16: continue
        h, rest = ts[:head], ts[head:]
        ent = np.mean([feat[(p, t, 0.8)][0] for t in h])
        lp = np.mean([feat[(p, t, 0.8)][1] for t in h])
        level = np.mean([kl[(p, t)][0.8] for t in rest])
        gain = np.mean([kl[(p, t)][0.75] - kl[(p, t)][0.9] for t in rest])
        kind = p.split(':')[1].split('-')[0]
        rows.append((ent, lp, level, gain, kind, np.mean([kl[(p, t)][0.8] for t in h])))
    A = np.array([[r[0], r[1], r[5]] for r in rows]); lev = np.log(np.array([r[2] for r in rows])); gain = np.array([r[3] for r in rows])
    kinds = sorted({r[4] for r in rows})
    def cv_r2(X, y, groups=None):
        n = len(y); pred = np.zeros(n); Z = np.column_stack([np.ones(n), X])
        for fo in range(5):
            te = np.arange(n) % 5 == fo; tr = ~te
            w = np.linalg.solve(Z[tr].T @ Z[tr] + 1e-3 * np.eye(Z.shape[1]), Z[tr].T @ y[tr]); pred[te] = Z[te] @ w
        return 1 - ((y - pred) ** 2).mean() / y.var()
    print(f"mid-reply ({len(rows)} prompts with > {head + 16} reply tokens; kinds {kinds})")
    print("  log KL(0.8) of the rest  <- entropy+logprob of the head: CV R2 %.3f; + head's true KL (unobservable) %.3f" % (cv_r2(A[:, :2], lev), cv_r2(A, lev)))
    print("  gain 0.75->0.9 of the rest <- entropy+logprob of the head: CV R2 %.3f" % cv_r2(A[:, :2], gain))
    for kd in kinds:
        m = np.array([r[4] == kd for r in rows])
        if m.sum() >= 20:
            print(f"  within {kd} ({m.sum()}): level R2 %.3f, gain R2 %.3f" % (cv_r2(A[m][:, :2], lev[m]), cv_r2(A[m][:, :2], gain[m])))



def where(kl):
    for b in [0.7, 0.8, 0.9]:
        v = np.array([x[b] for x in kl.values() if b in x])
        s = np.sort(v)[::-1]
        print("%.2f" % b, "mean %.4f; share of KL in top 5%% / 10%% / 25%% of positions: %.2f / %.2f / %.2f" % (v.mean(), s[:len(s)//20].sum()/s.sum(), s[:len(s)//10].sum()/s.sum(), s[:len(s)//4].sum()/s.sum()))
    # by position bucket
    buckets = [(0,1),(1,8),(8,32),(32,64),(64,128)]
    for lo, hi in buckets:
        sel = lambda b: np.array([x[b] for (p, t), x in kl.items() if b in x and lo <= t < hi])
        a, c, d = sel(0.75), sel(0.8), sel(0.9)
        print(f"positions {lo}-{hi-1}: n {len(c)}  KL 0.75 {a.mean():.4f}  0.8 {c.mean():.4f}  0.9 {d.mean():.4f}  gain 0.75->0.9 {a.mean()-d.mean():.4f}")


if __name__ == '__main__':
    kl, feat = load(sys.argv[1:])
    main(kl, feat)
    extra(kl, feat)
    midreply(kl, feat)
    where(kl)

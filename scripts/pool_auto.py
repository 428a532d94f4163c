#!/usr/bin/env python3
"""Pools `buddy eval auto` CSVs of several prompt sets: per rule, auto's KL against the fixed
budget of the same mean compute (each set's own interpolation, the CSV's fixed_kl) and, under
the share rule, against a coin of the same share (coin_kl), paired over every prompt with the
ratio estimator `buddy eval auto` uses (PairedComparison, chat):

    python3 scripts/pool_auto.py eval/a-auto.csv eval/b-auto.csv ...
"""
import csv, math, sys
from collections import defaultdict


def paired(pairs):
    """(a, b) loss sums per prompt -> (percent, standard error in percent)."""
    n = len(pairs)
    la, lb = sum(a for a, _ in pairs), sum(b for _, b in pairs)
    r = la / lb
    spread = sum((a - r * b) ** 2 for a, b in pairs)
    return 100 * (r - 1), 100 * math.sqrt(n / (n - 1) * spread) / lb


def main(paths):
    rows = defaultdict(list)
    for p in paths:
        for r in csv.DictReader(open(p)):
            rows[r["rule"]].append(r)
    for rule, rs in rows.items():
        tokens = [int(r["tokens"]) for r in rs]
        auto = [float(r["kl"]) * t for r, t in zip(rs, tokens)]
        full = sum(float(r["chosen_budget"]) >= 1 for r in rs)
        line = f"{rule}: {len(rs)} prompts, {full} at full depth, auto KL {sum(auto) / sum(tokens):.4f}"
        for column, name in (("fixed_kl", "fixed, same mean compute"), ("coin_kl", "coin, same share")):
            if all(r[column] for r in rs):
                other = [float(r[column]) * t for r, t in zip(rs, tokens)]
                pct, se = paired(list(zip(auto, other)))
                line += f"; {name} {sum(other) / sum(tokens):.4f}: {pct:+.1f} % ± {se:.1f} %"
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:])

#!/usr/bin/env python3
"""Is a reply's drift at a budget a property of its prompt at all? A side study for
docs/TRAINING.md ("How much of a reply's drift any prompt feature could foresee").

`--budget auto` chooses before the reply, so the most any prompt feature can know about a
reply's drift is what is stable along that reply. This script measures that ceiling from the
per-position KL that `buddy eval chat --positions FILE` writes (one budget, one method):

* split-half reliability: within each kind of request, the rank correlation between the mean
  KL of a reply's first and second halves (and of alternate blocks of 8 positions);
* a clairvoyant share rule: within each kind, the quarter of requests whose *first half*
  drifted most run at full depth (KL 0), scored on the second half only, against a blind
  quarter (the same share at random) and an oracle that ranks by the second half itself.

A predictor that knew each reply's first-half drift exactly is better than any prompt feature
can be, so its gain over the blind quarter bounds what a per-prompt budget could add over
mixing budgets blindly.

    python3 scripts/reply_drift_reliability.py POSITIONS.csv MT_BENCH.jsonl REQUESTS.jsonl
"""
import collections
import csv
import sys

import numpy as np

from auto_share_study import SHARE, kinds, spearman, top_share

MIN_POSITIONS = 32  # replies shorter than this have halves too short to compare


def main():
    kl = collections.defaultdict(list)
    for row in csv.DictReader(open(sys.argv[1])):
        kl[row["prompt"]].append(float(row["kl"]))
    kind = kinds(sys.argv[2], sys.argv[3])
    ids = [p for p in kl if len(kl[p]) >= MIN_POSITIONS]
    labels = np.array([kind.get("chat-" + p, "?") for p in ids])  # kinds() keys prompts as chat-<id>
    first = np.array([np.mean(kl[p][: len(kl[p]) // 2]) for p in ids])
    second = np.array([np.mean(kl[p][len(kl[p]) // 2:]) for p in ids])
    blocks = [np.array([np.mean([x for i, x in enumerate(kl[p]) if (i // 8) % 2 == parity]) for p in ids]) for parity in (0, 1)]
    print(f"{len(ids)} replies of at least {MIN_POSITIONS} positions")
    print("kind         n  halves  8-blocks  clairvoyant quarter vs blind  oracle vs blind")
    for k in sorted(set(labels)) + ["all"]:
        idx = np.where(labels == k)[0] if k != "all" else np.arange(len(ids))
        blind = (1 - SHARE) * second[idx].mean()

        def kept(score):
            full_depth = np.isin(idx, top_share(score, idx))
            return np.where(full_depth, 0.0, second[idx]).mean()

        print(f"{k:10s} {len(idx):3d}  {spearman(first[idx], second[idx]):+.2f}  {spearman(blocks[0][idx], blocks[1][idx]):+.2f}"
              f"      {100 * (kept(first) / blind - 1):+.1f} %                        {100 * (kept(second) / blind - 1):+.1f} %")


if __name__ == "__main__":
    main()

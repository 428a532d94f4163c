#!/usr/bin/env python3
"""Does what a prompt looks like predict how far its routed reply drifts, beyond its kind of
request? A side study for docs/TRAINING.md ("Trained on 250 more chat requests").

Reads the curves of `buddy train predictor --extra-chat-data REQUESTS` (its `<out>.curves.json`)
and, for every training chat prompt among them (the 40 train-split MT-Bench questions and the
requests), recomputes hidden states with the numpy forward pass of
scripts/predictor_feature_study.py. For each feature set (the curves' own, layer 0's pooled K/V
and hidden state; the normalised state after layers 7, 15, 23 and 29, last prompt token or mean
over the user turn) it reports the R^2 of a prompt's mean log KL over the grid:
  transfer  ridge fitted on the requests, scored on the MT-Bench questions (against their mean);
  all       5-fold cross-validated over all the chat prompts (kinds mixed);
  within    5-fold cross-validated over the requests alone.
    python3 scripts/predictor_transfer_study.py CURVES.json REQUESTS.jsonl   # a few minutes
"""
import json, os, sys
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import predictor_feature_study as S  # noqa: E402
import stand_in_features as F  # noqa: E402  (loads the model's weights)
from llama_cpp import Llama  # noqa: E402


def main():
    saved = json.load(open(sys.argv[1]))
    questions = {}
    for path in (os.path.join(os.path.dirname(F.DATA), "mt_bench_questions.jsonl"), sys.argv[2]):
        for q in map(json.loads, open(path)):
            questions[f"chat-{q['question_id']}"] = q
    curves = [c for c in saved["curves"] if c["id"].startswith("chat-")]
    mt_bench = np.array([c["id"][5:].isdigit() for c in curves])
    level = np.log(np.array([c["kl"] for c in curves])).mean(1)
    rec = S.states([questions[c["id"]]["turns"][0] for c in curves], Llama(F.MODEL, vocab_only=True, verbose=False))
    sets = {"curves' own features (layer 0)": np.array([c["features"] for c in curves])}
    for l in (7, 15, 23, 29):
        for kind in ("last", "mean"):
            sets[f"layer {l} {kind}"] = np.array([r[(l, kind)] for r in rec])
    print(f"{mt_bench.sum()} MT-Bench questions (mean level {level[mt_bench].mean():.3f}, variance {level[mt_bench].var():.3f}), "
          f"{(~mt_bench).sum()} requests ({level[~mt_bench].mean():.3f}, {level[~mt_bench].var():.3f})")
    print("R^2 of the mean log KL at ridge 0.1 / 1 / 10: transfer | all | within")
    for name, x in sets.items():
        y, m = level, mt_bench
        transfer = [1 - ((y[m] - S.ridge_predict(x[~m], y[~m], x[m], lam)) ** 2).sum() / ((y[m] - y[m].mean()) ** 2).sum() for lam in (0.1, 1, 10)]
        mixed = [S.cv_r2(x, y, lam, reps=5) for lam in (0.1, 1, 10)]
        within = [S.cv_r2(x[~m], y[~m], lam, reps=5) for lam in (0.1, 1, 10)]
        print(f"  {name}: " + " | ".join(" / ".join(f"{v:.2f}" for v in vals) for vals in (transfer, mixed, within)))


if __name__ == "__main__":
    main()

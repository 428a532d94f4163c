#!/usr/bin/env python3
"""Where a routed reply loses the answer (eval/NOTES.md, "Where the answer is lost").

  python3 scripts/answer_positions.py POSITIONS.csv [--questions eval/simple-facts.jsonl]

POSITIONS.csv is what `buddy eval chat --positions` writes for a prompt file whose questions
carry "answers". In each reference reply (the full model's greedy reply, the same for every
method) the answer position is the first token of the first place where one of the question's
answers appears, tokenized with and without a leading space and with its first letter in
either case; replies without an answer are left out. Prints, per method and budget, the mean KL
and the routed model's mean log-probability of the reference token at answer positions and at
every other position, and the share of answer positions where that probability is at least 0.5.
"""
import argparse
import csv
import functools
import json
import math
import subprocess
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDDY = ROOT / ".build" / "release" / "buddy"


@functools.lru_cache(maxsize=None)
def token_ids(text):
    out = subprocess.run([str(BUDDY), "tokenize", "--json", text], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def variants(answer):
    forms = {answer, answer[:1].upper() + answer[1:], answer[:1].lower() + answer[1:]}
    return [token_ids(prefix + form) for form in sorted(forms) for prefix in ("", " ")]


def answer_position(reply, answers):
    """First index where one of the answers' token sequences starts in the reply, or None."""
    sequences = [seq for answer in answers for seq in variants(answer) if seq]
    for start in range(len(reply)):
        for seq in sequences:
            if reply[start:start + len(seq)] == seq:
                return start
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("positions")
    parser.add_argument("--questions", default=str(ROOT / "eval" / "simple-facts.jsonl"))
    args = parser.parse_args()
    answers = {}
    for line in Path(args.questions).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            answers[row["question_id"]] = row["answers"]
    rows = defaultdict(list)   # (method, budget, stand_ins, prompt) -> [(position, token, kl, log p)]
    with open(args.positions) as f:
        for r in csv.DictReader(f):
            rows[(r["method"], r["budget"], r["stand_ins"], r["prompt"])].append(
                (int(r["position"]), int(r["token"]), float(r["kl"]), float(r["routed_log_probability"])))
    cells = defaultdict(lambda: {"answer": [], "other": []})
    found = {}
    for (method, budget, stand_ins, prompt), positions in rows.items():
        positions.sort()
        reply = [token for _, token, _, _ in positions]
        if prompt not in found:
            found[prompt] = answer_position(reply, answers[prompt])
        at = found[prompt]
        if at is None:
            continue
        for index, (_, _, kl, logp) in enumerate(positions):
            cells[(method, budget, stand_ins)]["answer" if index == at else "other"].append((kl, logp))
    with_answer = sum(at is not None for at in found.values())
    print(f"{with_answer} of {len(found)} reference replies give an answer\n")
    print("| method | budget | stand-ins | KL at the answer | KL elsewhere | log p at the answer | log p elsewhere | answer p ≥ 0.5 |")
    print("|---|---|---|---|---|---|---|---|")
    for (method, budget, stand_ins), cell in sorted(cells.items(), key=lambda kv: (kv[0][0], -float(kv[0][1]))):
        def mean(values):
            return sum(values) / len(values)
        answer, other = cell["answer"], cell["other"]
        sure = sum(math.exp(logp) >= 0.5 for _, logp in answer)
        print(f"| {method} | {budget} | {stand_ins} | {mean([k for k, _ in answer]):.3f} | {mean([k for k, _ in other]):.3f} "
              f"| {mean([p for _, p in answer]):.3f} | {mean([p for _, p in other]):.3f} | {sure}/{len(answer)} |")


if __name__ == "__main__":
    main()

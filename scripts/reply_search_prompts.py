#!/usr/bin/env python3
"""Writes the chat on which `buddy train reply-sets` searches the module's reply set at 0.5 and
validates it (docs/TRAINING.md, "A reply set searched on more kinds of chat"): training data only.

The even positions of the 250 training requests (`scripts/training_chat_requests.py`: next-event,
tips, summary, explain, topic; 25 each) and the 40 even (train-split) MT-Bench questions, taken in
turn from each of the six kinds, so that any prefix of the file mixes every kind: the search uses
the first 60 (10 per kind), its validation the next 60. The odd positions of the training requests
stay out of both, for a check on requests the search never saw.

  python3 scripts/reply_search_prompts.py [--data-dir ../shared/data] [--out PATH]
"""
import argparse
import json
import os
import subprocess
import sys

KINDS = ["next-event", "tips", "summary", "explain", "topic", "mt-bench-train"]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=os.path.join(root, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(root, ".build", "reply-search-prompts.jsonl"))
    a = ap.parse_args()
    requests_path = os.path.join(root, ".build", "training-chat-requests.jsonl")
    subprocess.run([sys.executable, os.path.join(here, "training_chat_requests.py"), "--data-dir", a.data_dir, "--out", requests_path], check=True)
    with open(requests_path, encoding="utf-8") as f:
        requests = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(a.data_dir, "mt_bench_questions.jsonl"), encoding="utf-8") as f:
        mt_bench = [json.loads(line) for line in f if line.strip()]
    by_kind = {}
    for r in requests[0::2]:
        by_kind.setdefault(r["category"], []).append(r)
    by_kind["mt-bench-train"] = mt_bench[0::2]
    rows = [by_kind[k][i] for i in range(max(len(v) for v in by_kind.values())) for k in KINDS if i < len(by_kind[k])]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(rows)} prompts to {a.out}")


if __name__ == "__main__":
    main()

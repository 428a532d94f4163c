#!/usr/bin/env python3
"""A blind reading of chat replies for topic (eval/NOTES.md, "Are the answers at 70 % on topic?").

  python3 scripts/blind_reading.py blind   writes eval/topic-reading-blind.jsonl: the chosen
                                           replies shuffled, each with an id, its question and
                                           its text, and neither method nor budget
  python3 scripts/blind_reading.py tally   joins eval/topic-reading-labels.csv (id,label with
                                           label on or off) to the key and prints the share of
                                           on-topic replies per method and budget

The key is not stored: both commands rebuild the same shuffle from the committed replies and a
fixed seed, so the reader never sees it before the labels are written.
"""
import csv
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPLIES = ROOT / "eval" / "facts-all-s0-replies.jsonl"
QUESTIONS = ROOT / "eval" / "simple-facts.jsonl"
BLIND = ROOT / "eval" / "topic-reading-blind.jsonl"
LABELS = ROOT / "eval" / "topic-reading-labels.csv"

# The cells read, as registered: the router at every budget, the static sets at 0.7.
CELLS = [("buddy+sentence", 1.0), ("buddy+sentence", 0.9), ("buddy+sentence", 0.7),
         ("buddy+sentence", 0.5), ("sleb+sentence", 0.7), ("shortgpt+sentence", 0.7)]
SEED = 20261207


def held_out_questions():
    """The facts' odd positions (the held-out split), id -> question text."""
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    return {row["question_id"]: row["turns"][0] for i, row in enumerate(rows) if i % 2 == 1}


def shuffled_items():
    questions = held_out_questions()
    items = []
    for line in REPLIES.read_text().splitlines():
        reply = json.loads(line)
        cell = (reply["method"], reply["budget"])
        if cell in CELLS and reply["prompt"] in questions:
            items.append({"cell": cell, "question": questions[reply["prompt"]], "text": reply["text"]})
    assert len(items) == len(CELLS) * len(questions), f"{len(items)} replies, expected {len(CELLS) * len(questions)}"
    items.sort(key=lambda item: (item["cell"], item["question"]))
    random.Random(SEED).shuffle(items)
    for number, item in enumerate(items, start=1):
        item["id"] = number
    return items


def blind():
    with BLIND.open("w") as out:
        for item in shuffled_items():
            out.write(json.dumps({"id": item["id"], "question": item["question"], "reply": item["text"]}) + "\n")
    print(f"wrote {BLIND.relative_to(ROOT)}")


def tally():
    labels = {}
    with LABELS.open() as f:
        for row in csv.DictReader(f):
            if row["label"] not in ("on", "off"):
                sys.exit(f"{LABELS.name}: id {row['id']} has label {row['label']!r}, expected on or off")
            labels[int(row["id"])] = row["label"]
    items = shuffled_items()
    missing = [item["id"] for item in items if item["id"] not in labels]
    if missing:
        sys.exit(f"{LABELS.name}: no label for ids {missing[:10]}{'…' if len(missing) > 10 else ''}")
    print("| method | budget | on topic | off-topic replies |")
    print("|---|---|---|---|")
    for cell in CELLS:
        cell_items = [item for item in items if item["cell"] == cell]
        on = sum(labels[item["id"]] == "on" for item in cell_items)
        off = sorted(item["question"] for item in cell_items if labels[item["id"]] == "off")
        print(f"| `{cell[0]}` | {cell[1]} | {on}/{len(cell_items)} ({on / len(cell_items):.2f}) | {'; '.join(off)} |")


if __name__ == "__main__":
    commands = {"blind": blind, "tally": tally}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit("usage: blind_reading.py blind|tally")
    commands[sys.argv[1]]()

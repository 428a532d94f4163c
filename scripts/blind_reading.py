#!/usr/bin/env python3
"""A blind reading of chat replies for topic (eval/NOTES.md, "Are the answers at 70 % on topic?").

  python3 scripts/blind_reading.py blind READING writes the reading's blind file: the chosen
                                                replies of the reading shuffled, each
                                                with an id, its question and its text, and
                                                neither method nor budget
  python3 scripts/blind_reading.py tally READING joins the reading's labels (id,label with label
                                                on or off) to the key and prints the share of
                                                on-topic replies per method and budget
  python3 scripts/blind_reading.py tally all    the steered chat's two seeds pooled
  READING is 0 or 1 (the steered chat, one sampling seed each), unsteered (the router
  without steering, seeds 0 and 1 shuffled together), 0.8 (the steered chat at 0.8 and at
  full depth, seeds 0 and 1 shuffled together, read by a helper) or slider (the steered chat at
  every budget, seeds 0 and 1, read by another helper) or thin (the full model and the router
  at 0.7 beside every layer with a thinner MLP, seeds 0 and 1, read by a third helper) or lead
  (the same beside the router at 0.7 with the reply's lead sentence at full depth, a fourth),
  or lead-2, lead-3, lead-4 (the same file read by three more helpers; tally lead-pooled pools
  the four readers of that file), or lead-slider and lead-slider-2 (the chat steered by the lead
  at every budget, beside the chat before it at 0.7, read by two helpers; tally
  lead-slider-pooled)

The key is not stored: both commands rebuild the same shuffle from the committed replies and a
fixed seed, so the reader never sees it before the labels are written.
"""
import csv
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ROOT / "eval" / "simple-facts.jsonl"
# Per reading: the replies read, the blind file, the labels, the shuffle's seed and the cells.
# The steered chat's cells, as registered: the router at every budget, the static sets at 0.7.
CHAT_CELLS = [("buddy+sentence", 1.0), ("buddy+sentence", 0.9), ("buddy+sentence", 0.7),
              ("buddy+sentence", 0.5), ("sleb+sentence", 0.7), ("shortgpt+sentence", 0.7)]
# Seeds 0 and 1 of the steered chat: full depth, 0.9, 0.7 and 0.5 in the first two files, 0.8 in
# the last two (read together by the later readings).
SEEDS_0_1_WITH_0_8 = [ROOT / "eval" / "facts-all-s0-replies.jsonl", ROOT / "eval" / "facts-heldout-s1-replies.jsonl",
                      ROOT / "eval" / "facts-0.8-s0-replies.jsonl", ROOT / "eval" / "facts-0.8-s1-replies.jsonl"]
# The thinner-MLP study's replies were written as `buddy+sentence` at budget 1 by a study build
# (eval/NOTES.md, "Thinner MLPs on held-out data"); the reading names them by what ran.
THIN_MLP_FILES = [ROOT / "eval" / "thin-mlp" / f"facts-k0.5-s{seed}-replies.jsonl" for seed in (0, 1)]
METHOD_OF_FILE = {path: "thin-mlp-0.5" for path in THIN_MLP_FILES}
READINGS = {
    "0": ([ROOT / "eval" / "facts-all-s0-replies.jsonl"], ROOT / "eval" / "topic-reading-blind.jsonl",
          ROOT / "eval" / "topic-reading-labels.csv", 20261207, CHAT_CELLS),
    "1": ([ROOT / "eval" / "facts-heldout-s1-replies.jsonl"], ROOT / "eval" / "topic-reading-s1-blind.jsonl",
          ROOT / "eval" / "topic-reading-s1-labels.csv", 20261208, CHAT_CELLS),
    # The router without steering, both seeds shuffled together; the seed tells the replies apart.
    "unsteered": ([ROOT / "eval" / f"facts-heldout-unsteered-s{seed}-replies.jsonl" for seed in (0, 1)],
                  ROOT / "eval" / "topic-reading-unsteered-blind.jsonl",
                  ROOT / "eval" / "topic-reading-unsteered-labels.csv", 20261209,
                  [("buddy", 0.9), ("buddy", 0.7)]),
    # The slider's 80 % row: the router at 0.8 and, as the reader's own reference, the full
    # model's replies to the same questions and seeds (from the first two readings' files).
    "0.8": (SEEDS_0_1_WITH_0_8, ROOT / "eval" / "topic-reading-0.8-blind.jsonl", ROOT / "eval" / "topic-reading-0.8-labels.csv", 20261210,
            [("buddy+sentence", 1.0), ("buddy+sentence", 0.8)]),
    # One reader across the slider: the router at every budget, seeds 0 and 1, shuffled together.
    "slider": (SEEDS_0_1_WITH_0_8, ROOT / "eval" / "topic-reading-slider-blind.jsonl", ROOT / "eval" / "topic-reading-slider-labels.csv", 20261211,
               [("buddy+sentence", b) for b in (1.0, 0.9, 0.8, 0.7, 0.5)]),
    # Every layer with a thinner MLP (f = 0.5, 0.75 of the layers' multiply-adds) beside the
    # router at 0.7 (0.74) and the full model, seeds 0 and 1, shuffled together.
    "thin": (SEEDS_0_1_WITH_0_8[:2] + THIN_MLP_FILES, ROOT / "eval" / "topic-reading-thin-blind.jsonl",
             ROOT / "eval" / "topic-reading-thin-labels.csv", 20261212,
             [("buddy+sentence", 1.0), ("buddy+sentence", 0.7), ("thin-mlp-0.5", 1.0)]),
    # The reply's lead sentence at full depth (the faster payback), seeds 0 and 1, beside the
    # router at 0.7 and the full model (eval/NOTES.md, "The reply's lead sentence at full depth").
    "lead": (SEEDS_0_1_WITH_0_8[:2] + [ROOT / "eval" / "lead" / "heldout" / f"facts-lead-s{seed}-replies.jsonl" for seed in (0, 1)],
             ROOT / "eval" / "topic-reading-lead-blind.jsonl", ROOT / "eval" / "topic-reading-lead-labels.csv", 20261213,
             [("buddy+sentence", 1.0), ("buddy+sentence", 0.7), ("buddy+lead", 0.7)]),
}
# Three more readers of the lead's blind file (eval/NOTES.md, "Four readers of the lead's
# replies"): the same file, shuffle and cells, each reader's labels in a file of their own.
for reader in (2, 3, 4):
    files, blind_file, _, seed, cells = READINGS["lead"]
    READINGS[f"lead-{reader}"] = (files, blind_file, ROOT / "eval" / f"topic-reading-lead-labels-r{reader}.csv", seed, cells)
# The lead chat across the slider (eval/NOTES.md, "The slider's rows with the lead"): full depth and
# 0.8 from their own run, 0.9, 0.7 and 0.5 from the lead's held-out check, and the chat as shipped
# before at 0.7 as an anchor between readers; seeds 0 and 1, read by two helpers.
LEAD_SLIDER_FILES = ([ROOT / "eval" / "lead" / "ship" / f"facts-slider-s{seed}-replies.jsonl" for seed in (0, 1)]
                     + [ROOT / "eval" / "lead" / "heldout" / f"facts-lead-s{seed}-replies.jsonl" for seed in (0, 1)]
                     + SEEDS_0_1_WITH_0_8[:2])
for name, suffix in (("lead-slider", ""), ("lead-slider-2", "-r2")):
    READINGS[name] = (
        LEAD_SLIDER_FILES, ROOT / "eval" / "topic-reading-lead-slider-blind.jsonl",
        ROOT / "eval" / f"topic-reading-lead-slider-labels{suffix}.csv", 20261214,
        [("buddy+lead", b) for b in (1.0, 0.9, 0.8, 0.7, 0.5)] + [("buddy+sentence", 0.7)])
# Readings tallied together: each name stands for the readings it pools.
POOLED = {"all": ["0", "1"], "lead-pooled": ["lead", "lead-2", "lead-3", "lead-4"],
          "lead-slider-pooled": ["lead-slider", "lead-slider-2"]}


def held_out_questions():
    """The facts' odd positions (the held-out split), id -> question text."""
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    return {row["question_id"]: row["turns"][0] for i, row in enumerate(rows) if i % 2 == 1}


def shuffled_items(reading):
    reply_files, _, _, shuffle_seed, cells = READINGS[reading]
    questions = held_out_questions()
    items = []
    for number, replies in enumerate(reply_files):
        for line in replies.read_text().splitlines():
            reply = json.loads(line)
            cell = (METHOD_OF_FILE.get(replies, reply["method"]), reply["budget"])
            if cell in cells and reply["prompt"] in questions:
                items.append({"cell": cell, "file": number, "question": questions[reply["prompt"]], "text": reply["text"]})
    # Every cell once per question in each file that holds it (a file may hold some cells
    # only), and as many replies in every cell.
    counts = {}
    for cell in cells:
        held = {item["file"] for item in items if item["cell"] == cell}
        counts[cell] = sum(item["cell"] == cell for item in items)
        assert held and counts[cell] == len(questions) * len(held), f"{cell}: {counts[cell]} replies in {len(held)} files"
    assert len(set(counts.values())) == 1, f"cells of unequal size: {counts}"
    items.sort(key=lambda item: (item["cell"], item["file"], item["question"]))
    random.Random(shuffle_seed).shuffle(items)
    for number, item in enumerate(items, start=1):
        item["id"] = number
    return items


def blind(reading):
    blind_file = READINGS[reading][1]
    with blind_file.open("w") as out:
        for item in shuffled_items(reading):
            out.write(json.dumps({"id": item["id"], "question": item["question"], "reply": item["text"]}) + "\n")
    print(f"wrote {blind_file.relative_to(ROOT)}")


def labelled_items(reading):
    """The reading's replies, each with its label."""
    labels_file = READINGS[reading][2]
    labels = {}
    with labels_file.open() as f:
        for row in csv.DictReader(f):
            if row["label"] not in ("on", "off"):
                sys.exit(f"{labels_file.name}: id {row['id']} has label {row['label']!r}, expected on or off")
            labels[int(row["id"])] = row["label"]
    items = shuffled_items(reading)
    missing = [item["id"] for item in items if item["id"] not in labels]
    if missing:
        sys.exit(f"{labels_file.name}: no label for ids {missing[:10]}{'…' if len(missing) > 10 else ''}")
    for item in items:
        item["label"] = labels[item["id"]]
    return items


def tally(reading):
    # "all": the steered chat's two seeds pooled; "lead-pooled": the lead's four readers.
    names = POOLED.get(reading, [reading])
    items = [item for name in names for item in labelled_items(name)]
    cells = READINGS[names[0]][4]
    print("| method | budget | on topic | off-topic replies |")
    print("|---|---|---|---|")
    for cell in cells:
        cell_items = [item for item in items if item["cell"] == cell]
        on = sum(item["label"] == "on" for item in cell_items)
        off = sorted(item["question"] for item in cell_items if item["label"] == "off")
        print(f"| `{cell[0]}` | {cell[1]} | {on}/{len(cell_items)} ({on / len(cell_items):.2f}) | {'; '.join(off)} |")


if __name__ == "__main__":
    commands = {"blind": blind, "tally": tally}
    if len(sys.argv) != 3 or sys.argv[1] not in commands \
            or sys.argv[2] not in list(READINGS) + (list(POOLED) if sys.argv[1] == "tally" else []):
        sys.exit(f"usage: blind_reading.py blind|tally {'|'.join(READINGS)} (tally also takes {' and '.join(POOLED)})")
    commands[sys.argv[1]](sys.argv[2])

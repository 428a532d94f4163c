#!/usr/bin/env python3
"""Writes a second held-out chat prompt set, built from parts of ../shared/data that no fit,
search, selection or evaluation of this project has read, in the MT-Bench layout that
`buddy eval chat --split all` reads (one JSON object per line: question_id, category, turns).

Two kinds of request, 100 each, so chat KL can be compared on 200 prompts rather than 40:
  next-event  HellaSwag validation tasks 2000-2099 (HellaSwag evaluations read tasks 0-1399):
              the task's context as the start of a video description, asking what happens next.
  summary     WikiText-2 validation paragraphs that start past 85 % of the file's characters
              (about token chunk 455 of 534; chunks 428-533 were never used) with 60-220 words,
              the first 100 in file order, asking for a short summary. The word-level
              tokenisation's " @-@ ", " @,@ " and " @.@ " are undone and each <unk> (a word the
              data set left out) becomes "[...]".

The set is derived data, so it is written to a path outside the repository's tracked files
(default .build/held-out-chat-prompts.jsonl); eval/NOTES.md gives the measurement that reads it.

  python3 scripts/held_out_chat_prompts.py [--data-dir ../shared/data] [--out PATH]
"""
import argparse
import json
import os
import re


def hellaswag_prompts(path, first, count):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    prompts = []
    for task in range(first, first + count):
        head = lines[6 * task]
        label, _, context = head.partition(": ")
        context = context.strip()
        prompts.append((f"hellaswag-{task}", "next-event",
                        f"Here is the start of a description of a video about {label.strip().lower()}:\n\n"
                        f"\"{context} ...\"\n\nWhat happens next?"))
    return prompts


def untokenise(text):
    text = text.replace("<unk>", "[...]").replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    text = re.sub(r" ([.,;:!?)'])", r"\1", text)
    text = re.sub(r"\( ", "(", text)
    return text.replace(" n't", "n't").replace(" 's", "'s")


def wikitext_prompts(path, start_fraction, count, min_words, max_words):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start = int(len(text) * start_fraction)
    offset = 0
    prompts = []
    for line in text.split("\n"):
        line_start = offset
        offset += len(line) + 1
        stripped = line.strip()
        if line_start < start or not stripped or stripped.startswith("="):
            continue
        words = stripped.split()
        if not (min_words <= len(words) <= max_words):
            continue
        prompts.append((f"wikitext-char-{line_start}", "summary",
                        "Summarize this passage in two or three sentences:\n\n" + untokenise(stripped)))
        if len(prompts) == count:
            break
    if len(prompts) < count:
        raise SystemExit(f"only {len(prompts)} paragraphs qualify in {path}")
    return prompts


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.path.join(root, "..", "shared", "data"))
    parser.add_argument("--out", default=os.path.join(root, ".build", "held-out-chat-prompts.jsonl"))
    args = parser.parse_args()
    prompts = hellaswag_prompts(os.path.join(args.data_dir, "hellaswag_dev.txt"), 2000, 100)
    prompts += wikitext_prompts(os.path.join(args.data_dir, "wikitext2_valid.txt"), 0.85, 100, 60, 220)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for qid, category, prompt in prompts:
            f.write(json.dumps({"question_id": qid, "category": category, "turns": [prompt]}) + "\n")
    print(f"{len(prompts)} prompts -> {args.out}")


if __name__ == "__main__":
    main()

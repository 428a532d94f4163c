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


def wikitext_span(path, start_fraction, end_fraction=1.0):
    """(character offset, stripped line) for every non-empty line that starts inside the span."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start, end = int(len(text) * start_fraction), int(len(text) * end_fraction)
    offset, lines = 0, []
    for line in text.split("\n"):
        if start <= offset < end and line.strip():
            lines.append((offset, line.strip()))
        offset += len(line) + 1
    return lines


def paragraphs(lines, min_words, max_words):
    """The lines of `wikitext_span` that are paragraphs (not headings) of min_words..max_words words."""
    return [(o, s) for o, s in lines if not s.startswith("=") and min_words <= len(s.split()) <= max_words]


def summary_prompt(offset, paragraph):
    return (f"wikitext-char-{offset}", "summary", "Summarize this passage in two or three sentences:\n\n" + untokenise(paragraph))


def wikitext_prompts(path, start_fraction, count, min_words, max_words, skip=0):
    """Summary requests for the qualifying paragraphs skip..skip+count-1 (file order) past start_fraction."""
    found = paragraphs(wikitext_span(path, start_fraction), min_words, max_words)
    if len(found) < skip + count:
        raise SystemExit(f"only {len(found)} paragraphs qualify in {path}; {skip + count} are needed")
    return [summary_prompt(o, s) for o, s in found[skip:skip + count]]


def command_line(description, out_name):
    """The scripts' shared options: --data-dir (../shared/data) and --out (.build/OUT_NAME)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", default=os.path.join(root, "..", "shared", "data"))
    parser.add_argument("--out", default=os.path.join(root, ".build", out_name))
    return parser.parse_args()


def write_prompts(prompts, out):
    """One MT-Bench-layout JSON line per (question_id, category, text) prompt."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for qid, category, prompt in prompts:
            f.write(json.dumps({"question_id": qid, "category": category, "turns": [prompt]}) + "\n")
    print(f"{len(prompts)} prompts -> {out}")


def main():
    args = command_line(__doc__.split("\n\n")[0], "held-out-chat-prompts.jsonl")
    prompts = hellaswag_prompts(os.path.join(args.data_dir, "hellaswag_dev.txt"), 2000, 100)
    prompts += wikitext_prompts(os.path.join(args.data_dir, "wikitext2_valid.txt"), 0.85, 100, 60, 220)
    write_prompts(prompts, args.out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes a third held-out chat prompt set, from parts of ../shared/data that nothing in this
project had read when it was made (2026-12-06), in the layout `buddy eval chat --split all` reads.
It is the chat half of a check on data never seen (eval/NOTES.md, "A check on data never seen"):

  next-event  HellaSwag validation tasks 1450-1549 (HellaSwag evaluations read tasks 0-1399,
              the training requests 1400-1449, the second held-out set 2000-2099), worded as
              scripts/held_out_chat_prompts.py words them.
  summary     the WikiText-2 validation paragraphs of 60-220 words past 85 % of the file's
              characters that the second held-out set left, numbers 100-159 in file order.

  python3 scripts/third_chat_prompts.py [--data-dir ../shared/data] [--out PATH]
"""
import os

from held_out_chat_prompts import command_line, hellaswag_prompts, wikitext_prompts, write_prompts


def main():
    args = command_line(__doc__.split("\n\n")[0], "third-chat-prompts.jsonl")
    prompts = hellaswag_prompts(os.path.join(args.data_dir, "hellaswag_dev.txt"), 1450, 100)
    prompts += wikitext_prompts(os.path.join(args.data_dir, "wikitext2_valid.txt"), 0.85, 60, 60, 220, skip=100)
    write_prompts(prompts, args.out)


if __name__ == "__main__":
    main()

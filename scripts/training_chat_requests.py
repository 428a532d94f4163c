#!/usr/bin/env python3
"""Writes training chat requests for the Budget Predictor (`buddy train predictor
--extra-chat-data`), built from parts of ../shared/data that no evaluation scores and no
other fit, search or selection reads, in the MT-Bench layout (question_id, category, turns).

The predictor learned from 40 MT-Bench questions only; what they teach about a prompt's
quality curve did not carry over to held-out prompts (docs/TRAINING.md). These 250 requests
of five kinds, 50 each, give it more and more varied chat to learn from:
  next-event  HellaSwag validation tasks 1400-1449 (evaluations read tasks 0-1399 and
              2000-2099): what happens next in a video description, as in the held-out set.
  tips        the first 50 distinct activity labels of HellaSwag tasks 2100-4999, asking for
              practical tips (the label only, never a task's context or endings).
  summary     WikiText-2 paragraphs of 60-220 words that start between 42 % and 55 % of the
              file's characters (about token chunks 224-294; evaluations score chunks 20-83,
              120-151, 204-219 and 300-427), the first 50 in file order.
  explain     the next 50 such paragraphs, asking for an explanation a child would follow.
  topic       the first 50 article and section headings in the same span without an <unk>,
              asking what the model knows about the subject.
WikiText-2's tokenisation is undone as in scripts/held_out_chat_prompts.py.

  python3 scripts/training_chat_requests.py [--data-dir ../shared/data] [--out PATH]
"""
import os

from held_out_chat_prompts import (command_line, hellaswag_prompts, paragraphs, summary_prompt, untokenise,
                                   wikitext_span, write_prompts)


def tips_prompts(path, first, last, count):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    seen, prompts = set(), []
    for task in range(first, last):
        label = lines[6 * task].partition(": ")[0].strip()
        if label.lower() in seen:
            continue
        seen.add(label.lower())
        prompts.append((f"tips-{task}", "tips", f"Give me a few practical tips about {label.lower()}."))
        if len(prompts) == count:
            return prompts
    raise SystemExit(f"only {len(prompts)} distinct labels in tasks {first}-{last - 1}")


def paragraph_prompts(lines, count, min_words, max_words):
    found = paragraphs(lines, min_words, max_words)
    if len(found) < 2 * count:
        raise SystemExit(f"only {len(found)} paragraphs qualify")
    explanations = [(f"wikitext-char-{o}", "explain", "Explain this passage so that a twelve-year-old can follow it:\n\n" + untokenise(s))
                    for o, s in found[count:2 * count]]
    return [summary_prompt(o, s) for o, s in found[:count]] + explanations


def topic_prompts(lines, count):
    prompts = []
    for offset, s in lines:
        if s.startswith("=") and s.endswith("=") and "<unk>" not in s:
            title = untokenise(s.strip("= ").strip())
            prompts.append((f"wikitext-heading-{offset}", "topic", f"What can you tell me about {title}?"))
            if len(prompts) == count:
                return prompts
    raise SystemExit(f"only {len(prompts)} headings in the span")


def main():
    args = command_line(__doc__.split("\n\n")[0], "training-chat-requests.jsonl")
    hellaswag = os.path.join(args.data_dir, "hellaswag_dev.txt")
    lines = wikitext_span(os.path.join(args.data_dir, "wikitext2_valid.txt"), 0.42, 0.55)
    prompts = hellaswag_prompts(hellaswag, 1400, 50)
    prompts += tips_prompts(hellaswag, 2100, 5000, 50)
    prompts += paragraph_prompts(lines, 50, 60, 220)
    prompts += topic_prompts(lines, 50)
    write_prompts(prompts, args.out)


if __name__ == "__main__":
    main()

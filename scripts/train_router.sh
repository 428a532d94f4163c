#!/usr/bin/env bash
# Reproduces routers/buddy-router.json, the shipped Decision Module, from the repository alone.
#
#   scripts/train_router.sh              every step not yet done
#   scripts/train_router.sh --through N  steps 1..N only (to check part of the chain)
#   scripts/train_router.sh --fresh      forget which steps are done and every checkpoint, start at step 1
#
# The file was made by a chain of commands, which its notes record in order: `buddy train
# router` (candidate sets and scorers per budget), then the prompt-set searches (which layers the
# prompt runs at 0.8, 0.7, 0.9 and 0.5, then more rounds at 0.8, 0.7 and 0.5), then the reply-set
# search at 0.5 (docs/TRAINING.md). The steps below are those commands, word for word (a test
# checks them against the shipped file's notes). Like them, each step rewrites
# routers/buddy-router.json in place: afterwards `git diff routers/buddy-router.json` shows whether
# the chain reproduced the shipped file. Each command checkpoints its measurements and resumes
# when rerun; a finished step is marked in .build/train-router/ and skipped on the next run.
# Time on 2 cores (a 2-core Zen 4 with AVX-512, 2026-12-07, binary of this day): step 1 38
# minutes (search 18, neighbours at 0.9 and 0.8 7, per-position KL 7, the rest 6), steps 2-6
# 42 minutes: 80 in all (docs/TRAINING.md, "Time"). Searches run a single-threaded lane per core and
# measure sets in groups that share their first layers, with the same numbers as one set at a
# time on one thread.
# Steps 3-5 reuse the measurements of step 2's first round (a prompt-set search keeps its
# checkpoint, routers/buddy-router.json.prompt-sets.checkpoint.json; --fresh removes it).
# Checked on 2026-12-07: step 1, from scratch, wrote the routing fields of step 1's file at commit
# 0dc5746 (which also measured neighbours at 0.5, where they never shipped), and steps 2-6 from
# it wrote the shipped file (every field; its notes record that run's minutes).
# Data: ../shared/data (WikiText-2 validation and MT-Bench, as the recorded commands name them).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

through=99
case "${1:-}" in
  --through) through="${2:?--through needs a step number}" ;;
  --fresh) rm -rf .build/train-router; rm -f routers/buddy-router.json.*checkpoint.json ;;
  "") ;;
  *) echo "usage: scripts/train_router.sh [--through N | --fresh]" >&2; exit 2 ;;
esac
marks=.build/train-router
mkdir -p "$marks"

swift build -c release --product buddy
buddy=.build/release/buddy

# step N command... : runs the command unless step N is marked done (or lies past --through).
step() {
  local n="$1"; shift
  if [ "$n" -gt "$through" ]; then return; fi
  if [ -f "$marks/step-$n.done" ]; then echo "step $n: done earlier"; return; fi
  echo "step $n: $*"
  "$@"
  touch "$marks/step-$n.done"
}

step 1 "$buddy" train router --data ../shared/data/wikitext2_valid.txt --chat-data ../shared/data/mt_bench_questions.jsonl --text-chunks 8 --text-first-scored 128 --validation-skip-chunks 12 --validation-chunks 8 --chat-prompts 16 --validation-chat-skip 16 --validation-chat-prompts 24 --reply-tokens 64 --candidates sleb,shortgpt --budgets 0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95 --search-text-chunks 4 --search-window 256 --search-chat-prompts 8 --search-reply-tokens 48 --min-kept 14 --max-inclusions 20 --l2 0.0001,0.001,0.01,0.1 --min-gain 0.005 --kv-policy fill --neighbour-budgets 0.9,0.8 --neighbours 3 --pair-balance 1.0 --stand-ins routers/training/stand-ins-T.bin --out routers/buddy-router.json
step 2 "$buddy" train prompt-sets --router buddy --chat-data ../shared/data/mt_bench_questions.jsonl --prompts 40 --reply-tokens 64 --budgets 0.8,0.7,0.9,0.5 --out routers/buddy-router.json
step 3 "$buddy" train prompt-sets --router buddy --chat-data ../shared/data/mt_bench_questions.jsonl --prompts 40 --reply-tokens 64 --budgets 0.8 --rounds 4 --out routers/buddy-router.json
step 4 "$buddy" train prompt-sets --router buddy --chat-data ../shared/data/mt_bench_questions.jsonl --prompts 40 --reply-tokens 64 --budgets 0.7 --rounds 2 --out routers/buddy-router.json
step 5 "$buddy" train prompt-sets --router buddy --chat-data ../shared/data/mt_bench_questions.jsonl --prompts 40 --reply-tokens 64 --budgets 0.5 --rounds 2 --out routers/buddy-router.json
if [ "$through" -ge 6 ] && [ ! -f "$marks/step-6.done" ]; then
  python3 scripts/reply_search_prompts.py   # .build/reply-search-prompts.jsonl, step 6's chat
fi
step 6 "$buddy" train reply-sets --router buddy --chat-data .build/reply-search-prompts.jsonl --split all --prompts 60 --reply-tokens 64 --budgets 0.5 --rounds 2 --text-data ../shared/data/wikitext2_valid.txt --text-chunks 8 --validation-skip-chunks 152 --validation-chunks 68 --text-extra-chunks '84..<116' --validation-prompts 60 --balanced --prose-guard 0.1 --out routers/buddy-router.json

git diff --stat -- routers/buddy-router.json

#!/usr/bin/env bash
# Held-out figures of Gemma 3 270M (models/gemma-3-270m-q4_k_m.gguf) behind EVAL.md's section
# "Gemma 3 270M" and docs/GEMMA.md: perplexity and HellaSwag per budget and method, with and
# without Gemma's stand-ins, decode speed per budget and the output head's share of it.
#   scripts/eval_gemma.sh run         the static rows: full depth, SLEB, ShortGPT, drop-last, the
#                                     stand-in rows, and SmolLM2's bench for the head comparison
#   scripts/eval_gemma.sh run-buddy   the Decision Module's rows (method buddy) and Gemma's decode
#                                     bench with it; run it again after the router is retrained
#   scripts/eval_gemma.sh all         both (about 65 min on 1 thread: run 45, run-buddy 20)
# Every command runs on one thread (BUDDY_THREADS to change it); each part replaces only its own
# rows of the merged files eval/gemma-ppl.csv, eval/gemma-hellaswag.csv and
# eval/gemma-hellaswag-items.csv.
#
# Held out: WikiText-2 512-token chunks 20-27 of Gemma's tokens (tokens 10,240-14,335) and the
# first HELLASWAG_LIMIT (300) tasks of hellaswag_dev.txt; HellaSwag costs about 0.8 s per task and
# configuration on one thread, so the 11 configurations take about 45 min at 300 (400: about 60). What fitted what: the ShortGPT and SLEB rankings,
# WikiText-2 tokens 0-2,047 (chunks 0-3); the stand-ins, chunks 0-13 and train-split
# prompts 0-15, rank and ridge chosen on chunks 14-19 and prompts 16-23; the Decision Module,
# whatever its notes say (the router of 2026-12-02: layer-set search and scorers on chunks 0-3 and
# train-split prompts 0-7, chosen on chunks 14-19 and prompts 16-23). No HellaSwag task was used
# for any of them. run-buddy records the router file's sha256 and notes in eval/gemma-router.txt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
data="${BUDDY_DATA:-$root/../shared/data}"
buddy=.build/release/buddy
model=models/gemma-3-270m-q4_k_m.gguf
smollm2=models/SmolLM2-135M-Instruct.Q4_1.gguf
router=routers/gemma-3-270m-q4_k_m/buddy-router.json
standins=routers/gemma-3-270m-q4_k_m/stand-ins.bin
threads="${BUDDY_THREADS:-1}"
limit="${HELLASWAG_LIMIT:-300}"
ppl_args=(--model "$model" --data "$data/wikitext2_valid.txt" --skip-chunks 20 --chunks 8 --threads "$threads")
hs_args=(--model "$model" --data "$data/hellaswag_dev.txt" --limit "$limit" --threads "$threads")
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p eval

# merge TARGET NEW METHOD...: TARGET keeps its rows of other methods and gets NEW's rows (one header).
merge() {
  local target="$1" new="$2"; shift 2
  local methods=",$(IFS=,; echo "$*"),"
  {
    head -n 1 "$new"
    if [ -f "$target" ]; then tail -n +2 "$target" | awk -F, -v m="$methods" 'index(m, "," $1 ",") == 0'; fi
    tail -n +2 "$new"
  } > "$tmp/merged" && mv "$tmp/merged" "$target"
}

run_static() {
  # Perplexity: full depth, SLEB and ShortGPT with and without the stand-ins, drop-last without.
  $buddy eval perplexity "${ppl_args[@]}" --budgets 1,0.9,0.7,0.5 --methods sleb,shortgpt \
    --stand-ins "$standins,off" --csv "$tmp/ppl.csv"
  $buddy eval perplexity "${ppl_args[@]}" --budgets 0.9,0.7,0.5 --methods last \
    --stand-ins off --csv "$tmp/ppl-last.csv"
  tail -n +2 "$tmp/ppl-last.csv" >> "$tmp/ppl.csv"
  merge eval/gemma-ppl.csv "$tmp/ppl.csv" sleb shortgpt last
  # HellaSwag: full depth, SLEB and ShortGPT without stand-ins and with them.
  $buddy eval hellaswag "${hs_args[@]}" --budgets 1,0.9,0.7,0.5 --methods sleb,shortgpt \
    --stand-ins off --csv "$tmp/hs.csv" --items "$tmp/hs-items.csv"
  $buddy eval hellaswag "${hs_args[@]}" --budgets 0.9,0.7,0.5 --methods sleb,shortgpt \
    --stand-ins "$standins" --csv "$tmp/hs-si.csv" --items "$tmp/hs-si-items.csv"
  tail -n +2 "$tmp/hs-si.csv" >> "$tmp/hs.csv"
  tail -n +2 "$tmp/hs-si-items.csv" >> "$tmp/hs-items.csv"
  merge eval/gemma-hellaswag.csv "$tmp/hs.csv" sleb shortgpt
  merge eval/gemma-hellaswag-items.csv "$tmp/hs-items.csv" sleb shortgpt
  # SmolLM2's decode with its own router and plain skipping, for the head's share there.
  $buddy bench --model "$smollm2" --budgets 1,0.9,0.7,0.5 --router buddy --stand-ins off \
    --runs 5 --threads "$threads" --json > eval/gemma-bench-smollm2.jsonl
}

run_buddy() {
  { sha256sum "$router"
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["notes"])' "$router"
  } > eval/gemma-router.txt
  $buddy eval perplexity "${ppl_args[@]}" --budgets 0.9,0.7,0.5 --methods buddy --router "$router" \
    --stand-ins "$standins,off" --csv "$tmp/ppl.csv"
  merge eval/gemma-ppl.csv "$tmp/ppl.csv" buddy
  # HellaSwag and decode speed with the stand-ins, which Gemma runs by default.
  $buddy eval hellaswag "${hs_args[@]}" --budgets 0.9,0.7,0.5 --methods buddy --router "$router" \
    --stand-ins "$standins" --csv "$tmp/hs.csv" --items "$tmp/hs-items.csv"
  merge eval/gemma-hellaswag.csv "$tmp/hs.csv" buddy
  merge eval/gemma-hellaswag-items.csv "$tmp/hs-items.csv" buddy
  $buddy bench --model "$model" --budgets 1,0.9,0.7,0.5 --router "$router" --stand-ins "$standins" \
    --runs 5 --threads "$threads" --json > eval/gemma-bench.jsonl
}

case "${1:-}" in
run) swift build -c release --product buddy; run_static ;;
run-buddy) swift build -c release --product buddy; run_buddy ;;
all) swift build -c release --product buddy; run_static; run_buddy ;;
*) echo "usage: scripts/eval_gemma.sh run|run-buddy|all" >&2; exit 2 ;;
esac

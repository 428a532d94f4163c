#!/usr/bin/env bash
# A small, fast slice of EVAL.md's measurements, for checking that a refactoring changes no
# figure: run it before and after, then diff the two directories.
#   scripts/small_eval.sh OUTDIR [BUDDY_BINARY]
# Held-out slices as EVAL.md uses them: WikiText-2 chunks 36-37, HellaSwag tasks 0-23,
# the first 4 held-out MT-Bench prompts (32-token replies); budgets 1, 0.9, 0.7, 0.5; the
# shipped router and SLEB, with and without stand-ins; plus two routed greedy generations.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:?usage: scripts/small_eval.sh OUTDIR [BUDDY_BINARY]}"
buddy="${2:-.build/release/buddy}"
data="${BUDDY_DATA:-$root/../shared/data}"
mkdir -p "$out"
common=(--budgets 1,0.9,0.7,0.5 --methods buddy,sleb --stand-ins on,off)
"$buddy" eval perplexity --data "$data/wikitext2_valid.txt" --skip-chunks 36 --chunks 2 "${common[@]}" --csv "$out/ppl.csv" > /dev/null
"$buddy" eval hellaswag --data "$data/hellaswag_dev.txt" --limit 24 "${common[@]}" --csv "$out/hellaswag.csv" > /dev/null
"$buddy" eval chat --data "$data/mt_bench_questions.jsonl" --split heldout --limit 4 --max-reply 32 "${common[@]}" --csv "$out/chat.csv" > /dev/null
for b in 0.9 0.5; do
  "$buddy" generate --prompt "The capital of France is" --budget $b --max-tokens 24 --temperature 0 --json > "$out/generate-$b.jsonl" 2> /dev/null
done
# Timing columns differ from run to run; everything else must not.
for f in "$out"/*.csv; do python3 - "$f" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
drop = {c for c in (rows[0].keys() if rows else []) if "sec" in c or "tok_s" in c or "ms" in c}
with open(sys.argv[1] + ".stable", "w") as f:
    for r in rows: f.write(",".join(f"{k}={v}" for k, v in r.items() if k not in drop) + "\n")
PY
done
echo "wrote $out"

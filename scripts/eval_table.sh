#!/usr/bin/env bash
# Writes EVAL.md: held-out WikiText-2 perplexity per method and budget, a KV-policy comparison
# for the Decision Module, and decode speed per budget. Usage: scripts/eval_table.sh [CHUNKS]
# (CHUNKS held-out 512-token chunks, starting at chunk 16, past all calibration/training text).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
chunks="${1:-8}"
data="${BUDDY_DATA:-$root/../shared/data}/wikitext2_valid.txt"
buddy=.build/release/buddy
budgets=1,0.95,0.9,0.8,0.7,0.6,0.5
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
$buddy eval perplexity --data "$data" --skip-chunks 16 --chunks "$chunks" --budgets $budgets \
  --methods buddy,shortgpt,sleb,last --csv "$tmp/ppl.csv" > /dev/null
for p in mask zero fill; do
  $buddy eval perplexity --data "$data" --skip-chunks 16 --chunks "$chunks" --budgets 0.9,0.8 \
    --methods buddy --kv-policy $p --csv "$tmp/kv-$p.csv" > /dev/null
done
$buddy bench --budgets 1,0.9,0.8,0.75,0.5 --runs 3 --router buddy > "$tmp/bench.md"

python3 - "$tmp" "$chunks" > EVAL.md <<'PY'
import csv, sys, os
tmp, chunks = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(os.path.join(tmp, "ppl.csv"))))
methods = ["buddy", "shortgpt", "sleb", "last"]
budgets = sorted({float(r["budget"]) for r in rows}, reverse=True)
ppl = {(r["method"], float(r["budget"])): float(r["ppl"]) for r in rows}
print("# Evaluation\n")
print(f"Made by `scripts/eval_table.sh {chunks}`. WikiText-2 validation, llama.cpp's perplexity protocol "
      f"(512-token chunks, second half scored), {chunks} chunks starting at chunk 16 (token 8,192), past all text "
      "used for calibration (SLEB: tokens 0–1,023; ShortGPT: 0–4,095) and router training (tokens 0–4,095, α chosen on chunks 8–9). "
      "KV policy mask. `buddy` routes per token as in generation (the unscored first half of each chunk is a prompt "
      "with one decision; every scored token is a decode step with its own decision).\n")
print("## Perplexity (lower is better)\n")
print("| budget | " + " | ".join(methods) + " | best static |")
print("|---|" + "---|" * (len(methods) + 1))
for b in budgets:
    best = min(ppl[(m, b)] for m in ["shortgpt", "sleb", "last"])
    print(f"| {b:.2f} | " + " | ".join(f"{ppl[(m, b)]:.2f}" for m in methods) + f" | {best:.2f} |")
print("\n## KV policy for skipped layers (Decision Module)\n")
print("| policy | 0.90 | 0.80 |")
print("|---|---|---|")
for p in ["mask", "zero", "fill"]:
    r = {float(x["budget"]): float(x["ppl"]) for x in csv.DictReader(open(os.path.join(tmp, f"kv-{p}.csv")))}
    print(f"| {p} | {r[0.9]:.2f} | {r[0.8]:.2f} |")
print("\n## Decode speed (buddy router, 512-token prompt, 128 decoded, median of 3, 2 threads)\n")
print(open(os.path.join(tmp, "bench.md")).read())
print("\nNot measured yet: HellaSwag acc_norm, chat KL and top-1 agreement (the `buddy eval hellaswag` and "
      "`buddy eval chat` commands do not exist yet), and the Budget Predictor.")
PY
echo "wrote EVAL.md" >&2

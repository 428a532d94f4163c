#!/usr/bin/env bash
# The facts probe (eval/NOTES.md, "Which layers hold simple facts at 70 %? A cloze probe"): the
# four-choice cloze tasks of eval/facts-cloze.txt scored by `buddy eval hellaswag`, with every
# context token routed as a reply token is.
#
#   scripts/facts_probe.sh even|odd [OPTIONS…]
#
# even: the tasks at even positions (diagnosis and selection); odd: the held-out half. OPTIONS go
# to `buddy eval hellaswag` (default: --budgets 1,0.9,0.8,0.7,0.5 --methods buddy,sleb,shortgpt);
# --csv and --items paths are relative to the repository.
#
# Why a scratch directory: in the chat the prompt runs at full depth and the reply is routed token
# by token, and the answer is in the reply. A cloze context holds the question and the answer's
# first words, so it must be routed like reply tokens, not as a prompt: the routers here are the
# shipped files with their prompt sets removed (a prompt then is decided token by token, like a
# reply). Routers are looked up next to the model first, so the scratch directory holds a link to
# models/ and its own routers/ (the stand-ins are the shipped ones).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
half="${1:-}"
case "$half" in
  even) first=0 ;;
  odd) first=1 ;;
  *) echo "usage: scripts/facts_probe.sh even|odd [buddy eval hellaswag options]" >&2; exit 2 ;;
esac
shift
scratch="$root/.build/facts-probe"
mkdir -p "$scratch/routers"
ln -sfn "$root/models" "$scratch/models"
ln -sf "$root/routers/stand-ins.bin" "$scratch/routers/stand-ins.bin"
python3 - "$root" "$scratch" "$first" <<'EOF'
import json, sys
root, scratch, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
for name in ("buddy-router.json", "sleb-ranking.json", "shortgpt-ranking.json"):
    router = json.load(open(f"{root}/routers/{name}"))
    router.pop("prompt_sets", None)
    json.dump(router, open(f"{scratch}/routers/{name}", "w"))
lines = open(f"{root}/eval/facts-cloze.txt").read().rstrip("\n").split("\n")
tasks = [lines[i:i + 6] for i in range(0, len(lines), 6)]
open(f"{scratch}/tasks.txt", "w").write("\n".join(line for task in tasks[first::2] for line in task) + "\n")
EOF
(cd "$root" && swift build -c release --product buddy)   # as scripts/train_router.sh: never a stale binary
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--budgets 1,0.9,0.8,0.7,0.5 --methods buddy,sleb,shortgpt)
# --csv and --items name files relative to the repository, not to the scratch directory.
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --csv|--items)
      next=$((i + 1))
      if [ "$next" -lt "${#args[@]}" ] && [[ "${args[$next]}" != /* ]]; then args[$next]="$root/${args[$next]}"; fi ;;
  esac
done
cd "$scratch"
"$root/.build/release/buddy" eval hellaswag --data tasks.txt "${args[@]}"

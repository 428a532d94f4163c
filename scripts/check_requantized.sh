#!/usr/bin/env bash
# Buddy against llama.cpp on the requantised files, from the committed fixture
# Tests/Fixtures/requantized.json (written by scripts/make_requantized_fixtures.py).
# Needs only buddy and python3 (standard library); never llama.cpp.
#
#   swift build -c release
#   python3 scripts/requantize.py            # once, needs llama-cpp-python (files go to models/)
#   scripts/check_requantized.sh             # all types whose file is in models/
#   scripts/check_requantized.sh Q4_K_M F16  # some of them
#
# For each type whose file is present (and whose sha256 matches the fixture): perplexity over
# the fixture's chunks within 1 % of llama.cpp's, and greedy ids equal to llama.cpp's up to its
# first near-tie. Absent files are reported as "absent" and not counted; the exit status is 1
# if any present file disagrees, 2 if none is present.
set -euo pipefail
cd "$(dirname "$0")/.."
BUDDY=${BUDDY:-.build/release/buddy}
DATA=${BUDDY_WIKITEXT:-../shared/data/wikitext2_valid.txt}
THREADS=${THREADS:-2}
[ -x "$BUDDY" ] || { echo "build first: swift build -c release" >&2; exit 1; }
exec python3 - "$BUDDY" "$DATA" "$THREADS" "$@" <<'EOF'
import hashlib, json, math, os, re, subprocess, sys

buddy, data, threads, only = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
fx = json.load(open("Tests/Fixtures/requantized.json"))
tie = fx["near_tie_margin"]
prompts = {p["name"]: p for p in fx["prompts"]}

def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()

def run(args):
    return subprocess.run([buddy] + args, check=True, capture_output=True, text=True).stdout

failed, checked = [], 0
print("| type | llama.cpp ppl | buddy ppl | ratio | greedy ids compared (up to first near-tie) | verdict |")
print("|---|---|---|---|---|---|")
for f in fx["files"]:
    if only and f["type"] not in only:
        continue
    path = os.path.join("models", f["file"])
    if not os.path.exists(path):
        print(f"| {f['type']} | {f['ppl']:.4f} | absent | | | absent ({path}) |")
        continue
    if sha256(path) != f["sha256"]:
        print(f"| {f['type']} | {f['ppl']:.4f} | | | | different file (sha256) |")
        failed.append(f["type"]); continue
    checked += 1
    out = run(["eval", "perplexity", "--model", path, "--data", data, "--chunks", str(fx["ppl_chunks"]),
               "--ctx", str(fx["n_ctx"]), "--threads", threads])
    ppl = float(re.search(r"perplexity ([0-9.]+)", out).group(1))
    ratio = ppl / f["ppl"]
    ok = abs(ratio - 1) <= 0.01
    notes, compared = [], 0
    for g in f["greedy"]:
        p = prompts[g["name"]]
        end = next((k for k, s in enumerate(g["steps"]) if s["margin"] < tie), len(g["steps"]))
        want = [s["id"] for s in g["steps"][:end]]
        args = ["generate", "--model", path, "--max-tokens", str(len(g["steps"])), "--json", "--threads", threads,
                "--prompt", p["message"]] + (["--chat"] if p["kind"] == "chat" else [])
        got = [json.loads(l)["id"] for l in run(args).splitlines() if '"type":"token"' in l][:end]
        compared += end
        if got != want:
            ok = False
            k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            notes.append(f"{g['name']} differs at step {k} (llama.cpp margin {g['steps'][k]['margin']})")
    print(f"| {f['type']} | {f['ppl']:.4f} | {ppl:.4f} | {ratio:.4f} | {compared} | {'ok' if ok else 'FAIL ' + '; '.join(notes)} |")
    if not ok:
        failed.append(f["type"])
if failed:
    print("disagreeing:", " ".join(failed)); sys.exit(1)
if checked == 0:
    print("no requantised file present: run python3 scripts/requantize.py"); sys.exit(2)
print(f"{checked} file(s) agree with llama.cpp")
EOF

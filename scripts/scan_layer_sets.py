#!/usr/bin/env python3
"""Perplexity of fixed layer sets at one budget, for checking a router's set against its neighbours.

Each set is run as a ranking file that lists its kept layers first (so `--budgets B` keeps
exactly them), through `buddy eval perplexity --router FILE` with the model's stand-ins.
    scripts/scan_layer_sets.py --skip-chunks 120 --chunks 8 --skipped 5-14-15 --neighbours
    scripts/scan_layer_sets.py --skip-chunks 128 --chunks 16 --skipped 5-14-15,14-15-17
Sets are named by their skipped routable layers; --neighbours adds every one-swap neighbour of
the first set. Prints "skipped-layers perplexity" per set. Needs a release build.
"""
import argparse, json, os, re, subprocess, tempfile

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
parser = argparse.ArgumentParser()
parser.add_argument("--skip-chunks", type=int, required=True)
parser.add_argument("--chunks", type=int, required=True)
parser.add_argument("--skipped", required=True, help="comma-separated sets of skipped layers, e.g. 5-14-15,13-14-15")
parser.add_argument("--neighbours", action="store_true")
parser.add_argument("--routable", type=int, default=28)
args = parser.parse_args()

sets = [tuple(sorted(int(x) for x in s.split("-"))) for s in args.skipped.split(",")]
if args.neighbours:
    base = sets[0]
    for i in range(len(base)):
        for layer in range(1, args.routable + 1):
            s = tuple(sorted(base[:i] + (layer,) + base[i + 1:]))
            if layer not in base and s not in sets:
                sets.append(s)
budget = (args.routable - len(sets[0])) / args.routable
template = json.load(open(os.path.join(root, "routers", "sleb-ranking.json")))
with tempfile.TemporaryDirectory() as tmp:
    for s in sets:
        ranking = dict(template, method="scan", notes="scripts/scan_layer_sets.py",
                       ranking=[l for l in range(1, args.routable + 1) if l not in s] + list(s))
        path = os.path.join(tmp, "set.json")
        json.dump(ranking, open(path, "w"))
        out = subprocess.run([os.path.join(root, ".build", "release", "buddy"), "eval", "perplexity",
                              "--data", os.path.join(root, "..", "shared", "data", "wikitext2_valid.txt"),
                              "--skip-chunks", str(args.skip_chunks), "--chunks", str(args.chunks),
                              "--budgets", f"{budget:.4f}", "--methods", "buddy", "--router", path],
                             capture_output=True, text=True, cwd=root, check=True).stdout
        print("-".join(map(str, s)), re.search(r"perplexity ([0-9.]+)", out).group(1), flush=True)

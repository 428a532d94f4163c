#!/usr/bin/env python3
"""Generate the Gemma 3 agreement fixture (Tests/Fixtures/gemma3-model.json) from llama.cpp.

A development oracle, like scripts/make_fixtures.py: llama.cpp (llama-cpp-python) runs
models/gemma-3-270m-q4_k_m.gguf on the CPU and this script records what the Swift engine
must reproduce. Every token id in the fixture comes from llama.cpp's own tokenizer, so the
Swift tests need no Gemma tokenizer.

    pip install llama-cpp-python gguf
    python3 scripts/make_gemma_model_fixtures.py      # options: --model, --wikitext, --out

Contents:
  prompts:    a few raw prompts (BOS first, as the model's add_bos_token asks). The prompt is
              evaluated once, then greedy decoding runs one token at a time; each step holds
              `id` (argmax), `margin` (top1 - top2 logit), `top` (8 best [id, logit]),
              `sample` (logits at the header's `sample_ids`) and `lse` (log-sum-exp of all
              logits: a summary of the full row).
  perplexity: llama-perplexity's protocol on WikiText-2 valid, n_ctx 512, the first chunks;
              each chunk stores the 512 token ids as evaluated (BOS substituted first), its
              nll_sum and count (positions 256..510 scoring the next token).
  window:     one sequence longer than the sliding window (BOS + 639 WikiText tokens) in one
              batch with n_ctx 1024: logits summaries at a few positions on both sides of 512
              and the nll of positions 512..638, so the local layers' 512-token window is
              checked against llama.cpp.
  llama_cpp_self_consistency: llama.cpp's own batch-vs-incremental logit differences for
              the greedy runs (a realistic tolerance scale).

Deterministic on 2 threads (greedy, fixed seed, flash attention off, f16 KV cache).
"""

import argparse
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import dump, last_logits, r4, sha256_file  # noqa: E402  (shared helpers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(ROOT, "models", "gemma-3-270m-q4_k_m.gguf")
DEFAULT_WIKITEXT = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "wikitext2_valid.txt"))
DEFAULT_OUT = os.path.join(ROOT, "Tests", "Fixtures")

N_THREADS = 2
SEED = 1234
GREEDY_N_CTX = 512
GREEDY_MAX_NEW = 24
TOP_K = 8
PPL_N_CTX = 512
PPL_CHUNKS = 2
WINDOW_LEN = 640
WINDOW_POSITIONS = [100, 511, 512, 513, 600, 639]

RAW_PROMPTS = [
    ("capital", "The capital of France is"),
    ("recipe", "To make a simple tomato sauce, you need"),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("story", "Once upon a time, in a small village by the sea, there lived"),
]

PPL_PROTOCOL = (
    "llama.cpp tools/perplexity/perplexity.cpp with ppl_stride=0: the file is read whole, one trailing "
    "'\\n' stripped, tokenized with add_special=true (BOS first: add_bos_token=true) and parse_special=false; "
    "chunk i = tokens[i*n_ctx:(i+1)*n_ctx] with its first token replaced by BOS, evaluated from an empty KV "
    "cache in one batch; for j in n_ctx/2..n_ctx-2 the logits at j score token j+1 "
    "(nll += logsumexp - logit[target], float64 over float32 logits); ppl = exp(sum nll / sum count)."
)


def lse(row):
    row = np.asarray(row, dtype=np.float64)
    m = row.max()
    return m + math.log(np.exp(row - m).sum())


def sample_ids(n_vocab):
    ids = list(range(8))
    lo, hi, n = 8, n_vocab - 1, 56
    ids += [lo + round(i * (hi - lo) / (n - 1)) for i in range(n)]
    assert len(ids) == 64 and len(set(ids)) == 64
    return ids


def summary(row, sids):
    """top-K [id, logit] (ties -> lowest id), the logits at sample ids and the row's lse."""
    order = np.lexsort((np.arange(len(row)), -row))
    top = order[:TOP_K]
    return {
        "id": int(top[0]),
        "margin": r4(row[top[0]] - row[top[1]]),
        "top": [[int(i), r4(row[i])] for i in top],
        "sample": [r4(row[i]) for i in sids],
        "lse": round(lse(row), 4),
    }


def new_llm(model, n_ctx, logits_all):
    return Llama(model_path=model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=min(n_ctx, 512),
                 n_threads=N_THREADS, n_threads_batch=N_THREADS, seed=SEED, flash_attn=False,
                 logits_all=logits_all, verbose=False)


def make_prompts(model, sids):
    llm = new_llm(model, GREEDY_N_CTX, False)
    assert llama_cpp.llama_vocab_get_add_bos(llm._model.vocab), "the protocol below assumes add_bos_token=true"
    bos = llm.token_bos()
    prompts = []
    for name, text in RAW_PROMPTS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        assert ids[0] == bos
        llm.reset()
        llm.eval(ids)
        steps = []
        for _ in range(GREEDY_MAX_NEW):
            row = last_logits(llm)
            steps.append(summary(row, sids))
            tok = steps[-1]["id"]
            if tok == llm.token_eos():
                break
            llm.eval([tok])
        prompts.append({"name": name, "text": text, "prompt_ids": ids, "steps": steps})
        print(f"  {name}: {len(ids)} prompt tokens, {len(steps)} steps, "
              f"min margin before step 8: {min(s['margin'] for s in steps[:8]):.3f}")
    del llm

    # llama.cpp against itself: the same sequences in one batch.
    llm = new_llm(model, GREEDY_N_CTX, True)
    worst_top, worst_sample, mism = 0.0, 0.0, []
    for p in prompts:
        ids = p["prompt_ids"] + [s["id"] for s in p["steps"]]
        llm.reset()
        llm.eval(ids)
        n_p = len(p["prompt_ids"])
        for k, s in enumerate(p["steps"]):
            row = np.asarray(llm.scores[n_p - 1 + k])
            worst_top = max(worst_top, max(abs(float(row[i]) - v) for i, v in s["top"]))
            worst_sample = max(worst_sample, max(abs(float(row[i]) - v) for i, v in zip(sids, s["sample"])))
            if int(np.argmax(row)) != s["id"]:
                mism.append({"prompt": p["name"], "step": k, "margin": s["margin"]})
    del llm
    consistency = {
        "what": "llama.cpp itself: one-batch (logits_all) vs incremental logits for the greedy sequences",
        "max_abs_diff_top": round(worst_top, 4), "max_abs_diff_sample": round(worst_sample, 4),
        "argmax_mismatches": mism,
    }
    print(f"  llama.cpp batch vs incremental: max |d| top {worst_top:.4f}, sample {worst_sample:.4f}, "
          f"{len(mism)} argmax mismatches")
    return prompts, consistency


def wikitext_tokens(model, path):
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    if text.endswith("\n"):
        text = text[:-1]
    tok = Llama(model_path=model, vocab_only=True, verbose=False)
    t0 = time.time()
    ids = tok.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    bos = tok.token_bos()
    print(f"  tokenized {len(raw)} bytes -> {len(ids)} tokens ({time.time() - t0:.1f}s)")
    return raw, ids, bos


def make_perplexity(model, ids, bos):
    llm = new_llm(model, PPL_N_CTX, True)
    n_ctx, first = PPL_N_CTX, PPL_N_CTX // 2
    chunks, nll_total, count_total = [], 0.0, 0
    for i in range(PPL_CHUNKS):
        chunk = list(ids[i * n_ctx:(i + 1) * n_ctx])
        chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
        nll = sum(lse(logits[j]) - logits[j][chunk[j + 1]] for j in range(first, n_ctx - 1))
        count = n_ctx - 1 - first
        nll_total += nll
        count_total += count
        chunks.append({"index": i, "nll_sum": round(nll, 6), "count": count, "ids": chunk})
        print(f"  chunk {i}: nll_sum {nll:.4f}, ppl so far {math.exp(nll_total / count_total):.4f}")
    del llm
    return {"n_ctx": n_ctx, "first": first, "protocol": PPL_PROTOCOL,
            "ppl": round(math.exp(nll_total / count_total), 6), "chunks": chunks}


def make_window(model, ids, bos, sids):
    """BOS + WikiText tokens from chunk 2 on: positions past 512 see only the last 512 on local layers."""
    seq = [bos] + list(ids[PPL_CHUNKS * PPL_N_CTX:PPL_CHUNKS * PPL_N_CTX + WINDOW_LEN - 1])
    llm = new_llm(model, 1024, True)
    llm.eval(seq)
    logits = np.asarray(llm.scores[:WINDOW_LEN], dtype=np.float32)
    del llm
    first = 512
    nll = sum(lse(logits[j]) - float(logits[j][seq[j + 1]]) for j in range(first, WINDOW_LEN - 1))
    rows = [dict(position=p, **summary(logits[p], sids)) for p in WINDOW_POSITIONS]
    print(f"  window: {len(seq)} tokens, nll over {first}..{WINDOW_LEN - 2}: {nll:.4f}")
    return {"ids": seq, "first_scored": first, "nll_sum": round(nll, 6), "count": WINDOW_LEN - 1 - first,
            "n_ctx": 1024, "n_ubatch": 512, "positions": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--wikitext", default=os.environ.get("BUDDY_WIKITEXT", DEFAULT_WIKITEXT))
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    n_vocab = Llama(model_path=args.model, vocab_only=True, verbose=False).n_vocab()
    sids = sample_ids(n_vocab)
    print("[1/3] greedy prompts")
    prompts, consistency = make_prompts(args.model, sids)
    print("[2/3] perplexity")
    raw, ids, bos = wikitext_tokens(args.model, args.wikitext)
    ppl = make_perplexity(args.model, ids, bos)
    print("[3/3] sliding window")
    window = make_window(args.model, ids, bos, sids)

    header = {
        "llama_cpp_version": llama_cpp.__version__,
        "model": os.path.basename(args.model),
        "model_sha256": sha256_file(args.model),
        "dataset": "wikitext2_valid.txt (../shared/data, not in repo)",
        "dataset_sha256": hashlib.sha256(raw).hexdigest(),
        "dataset_total_tokens": len(ids),
        "settings": {"n_threads": N_THREADS, "seed": SEED, "flash_attn": False, "kv_type": "default (f16)",
                     "greedy_n_ctx": GREEDY_N_CTX, "max_new_tokens": GREEDY_MAX_NEW, "top_k_recorded": TOP_K,
                     "logit_rounding": 4, "margin": "top1 - top2 logit, before rounding",
                     "decode": "llm.eval(prompt_ids) once, then llm.eval([id]) one token at a time; "
                               "argmax (ties -> lowest id); stops at EOS"},
        "sample_ids": sids,
        "llama_cpp_self_consistency": consistency,
    }
    lines = ["{"]
    for k, v in header.items():
        lines.append(f"  {dump(k)}: {dump(v)},")
    lines.append('  "prompts": [')
    for i, p in enumerate(prompts):
        head = {k: p[k] for k in ("name", "text", "prompt_ids")}
        body = ",\n".join(f"      {dump(s)}" for s in p["steps"])
        lines.append("    " + dump(head)[:-1] + ', "steps": [\n' + body + "\n    ]}" + ("," if i + 1 < len(prompts) else ""))
    lines.append("  ],")
    pchunks = ppl.pop("chunks")
    lines.append('  "perplexity": ' + dump(ppl)[:-1] + ', "chunks": [')
    lines.append(",\n".join(f"    {dump(c)}" for c in pchunks))
    lines.append("  ]},")
    wrows = window.pop("positions")
    lines.append('  "window": ' + dump(window)[:-1] + ', "positions": [')
    lines.append(",\n".join(f"    {dump(r)}" for r in wrows))
    lines.append("  ]}")
    lines.append("}")
    path = os.path.join(args.out, "gemma3-model.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(path, encoding="utf-8") as f:
        json.load(f)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden fixtures for the requantised files (llama.cpp oracle through llama-cpp-python).

For each models/SmolLM2-135M-Instruct.<TYPE>.gguf written by scripts/requantize.py this
records, in Tests/Fixtures/requantized.json: the file's sha256 and tensor-type counts,
llama.cpp's perplexity on the first 8 chunks of WikiText-2 valid with the llama-perplexity
protocol (same code path as scripts/make_fixtures.py), and greedy ids with top-2 margins
for a few raw and chat prompts (prompt evaluated once, then one token at a time).

    pip install llama-cpp-python gguf
    python3 scripts/requantize.py
    python3 scripts/make_requantized_fixtures.py
    scripts/check_requantized.sh          # buddy against these fixtures (no llama.cpp needed)

Development oracle only; the Swift tests read the JSON, never llama.cpp.
"""
import argparse
import collections
import hashlib
import math
import os
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (shared helpers: sha256, chat template, logits, JSON layout)

TYPES = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q5_1", "F16"]
PROMPTS = [
    ("raw_france", "raw", "The capital of France is"),
    ("raw_once", "raw", "Once upon a time"),
    ("chat_haiku", "chat", "Write a haiku about the sea."),
    ("chat_reverse", "chat", "How do I reverse a list in Python?"),
]
MAX_NEW = 32
NEAR_TIE = 0.5
TOP_K = 4


def tensor_types(path):
    try:
        import gguf
    except ImportError:
        return None
    r = gguf.GGUFReader(path)
    c = collections.Counter(t.tensor_type.name for t in r.tensors)
    return dict(sorted(c.items()))


def greedy(llm, prompt_ids):
    llm.reset()
    llm.eval(prompt_ids)
    steps = []
    for _ in range(MAX_NEW):
        logits = mf.last_logits(llm)
        order = np.lexsort((np.arange(len(logits)), -logits))
        tok = int(order[0])
        steps.append({"id": tok, "margin": mf.r4(logits[order[0]] - logits[order[1]]),
                      "top": [[int(i), mf.r4(logits[i])] for i in order[:TOP_K]]})
        if tok in (mf.IM_END, mf.ENDOFTEXT):
            break
        llm.eval([tok])
    return steps


def perplexity(path, tokens, chunks):
    llm = Llama(model_path=path, n_ctx=mf.PPL_N_CTX, n_batch=mf.PPL_N_BATCH, n_ubatch=mf.PPL_N_BATCH,
                n_threads=mf.N_THREADS, n_threads_batch=mf.N_THREADS, seed=mf.SEED,
                logits_all=True, verbose=False)
    n_ctx, first = mf.PPL_N_CTX, mf.PPL_N_CTX // 2
    out, nll_total, count_total = [], 0.0, 0
    for i in range(chunks):
        chunk = tokens[i * n_ctx:(i + 1) * n_ctx]
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
        nll = 0.0
        for j in range(first, n_ctx - 1):
            row = logits[j]
            m = row.max()
            nll += m + math.log(np.exp(row - m).sum()) - row[chunk[j + 1]]
        count = n_ctx - 1 - first
        nll_total += nll
        count_total += count
        out.append({"index": i, "nll_sum": round(nll, 6), "count": count})
    del llm
    return out, math.exp(nll_total / count_total)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=os.path.join(mf.ROOT, "models"))
    ap.add_argument("--types", nargs="+", default=TYPES)
    ap.add_argument("--wikitext", default=os.environ.get("BUDDY_WIKITEXT", mf.DEFAULT_WIKITEXT))
    ap.add_argument("--chunks", type=int, default=mf.PPL_CHUNKS)
    ap.add_argument("--out", default=os.path.join(mf.DEFAULT_OUT, "requantized.json"))
    args = ap.parse_args()

    source = os.path.join(args.models, "SmolLM2-135M-Instruct.Q4_1.gguf")
    with open(args.wikitext, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    text = text[:-1] if text.endswith("\n") else text
    vocab = Llama(model_path=source, vocab_only=True, verbose=False)
    tokens = vocab.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    prompts = []
    for name, kind, msg in PROMPTS:
        t = msg if kind == "raw" else mf.chatml(msg)
        prompts.append({"name": name, "kind": kind, "message": msg, "text": t,
                        "prompt_ids": vocab.tokenize(t.encode("utf-8"), add_bos=False, special=True)})
    del vocab
    print(f"llama_cpp {llama_cpp.__version__}; {len(tokens)} WikiText-2 tokens")

    files = []
    for ty in args.types:
        path = os.path.join(args.models, f"SmolLM2-135M-Instruct.{ty}.gguf")
        if not os.path.exists(path):
            sys.exit(f"missing {path}: run scripts/requantize.py")
        t0 = time.time()
        sha = mf.sha256_file(path)
        # Tokenizer is the same in every requantised file (same vocabulary metadata).
        chunks, ppl = perplexity(path, tokens, args.chunks)
        llm = Llama(model_path=path, n_ctx=mf.GREEDY_N_CTX, n_batch=mf.GREEDY_N_BATCH,
                    n_threads=mf.N_THREADS, n_threads_batch=mf.N_THREADS, seed=mf.SEED,
                    logits_all=False, verbose=False)
        greedy_runs = [{"name": p["name"], "steps": greedy(llm, p["prompt_ids"])} for p in prompts]
        del llm
        files.append({"type": ty, "file": os.path.basename(path), "bytes": os.path.getsize(path),
                      "sha256": sha, "tensor_types": tensor_types(path),
                      "ppl": round(ppl, 6), "chunks": chunks, "greedy": greedy_runs})
        ties = {g["name"]: next((k for k, s in enumerate(g["steps"]) if s["margin"] < NEAR_TIE), len(g["steps"]))
                for g in greedy_runs}
        print(f"{ty}: ppl {ppl:.4f}, first near-tie per prompt {ties}, types {files[-1]['tensor_types']} "
              f"({time.time() - t0:.1f}s)")

    header = {
        "llama_cpp_version": llama_cpp.__version__,
        "source_model": os.path.basename(source),
        "source_model_sha256": mf.sha256_file(source),
        "made_by": "scripts/requantize.py (llama_model_quantize, allow_requantize) then scripts/make_requantized_fixtures.py",
        "n_threads": mf.N_THREADS,
        "dataset": "wikitext2_valid.txt (../shared/data, not in repo)",
        "dataset_sha256": hashlib.sha256(raw).hexdigest(),
        "n_ctx": mf.PPL_N_CTX,
        "first": mf.PPL_N_CTX // 2,
        "ppl_chunks": args.chunks,
        "protocol": mf.PPL_PROTOCOL,
        "greedy": (f"prompt evaluated once (n_ctx {mf.GREEDY_N_CTX}, n_batch {mf.GREEDY_N_BATCH}), then one token "
                   f"at a time, up to {MAX_NEW} new tokens, stopping at ids {[mf.IM_END, mf.ENDOFTEXT]}; argmax "
                   f"(ties -> lowest id); margin = top1 - top2 before rounding; top = {TOP_K} best [id, logit]"),
        "near_tie_margin": NEAR_TIE,
        "targets": "buddy perplexity within 1 % of ppl; greedy ids equal up to the first step with margin < near_tie_margin",
        "prompts": prompts,
    }

    def render(f):
        head = {k: f[k] for k in ("type", "file", "bytes", "sha256", "tensor_types", "ppl")}
        lines = ["    " + mf.dump(head)[:-1] + ", \"chunks\": ["]
        lines.append(",\n".join("      " + mf.dump(c) for c in f["chunks"]) + "], \"greedy\": [")
        lines.append(",\n".join("      " + mf.dump(g) for g in f["greedy"]))
        return "\n".join(lines) + "]}"

    mf.write_json(args.out, header, "files", files, render)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

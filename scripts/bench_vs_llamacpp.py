#!/usr/bin/env python3
"""Speed of buddy against llama.cpp (llama-cpp-python) on the same GGUF, same thread count.

Runs the two alternately, --rounds times, and prints medians and the ratios ours/llama.cpp
for prefill (a --prompt-tokens prompt) and greedy decode (--gen-tokens tokens).

    pip install llama-cpp-python      # development peer only; buddy never needs it
    swift build -c release
    python3 scripts/bench_vs_llamacpp.py --threads 2 --rounds 5
"""
import argparse, json, os, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = ("The history of the region is long and varied. Over the centuries many peoples settled its valleys, "
        "built towns along its rivers and traded with distant lands. ")


def bench_buddy(args):
    out = subprocess.run([os.path.join(ROOT, ".build/release/buddy"), "bench", "--model", args.model, "--threads", str(args.threads),
                          "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens),
                          "--budgets", "1", "--runs", "1", "--json"], check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["prefill_tok_s"], r["decode_tok_s"]


def bench_llama(llm, args):
    ids = []
    while len(ids) < args.prompt_tokens:
        ids += llm.tokenize(SEED.encode(), add_bos=False, special=False)
    ids = ids[:args.prompt_tokens]
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    import numpy as np
    n_vocab = llm.n_vocab()
    def last_logits():
        p = llm._ctx.get_logits()
        return np.ctypeslib.as_array(p, shape=(n_vocab,))
    tok = int(np.argmax(last_logits()))
    t2 = time.perf_counter()
    for _ in range(args.gen_tokens - 1):
        llm.eval([tok])
        tok = int(np.argmax(last_logits()))
    t3 = time.perf_counter()
    return args.prompt_tokens / (t1 - t0), (args.gen_tokens - 1) / (t3 - t2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama-cpp-python is not installed: pip install llama-cpp-python")
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=args.prompt_tokens + args.gen_tokens + 8, n_batch=512,
                          n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    bench_llama(llm, args)  # warm-up
    bench_buddy(args)
    ours_p, ours_d, ref_p, ref_d = [], [], [], []
    for i in range(args.rounds):
        p, d = bench_buddy(args); ours_p.append(p); ours_d.append(d)
        p, d = bench_llama(llm, args); ref_p.append(p); ref_d.append(d)
        print(f"round {i + 1}: buddy prefill {ours_p[-1]:.1f} decode {ours_d[-1]:.1f} | llama.cpp prefill {ref_p[-1]:.1f} decode {ref_d[-1]:.1f} tok/s",
              file=sys.stderr)
    med = statistics.median
    print(f"threads {args.threads}, prompt {args.prompt_tokens}, decode {args.gen_tokens}, {args.rounds} alternating rounds, llama_cpp {llama_cpp.__version__}")
    print("| | buddy tok/s | llama.cpp tok/s | ratio |")
    print("|---|---|---|---|")
    print(f"| prefill | {med(ours_p):.1f} | {med(ref_p):.1f} | {med(ours_p) / med(ref_p):.2f} |")
    print(f"| decode | {med(ours_d):.1f} | {med(ref_d):.1f} | {med(ours_d) / med(ref_d):.2f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generate golden fixtures for Buddy's Swift engine from llama.cpp (llama-cpp-python).

This is a development oracle: it writes JSON files into Tests/Fixtures/ that the
Swift tests compare our tokenizer, forward pass and perplexity code against.

    pip install llama-cpp-python gguf
    python3 scripts/make_fixtures.py

Options: --model PATH, --wikitext PATH, --out DIR (defaults below).

Everything runs on the CPU with n_threads=2 and is deterministic (greedy decoding,
fixed seed, fixed thread count), so re-running it should give identical files for
the same llama_cpp version.
"""

import argparse
import ctypes
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_WIKITEXT = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "wikitext2_valid.txt"))
DEFAULT_OUT = os.path.join(ROOT, "Tests", "Fixtures")

N_THREADS = 2
SEED = 1234

SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
IM_END = 2          # <|im_end|>
ENDOFTEXT = 0       # <|endoftext|>
GREEDY_N_CTX = 2048
GREEDY_N_BATCH = 512
GREEDY_MAX_NEW = 48
GREEDY_TOP_K = 16

PPL_N_CTX = 512
PPL_N_BATCH = 512
PPL_CHUNKS = 8


# --------------------------------------------------------------------------- helpers

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def r4(x):
    """Round a logit to 4 decimals as a plain Python float (-0.0 normalised to 0.0)."""
    v = round(float(x), 4)
    return 0.0 if v == 0 else v


def dump(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def write_json(path, header, list_key, records, record_writer=None):
    """Write `header` keys one per line, then `list_key` with one record per line.

    record_writer(record) -> str may produce a multi-line rendering for a record.
    """
    lines = ["{"]
    for k, v in header.items():
        lines.append(f"  {dump(k)}: {dump(v)},")
    lines.append(f"  {dump(list_key)}: [")
    for i, rec in enumerate(records):
        text = record_writer(rec) if record_writer else "    " + dump(rec)
        lines.append(text + ("," if i + 1 < len(records) else ""))
    lines.append("  ]")
    lines.append("}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    # Round-trip check: the file must be valid JSON.
    with open(path, encoding="utf-8") as f:
        json.load(f)


def last_logits(llm):
    """Logits of the last evaluated token (logits_all=False).

    With logits_all=False llama-cpp-python does not fill Llama.scores, so read the
    context's output buffer directly: llama_get_logits_ith(ctx, -1).
    """
    n_vocab = llm.n_vocab()
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    if not ptr:
        raise RuntimeError("llama_get_logits_ith returned NULL")
    arr = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32).copy()
    if not np.all(np.isfinite(arr)):
        raise RuntimeError("non-finite logits")
    if not np.any(arr != 0.0):
        raise RuntimeError("logits are all zero (logits not read from the right buffer?)")
    return arr


def common_meta(model_sha):
    return {
        "llama_cpp_version": llama_cpp.__version__,
        "model_sha256": model_sha,
    }


# --------------------------------------------------------------------------- 1. tokenizer

TOKENIZER_TEXTS = [
    # plain ASCII
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Hello",
    "hello world",
    "HELLO WORLD",
    # leading / trailing / runs of whitespace
    " Hello",
    "Hello ",
    "  leading two spaces",
    "trailing two spaces  ",
    "multiple     spaces   between    words",
    "tab\tseparated\tvalues",
    "\t\tdouble tab",
    "line one\nline two",
    "paragraph\n\nnext paragraph",
    "\n\n\n",
    " \n ",
    "\r\nwindows line end\r\n",
    "   ",
    "a\n \n b",
    # digits
    "12345",
    "3.14159",
    "1,000,000",
    "year 2024",
    "0",
    "007 and 1234567890123",
    "Call 555-0199 at 10:30pm on 2024-01-15.",
    # contractions / case
    "don't",
    "I'LL",
    "we've",
    "She's sure they're here, isn't it? You'd've known.",
    "DON'T STOP",
    # code
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n\tprint(i ** 2)",
    "int main(void) {\n    printf(\"%d\\n\", 42);\n    return 0;\n}",
    "{\"name\": \"Buddy\", \"tags\": [\"a\", \"b\"], \"n\": null, \"ok\": true}",
    "x = [1, 2, 3]; y = {k: v for k, v in d.items()}",
    "<div class=\"main\">&amp;</div>",
    # punctuation runs
    "!!!???...",
    "Wait... what?!",
    "---===***###",
    "(([[{{}}]]))",
    "@user #hashtag $100 50% a&b ~tilde `code` ^caret |pipe \\backslash",
    # accents and European languages
    "café",
    "naïve",
    "Ångström",
    "résumé, façade, jalapeño, crème brûlée",
    "Grüße aus München! Die Straße ist schön.",
    "Où est la bibliothèque ? C'est à côté de l'hôpital.",
    # other scripts
    "Привет, как дела?",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "你好，世界！",
    "日本語のテキストです。カタカナもある。",
    "안녕하세요 세계",
    # emoji
    "👍",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🏳️‍🌈",
    "I love 🍕 and 🎉!",
    # mixed
    "Mixed: English, Русский, 中文, العربية, emoji 😀 and numbers 42.",
    "naïve café 😀 over 9000",
    # edge cases
    "",
    " ",
    "a",
    "\u00a0non-breaking space",
    # special tokens (also tokenized with special=True)
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|endoftext|>",
    "Hello<|endoftext|>world",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_end|><|im_end|>",
    # long paragraph
    "The history of computing is longer than the history of computing hardware and modern computing "
    "technology and includes the history of methods intended for pen and paper or for chalk and slate, "
    "with or without the aid of tables. Digital computing is intimately tied to the representation of "
    "numbers. But long before abstractions like the number arose, there were mathematical concepts to "
    "serve the purposes of civilization. These concepts are implicit in concrete practices such as: "
    "one-to-one correspondence, which is the basis of counting; comparison to a standard, used for "
    "measurement; and the 3-4-5 right triangle, a device for assuring a right angle. In 1642, Blaise "
    "Pascal built a mechanical calculator; by 1820 Charles Xavier Thomas de Colmar's arithmometer was "
    "on sale, and today's smartphones run billions of operations per second.",
]


def special_token_texts(llm):
    """Texts of control tokens in the vocabulary (e.g. <|im_start|>)."""
    out = []
    for i in range(llm.n_vocab()):
        attr = llama_cpp.llama_vocab_get_attr(llm._model.vocab, i) if hasattr(llm._model, "vocab") else 0
        if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
            t = llm.detokenize([i], special=True).decode("utf-8", errors="replace")
            if t:
                out.append(t)
    return out


def make_tokenizer(llm, model_sha, out_dir):
    specials = special_token_texts(llm)
    if "<|im_start|>" not in specials:
        # Fallback if token attributes are not reachable through this binding.
        specials = [llm.detokenize([i], special=True).decode("utf-8", "replace") for i in range(17)]
    cases = []
    for text in TOKENIZER_TEXTS:
        raw = text.encode("utf-8")
        ids = llm.tokenize(raw, add_bos=False, special=False)
        cases.append({"text": text, "special": False, "ids": ids})
        if any(s in text for s in specials):
            ids_s = llm.tokenize(raw, add_bos=False, special=True)
            cases.append({"text": text, "special": True, "ids": ids_s})
        # Sanity: detokenizing special=False ids gives back the text (byte-level BPE is lossless).
        back = llm.detokenize(ids).decode("utf-8", errors="replace")
        if back != text:
            print(f"  note: detokenize round-trip differs for {text!r}: {back!r}", file=sys.stderr)
    header = common_meta(model_sha)
    header["settings"] = {"add_bos": False, "call": "llm.tokenize(text.encode('utf-8'), add_bos=False, special=S)",
                          "vocab_only": True}
    header["special_tokens"] = specials
    path = os.path.join(out_dir, "tokenizer.json")
    write_json(path, header, "cases", cases)
    print(f"tokenizer.json: {len(cases)} cases from {len(TOKENIZER_TEXTS)} strings")
    return cases


# --------------------------------------------------------------------------- 2. greedy

RAW_PROMPTS = [
    ("raw_france", "The capital of France is"),
    ("raw_fibonacci", "def fibonacci(n):"),
    ("raw_once", "Once upon a time"),
    ("raw_colors", "The three primary colors are"),
]
CHAT_MESSAGES = [
    ("chat_france", "What is the capital of France?"),
    ("chat_haiku", "Write a haiku about the sea."),
    ("chat_fruits", "List three fruits."),
    ("chat_reverse", "How do I reverse a list in Python?"),
]


def chatml(msg):
    return (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
            f"<|im_start|>user\n{msg}<|im_end|>\n<|im_start|>assistant\n")


SAMPLE_IDS = []


def sample_ids(n_vocab):
    ids = list(range(16))
    lo, hi, n = 16, n_vocab - 1, 48
    ids += [lo + round(i * (hi - lo) / (n - 1)) for i in range(n)]
    assert len(ids) == 64 and len(set(ids)) == 64
    return ids


def greedy_run(llm, prompt_ids, sids):
    llm.reset()
    llm.eval(prompt_ids)
    steps = []
    for _ in range(GREEDY_MAX_NEW):
        logits = last_logits(llm)
        # Deterministic ordering: by logit descending, then by id ascending.
        order = np.lexsort((np.arange(len(logits)), -logits))
        top = order[:GREEDY_TOP_K]
        tok = int(top[0])
        assert logits[tok] == logits.max()
        steps.append({
            "id": tok,
            "margin": r4(logits[top[0]] - logits[top[1]]),
            "top": [[int(i), r4(logits[i])] for i in top],
            "sample": [r4(logits[i]) for i in sids],
        })
        if tok in (IM_END, ENDOFTEXT):
            break
        llm.eval([tok])
    return steps


def make_greedy(model_path, model_sha, out_dir):
    llm = Llama(model_path=model_path, n_ctx=GREEDY_N_CTX, n_batch=GREEDY_N_BATCH,
                n_threads=N_THREADS, n_threads_batch=N_THREADS, seed=SEED,
                logits_all=False, verbose=False)
    sids = sample_ids(llm.n_vocab())
    SAMPLE_IDS[:] = sids
    prompts = []
    for kind, items in (("raw", RAW_PROMPTS), ("chat", CHAT_MESSAGES)):
        for name, msg in items:
            text = msg if kind == "raw" else chatml(msg)
            pids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            t0 = time.time()
            steps = greedy_run(llm, pids, sids)
            prompts.append({"name": name, "kind": kind, "text": text, "prompt_ids": pids, "steps": steps})
            print(f"  {name}: {len(pids)} prompt tokens, {len(steps)} steps, {time.time() - t0:.1f}s")

    header = common_meta(model_sha)
    header["n_threads"] = N_THREADS
    header["settings"] = {
        "n_ctx": GREEDY_N_CTX, "n_batch": GREEDY_N_BATCH, "seed": SEED, "logits_all": False,
        "kv_type": "default (f16)", "flash_attn": False, "add_bos": False, "special": True,
        "max_new_tokens": GREEDY_MAX_NEW, "stop_ids": [IM_END, ENDOFTEXT],
        "decode": "llm.eval(prompt_ids) once, then llm.eval([id]) one token at a time; "
                  "argmax of the last token's logits (ties -> lowest id)",
        "top_k_recorded": GREEDY_TOP_K, "logit_rounding": 4,
        "margin": "top1 - top2 logit, computed before rounding",
        "chat_template": "<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{msg}<|im_end|>\\n<|im_start|>assistant\\n",
    }
    header["sample_ids"] = sids
    del llm
    header["llama_cpp_self_consistency"] = batch_consistency(model_path, prompts)

    def render(p):
        head = {k: p[k] for k in ("name", "kind", "text", "prompt_ids")}
        inner = dump(head)[:-1] + ", \"steps\": ["
        rows = [f"      {dump(s)}" for s in p["steps"]]
        return "    " + inner + "\n" + ",\n".join(rows) + "\n    ]}"

    path = os.path.join(out_dir, "greedy.json")
    write_json(path, header, "prompts", prompts, render)
    c = header["llama_cpp_self_consistency"]
    print(f"  llama.cpp batch-vs-incremental: max |dlogit| top16={c['max_abs_diff_top16']} "
          f"sample={c['max_abs_diff_sample']}, argmax mismatches={c['argmax_mismatches']}/{c['steps']} "
          f"(largest margin among them {c['max_margin_with_argmax_mismatch']})")
    return prompts


def batch_consistency(model_path, prompts):
    """Re-evaluate prompt + greedy continuation in ONE batch (logits_all=True) and compare
    with the incremental logits recorded in `prompts`. llama.cpp's two paths are not
    bit-identical (activations are quantized to Q8_1 per 32-block, so tiny differences can
    flip a rounding step), which gives the Swift tests a realistic tolerance scale."""
    llm = Llama(model_path=model_path, n_ctx=GREEDY_N_CTX, n_batch=GREEDY_N_BATCH,
                n_threads=N_THREADS, n_threads_batch=N_THREADS, seed=SEED,
                logits_all=True, verbose=False)
    worst_top, worst_sample, n_steps = 0.0, 0.0, 0
    mismatches = []
    for p in prompts:
        ids = p["prompt_ids"] + [s["id"] for s in p["steps"]]
        llm.reset()
        llm.eval(ids)
        n_p = len(p["prompt_ids"])
        for k, s in enumerate(p["steps"]):
            row = np.asarray(llm.scores[n_p - 1 + k])
            n_steps += 1
            worst_top = max(worst_top, max(abs(float(row[i]) - v) for i, v in s["top"]))
            worst_sample = max(worst_sample, max(abs(float(row[i]) - v) for i, v in zip(SAMPLE_IDS, s["sample"])))
            if int(np.argmax(row)) != s["id"]:
                mismatches.append({"prompt": p["name"], "step": k, "margin": s["margin"]})
    del llm
    return {
        "what": "llama.cpp itself: one-batch (logits_all) vs incremental logits for the same token sequences",
        "steps": n_steps,
        "max_abs_diff_top16": round(worst_top, 4),
        "max_abs_diff_sample": round(worst_sample, 4),
        "argmax_mismatches": len(mismatches),
        "max_margin_with_argmax_mismatch": max((m["margin"] for m in mismatches), default=0.0),
        "mismatches": mismatches,
    }


# --------------------------------------------------------------------------- 3. perplexity

PPL_PROTOCOL = (
    "llama.cpp tools/perplexity/perplexity.cpp perplexity() with ppl_stride=0: the file is read whole, "
    "one trailing '\\n' is stripped (common/arg.cpp -f), tokenized with add_special=true (no BOS for "
    "this model since add_bos_token=false) and parse_special=false; chunk i = tokens[i*n_ctx:(i+1)*n_ctx] "
    "is evaluated from an empty KV cache in one batch (positions 0..n_ctx-1; BOS substitution of the first "
    "token only when add_bos is true, not here); first = n_ctx/2; for j in first..n_ctx-2 the logits at "
    "position j score token j+1: nll += -log_softmax(logits[j])[tokens[j+1]], count += n_ctx-1-first "
    "(255 per chunk for n_ctx=512); ppl_k = exp(sum nll over chunks 0..k-1 / sum count)."
)


def make_perplexity(model_path, model_sha, wikitext_path, out_dir):
    with open(wikitext_path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    text_ppl = text[:-1] if text.endswith("\n") else text

    llm = Llama(model_path=model_path, n_ctx=PPL_N_CTX, n_batch=PPL_N_BATCH, n_ubatch=PPL_N_BATCH,
                n_threads=N_THREADS, n_threads_batch=N_THREADS, seed=SEED,
                logits_all=True, verbose=False)
    assert llm.n_ctx() == PPL_N_CTX, llm.n_ctx()
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llm._model.vocab)) if hasattr(llm._model, "vocab") else False
    assert not add_bos, "protocol below assumes add_bos_token=false"

    t0 = time.time()
    tokens = llm.tokenize(text_ppl.encode("utf-8"), add_bos=True, special=False)   # add_special=true
    tokens_raw_count = len(llm.tokenize(raw, add_bos=False, special=False))
    print(f"  tokenized {len(raw)} bytes -> {len(tokens)} tokens ({time.time() - t0:.1f}s); "
          f"as-is file -> {tokens_raw_count}")

    n_ctx = PPL_N_CTX
    first = n_ctx // 2
    n_chunk = min(PPL_CHUNKS, len(tokens) // n_ctx)
    chunks = []
    nll_total = 0.0
    count_total = 0
    ppl_at = {}
    for i in range(n_chunk):
        start = i * n_ctx
        chunk = tokens[start:start + n_ctx]
        t0 = time.time()
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
        assert np.any(logits[first] != 0.0)
        nll = 0.0
        for j in range(first, n_ctx - 1):
            row = logits[j]
            m = row.max()
            lse = m + math.log(np.exp(row - m).sum())
            nll += lse - row[chunk[j + 1]]
        count = n_ctx - 1 - first
        nll_total += nll
        count_total += count
        ppl_at[i + 1] = math.exp(nll_total / count_total)
        chunks.append({"index": i, "start": start, "nll_sum": round(nll, 6), "count": count,
                       "ppl_running": round(ppl_at[i + 1], 6)})
        print(f"  chunk {i}: nll_sum={nll:.4f} count={count} running ppl={ppl_at[i + 1]:.4f} "
              f"({time.time() - t0:.1f}s)")

    header = common_meta(model_sha)
    header["n_ctx"] = n_ctx
    header["n_batch"] = PPL_N_BATCH
    header["n_threads"] = N_THREADS
    header["dataset"] = "wikitext2_valid.txt (../shared/data, not in repo)"
    header["dataset_bytes"] = len(raw)
    header["dataset_sha256"] = hashlib.sha256(raw).hexdigest()
    header["total_tokens"] = len(tokens)
    header["total_tokens_file_as_is"] = tokens_raw_count
    header["first"] = first
    header["ppl_4"] = round(ppl_at[4], 6)
    header["ppl_8"] = round(ppl_at[8], 6)
    header["protocol"] = PPL_PROTOCOL
    header["settings"] = {"n_ctx": n_ctx, "n_batch": PPL_N_BATCH, "n_ubatch": PPL_N_BATCH, "seed": SEED,
                          "logits_all": True, "kv_type": "default (f16)", "flash_attn": False,
                          "log_softmax": "float64 over float32 logits"}
    path = os.path.join(out_dir, "perplexity.json")
    write_json(path, header, "chunks", chunks)
    return ppl_at


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--wikitext", default=os.environ.get("BUDDY_WIKITEXT", DEFAULT_WIKITEXT))
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    model_sha = sha256_file(args.model)
    print(f"llama_cpp {llama_cpp.__version__}, model sha256 {model_sha}")

    print("[1/3] tokenizer")
    tok = Llama(model_path=args.model, vocab_only=True, verbose=False)
    make_tokenizer(tok, model_sha, args.out)
    del tok

    print("[2/3] greedy")
    prompts = make_greedy(args.model, model_sha, args.out)
    llm = Llama(model_path=args.model, vocab_only=True, verbose=False)
    for p in prompts:
        ids = [s["id"] for s in p["steps"]]
        text = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
        low = next((k for k, s in enumerate(p["steps"]) if s["margin"] < 0.5), None)
        print(f"  {p['name']}: first margin<0.5 at step {low}: {text!r}")
    del llm

    print("[3/3] perplexity")
    make_perplexity(args.model, model_sha, args.wikitext, args.out)

    print(f"done in {time.time() - t_start:.1f}s")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generate the Gemma 3 tokenizer fixture (Tests/Fixtures/gemma3-tokenizer.json) from llama.cpp.

Development oracle only (llama-cpp-python): the Swift tests compare Buddy's SentencePiece
tokenizer against the file this script writes, and never need llama.cpp themselves.

    scripts/fetch-model.sh gemma3
    pip install llama-cpp-python gguf
    python3 scripts/make_gemma_tokenizer_fixtures.py        # options: --model PATH, --out DIR

Each string (a fixed list, then RANDOM_COUNT seeded random mixtures) is tokenized with `llama_tokenize(add_special=false, parse_special=S)` for S =
false and, when the string contains the text of a control token, also S = true. Each case
also records llama.cpp's detokenization of those ids (`llama_detokenize(remove_special=false,
unparse_special=S)`) and, for the listed strings, `ids_with_bos` (`add_special=true`) for the
model's BOS rule.
Only the vocabulary is loaded (vocab_only=True), so this takes a few seconds.
"""

import argparse
import ctypes
import os
import sys

import llama_cpp
from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import TOKENIZER_TEXTS, common_meta, sha256_file, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(ROOT, "models", "gemma-3-270m-q4_k_m.gguf")
DEFAULT_OUT = os.path.join(ROOT, "Tests", "Fixtures")

# The SmolLM2 fixture's strings (scripts/make_fixtures.py) without its ChatML special tokens,
# then what matters for SentencePiece and Gemma's vocabulary.
TEXTS = [t for t in TOKENIZER_TEXTS if "<|" not in t] + [
    "Buddy runs small language models on the CPU and skips layers it does not need.",
    # runs of spaces, newlines and tabs are user-defined tokens in Gemma (up to 31 of each)
    " " * 40,
    "a b  c   d    e",
    "\n",
    "\n" * 35,
    "\t" * 33,
    "<div class=\"main\"><ul><li>one</li></ul></div>",
    "e\u0301 (decomposed) vs \u00e9 (composed)",
    "🧿🪬",
    # byte fallback: characters that are not pieces become <0xNN> tokens
    "\U00020000\U0002A6D6",
    "rare 𠀀 CJK",
    "\U000F0000 private plane",
    "\u0378 unassigned",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\x01\x02\x7f",
    # the escape character itself: "▁" decodes as a space
    "a▁b ▁",
    # special tokens (also tokenized with special=True)
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nHi<end_of_turn>\n",
    "<bos>text<eos>",
    "<end_of_turn><end_of_turn>",
    "<start_of_turn",
    "x<unused5>y<pad>z",
    "<start_of_image>picture<end_of_image>",
    "<mask> and [multimodal]",
    # "</s>" is a user-defined token that llama.cpp turns into a control token by its text
    "end</s>of",
]


# Random mixtures (fixed seed) of pieces where SentencePiece has choices to make: words and
# their fragments, space/newline/tab runs of every length, special-token texts and near
# misses, accents (composed and decomposed), scripts, emoji with modifiers, byte-fallback
# characters and "▁".
RANDOM_POOL = [
    "a", "Z", "q", "the", " the", "ing", "tion", " and", "Hello", " world", "un", "believ", "able",
    " ", "  ", "   ", "\n", "\n\n", "\t", "\t\t", "\r\n", " \n", "\n ",
    "0", "7", "42", "2024", "3.14", ".", ",", "!", "?", "'", "'s", "\"", "-", "_", "(", ")", "{", "}", "<", ">", "=", "/",
    "é", "e\u0301", "ß", "ø", "Å", "ñ", "日", "本", "語", "中文", "한", "α", "Ж", "ب", "न", "ि",
    "👍", "🏽", "\u200d", "👩", "🌍", "🧿", "\u00a0", "\u3000", "²", "½",
    "\U00020000", "\U000F0000", "\u0378", "\x01", "\x7f", "▁", "▁▁",
    "<start_of_turn>", "<end_of_turn>", "<start_of_turn", "end_of_turn>", "<eos>", "<bos>", "</s>", "<pad>",
    "<unused12>", "<start_of_image>", "<mask>", "[multimodal]", "<div>", "</div>",
]
RANDOM_COUNT = 300
RANDOM_SEED = 20


def random_texts():
    import random
    rng = random.Random(RANDOM_SEED)
    return ["".join(rng.choice(RANDOM_POOL) for _ in range(rng.randint(1, 30))) for _ in range(RANDOM_COUNT)]


def control_texts(llm):
    """Texts of the vocabulary's control tokens (e.g. <start_of_turn>)."""
    vocab = llm._model.vocab
    out = []
    for i in range(llm.n_vocab()):
        if llama_cpp.llama_vocab_get_attr(vocab, i) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
            out.append(llama_cpp.llama_vocab_get_text(vocab, i).decode("utf-8"))
    return out


def detokenize(llm, ids, special):
    """llama_detokenize(remove_special=False, unparse_special=special) as text."""
    vocab = llm._model.vocab
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, special)
    if n < 0:
        raise RuntimeError(f"detokenize needs {-n} bytes")
    return buf.raw[:n].decode("utf-8", errors="replace")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    if not os.path.exists(args.model):
        sys.exit(f"{args.model} is missing: run scripts/fetch-model.sh gemma3")

    model_sha = sha256_file(args.model)
    llm = Llama(model_path=args.model, vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    controls = [t for t in control_texts(llm) if t]

    cases = []
    for k, text in enumerate(TEXTS + random_texts()):
        raw = text.encode("utf-8")
        specials = [False, True] if any(c in text for c in controls) else [False]
        for special in specials:
            ids = llm.tokenize(raw, add_bos=False, special=special)
            case = {"text": text, "special": special, "ids": ids}
            if k < len(TEXTS):   # the BOS rule once per listed string, not for the random mixtures
                case["ids_with_bos"] = llm.tokenize(raw, add_bos=True, special=special)
            case["detokenized"] = detokenize(llm, ids, special)
            cases.append(case)
            if not special and case["detokenized"] != text and "▁" not in text:
                print(f"  note: round trip differs for {text!r}: {case['detokenized']!r}", file=sys.stderr)

    header = common_meta(model_sha)
    header["model"] = os.path.basename(args.model)
    header["settings"] = {
        "vocab_only": True,
        "ids": "llama_tokenize(text, add_special=false, parse_special=S)",
        "ids_with_bos": "llama_tokenize(text, add_special=true, parse_special=S)",
        "detokenized": "llama_detokenize(ids, remove_special=false, unparse_special=S)",
    }
    header["vocabulary_size"] = llm.n_vocab()
    header["bos_id"] = llama_cpp.llama_vocab_bos(vocab)
    header["eos_id"] = llama_cpp.llama_vocab_eos(vocab)
    header["add_bos"] = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    header["control_token_count"] = len(controls)
    path = os.path.join(args.out, "gemma3-tokenizer.json")
    write_json(path, header, "cases", cases)
    print(f"{path}: {len(cases)} cases from {len(TEXTS)} strings and {RANDOM_COUNT} random mixtures")


if __name__ == "__main__":
    main()

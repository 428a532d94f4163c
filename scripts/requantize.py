#!/usr/bin/env python3
"""Requantise the default model with llama.cpp's own quantizer (llama-cpp-python).

Development oracle only: it writes models/SmolLM2-135M-Instruct.<TYPE>.gguf (models/ is
git-ignored) for the types people download (Q4_K_M, Q5_K_M, Q6_K, Q5_1, F16). Buddy never
needs llama-cpp-python at run time; scripts/make_requantized_fixtures.py records llama.cpp's
perplexity and greedy ids on these files and scripts/check_requantized.sh compares buddy.

    pip install llama-cpp-python gguf
    python3 scripts/requantize.py                    # all five types
    python3 scripts/requantize.py --types Q4_K_M F16 # some of them

The source is the Q4_1 file, so allow_requantize is set: llama.cpp dequantises each tensor
to fp32 and quantises it again (576-column tensors that do not fit 256-blocks fall back to
Q5_0/Q5_1/Q8_0 the way llama.cpp decides, which is the point: these are the files users get).
"""
import argparse
import ctypes
import os
import sys
import time

import llama_cpp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import sha256_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SOURCE = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
TYPES = {
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
}


def out_path(source, type_name):
    base = os.path.basename(source)
    stem = base.rsplit(".", 2)[0] if base.count(".") >= 2 else base.rsplit(".", 1)[0]
    return os.path.join(os.path.dirname(source), f"{stem}.{type_name}.gguf")


def requantize(source, dest, type_name, threads):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, TYPES[type_name])
    params.allow_requantize = True
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(source.encode(), dest.encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({type_name}) returned {rc}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=DEFAULT_SOURCE)
    ap.add_argument("--types", nargs="+", default=list(TYPES), choices=list(TYPES))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not os.path.exists(args.source):
        sys.exit(f"missing {args.source}: run scripts/fetch-model.sh")
    print(f"llama_cpp {llama_cpp.__version__}, source {args.source}")
    for t in args.types:
        dest = out_path(args.source, t)
        t0 = time.time()
        requantize(args.source, dest, t, args.threads)
        print(f"{t}: {dest} ({os.path.getsize(dest) / 1e6:.1f} MB, {time.time() - t0:.1f}s) sha256 {sha256_file(dest)}")


if __name__ == "__main__":
    main()

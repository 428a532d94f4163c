#!/usr/bin/env python3
"""Writes Tests/Fixtures/quant_blocks.json: random blocks of each supported quantised type
and their dequantised values as computed by the `gguf` Python package (ggml's reference
layouts), for testing our scalar dequantisation independently.

    pip install gguf numpy
    python3 scripts/make_quant_fixtures.py
"""
import json, os
import numpy as np
from gguf import GGMLQuantizationType as T, quants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
rng = np.random.default_rng(1234)
cases = []
for name, qtype, block, size, scale_offsets in [
        ("Q4_0", T.Q4_0, 32, 18, [0]), ("Q4_1", T.Q4_1, 32, 20, [0, 2]), ("Q8_0", T.Q8_0, 32, 34, [0]),
        ("Q4_K", T.Q4_K, 256, 144, [0, 2]), ("Q6_K", T.Q6_K, 256, 210, [208]),
        # appended after the original five so their bytes (same rng order) stay unchanged
        ("Q5_0", T.Q5_0, 32, 22, [0]), ("Q5_1", T.Q5_1, 32, 24, [0, 2]), ("Q5_K", T.Q5_K, 256, 176, [0, 2])]:
    blocks = 3
    raw = bytearray(rng.integers(0, 256, size=blocks * size, dtype=np.uint8).tobytes())
    for b in range(blocks):  # finite, moderate half-precision scales
        for off in scale_offsets:
            h = np.float16(rng.uniform(0.001, 0.05) * (-1 if off == 2 and name in ("Q4_1", "Q5_1") else 1)).tobytes()
            raw[b * size + off: b * size + off + 2] = h
    values = quants.dequantize(np.frombuffer(bytes(raw), dtype=np.uint8), qtype).astype(np.float32).reshape(-1)
    assert values.size == blocks * block and np.all(np.isfinite(values))
    cases.append({"type": name, "count": int(values.size), "hex": bytes(raw).hex(), "values": [float(v) for v in values]})
with open(os.path.join(ROOT, "Tests/Fixtures/quant_blocks.json"), "w") as f:
    json.dump({"source": "gguf python package dequantize()", "cases": cases}, f)
print("wrote", len(cases), "cases")

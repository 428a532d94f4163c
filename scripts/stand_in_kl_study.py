#!/usr/bin/env python3
"""Stand-ins fitted on the model's output instead of each layer's update: a feasibility study
for docs/STAND-INS.md ("Fitting on the output"). The product's version is stage two of
`buddy calibrate stand-ins` (Swift: StandInTuning over DenseTransformer); this script stays as
the independent JAX re-implementation the study used.

Starts from the shipped stand-ins (routers/stand-ins.bin, variant G) and tunes the stand-ins
of the layers that SLEB's and ShortGPT's sets skip at budgets 0.9 and 0.8 by gradient descent
on KL(full model || routed model), backpropagated through every later layer, the sets taking
turns on each chunk. Training text: WikiText-2 512-token chunks 0-13 and 52-83 (every
position). Reported on chunks 204-219 (second halves, the selection range the stand-in
variants were chosen on; never trained on): perplexity and KL from full depth per set.
Writes the tuned stand-ins after each epoch as a stand-in file (same format and fingerprint),
so that `buddy eval` can score them with any router.

A float32 re-implementation of the forward pass in JAX (weights dequantised by the `gguf`
package, as scripts/stand_in_features.py does; tokens from llama-cpp-python). JAX
(`pip install jax`) is a development tool here, like llama-cpp-python, not a product dependency.
    python3 scripts/stand_in_kl_study.py LR EPOCHS OUT_PREFIX [router]   # 10-17 min per epoch on 2 cores
e.g. python3 scripts/stand_in_kl_study.py 1e-4 1 kl   (writes kl-epoch0.bin in the current directory)
"""
import os, sys, time, json, struct, numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stand_in_features as S
import jax, jax.numpy as jnp
from llama_cpp import Llama

SETS = {"sleb0.9": [4, 5, 17], "sleb0.8": [3, 4, 5, 6, 17, 26], "sg0.9": [13, 14, 17], "sg0.8": [12, 13, 14, 15, 17, 25]}
# With a 4th argument `router`, also the shipped router's own sets: at 0.9 it skips 5, 14, 15 for
# every token, at 0.8 mostly 5, 14-18 (tallied from `buddy generate --json --prompt-depth budget`
# on train-split MT-Bench prompts 0, 2, ..., 14).
if len(sys.argv) > 4 and sys.argv[4] == "router":
    SETS.update({"buddy0.9": [5, 14, 15], "buddy0.8": [5, 14, 15, 16, 17, 18]})
D = S.DIM
# --- stand-ins G
raw = open(os.path.join(S.root, 'routers', 'stand-ins.bin'), 'rb').read()
hl = struct.unpack('<I', raw[12:16])[0]
hdr = json.loads(raw[16:16 + hl]); off = 16 + hl
half = np.frombuffer(raw[off:], dtype='<f2').astype(np.float32)
si, o = {}, 0
for l, r in enumerate(hdr['ranks']):
    if r < 0: continue
    c = half[o:o + D]; o += D
    A = half[o:o + r * D].reshape(r, D); o += r * D
    B = half[o:o + D * r].reshape(D, r); o += D * r
    si[l] = (c, A, B)
print("ranks", {l: hdr['ranks'][l] for l in sorted(set(sum(SETS.values(), [])))}, flush=True)

W = {k: jnp.asarray(v) for k, v in [("emb", S.embedding)]}
onorm = jnp.asarray(np.asarray(__import__('gguf').quants.dequantize(S.tensors["output_norm.weight"].data, S.tensors["output_norm.weight"].tensor_type), dtype=np.float32))
LY = [{k: jnp.asarray(v) for k, v in ly.items()} for ly in S.layers]

def rms(x, w): return x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + S.EPS) * w
n = 512
ang = np.arange(n)[:, None] * S.ROPE_BASE ** (-2 * np.arange(S.HEAD_DIM // 2)[None, :] / S.HEAD_DIM)
COS, SIN = jnp.asarray(np.cos(ang)[:, None, :], jnp.float32), jnp.asarray(np.sin(ang)[:, None, :], jnp.float32)
MASK = jnp.asarray(np.triu(np.full((n, n), -1e30, np.float32), 1))[None]
def rope(x):
    a, b = x[..., 0::2], x[..., 1::2]
    return jnp.stack([a * COS - b * SIN, a * SIN + b * COS], -1).reshape(x.shape)
def layer(ly, h):
    x = rms(h, ly["attn_norm"])
    q = rope((x @ ly["q"].T).reshape(n, S.HEADS, S.HEAD_DIM))
    k = jnp.repeat(rope((x @ ly["k"].T).reshape(n, S.KV_HEADS, S.HEAD_DIM)), S.HEADS // S.KV_HEADS, axis=1)
    v = jnp.repeat((x @ ly["v"].T).reshape(n, S.KV_HEADS, S.HEAD_DIM), S.HEADS // S.KV_HEADS, axis=1)
    s = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(S.HEAD_DIM) + MASK
    p = jax.nn.softmax(s, -1)
    h = h + jnp.einsum("hqk,khd->qhd", p, v).reshape(n, D) @ ly["o"].T
    x = rms(h, ly["ffn_norm"])
    g = x @ ly["gate"].T
    return h + (jax.nn.silu(g) * (x @ ly["up"].T)) @ ly["down"].T
def standin(p, h):
    c, A, B = p
    xn = h * jax.lax.rsqrt((h * h).mean(-1, keepdims=True) + S.EPS)
    return h + c + (xn @ A.T) @ B.T

def make_forward(skips, start):
    def fwd(params, h):
        for l in range(start, S.LAYERS):
            h = standin(params[str(l)], h) if l in skips else layer(LY[l], h)
        return jax.nn.log_softmax(rms(h, onorm) @ W["emb"].T, -1)
    return fwd
first = min(sum(SETS.values(), []))
full_from = jax.jit(make_forward(set(), first))
fwd = {b: jax.jit(make_forward(set(s), first)) for b, s in SETS.items()}
prefix = jax.jit(lambda h: [h := layer(LY[l], h) for l in range(first)][-1] if first else h)

tok = Llama(S.MODEL, vocab_only=True, verbose=False)
ids = np.array(tok.tokenize(open(S.DATA, encoding="utf-8").read().encode(), add_bos=False))
def chunk(i): return jnp.asarray(S.embedding[ids[i * 512:(i + 1) * 512]])
def kl_loss(params, h, lp_full, b):
    lq = fwd[b](params, h)
    return (jnp.exp(lp_full) * (lp_full - lq)).sum(-1).mean()
grad = {b: jax.jit(jax.value_and_grad(lambda p, h, t, b=b: kl_loss(p, h, t, b))) for b in SETS}

params = {str(l): tuple(jnp.asarray(a) for a in si[l]) for l in sorted(set(sum(SETS.values(), [])))}
def evaluate(params, chunks):
    # The full model's reference is computed once per chunk and shared by every set.
    nll, kl = {b: 0.0 for b in SETS}, {b: 0.0 for b in SETS}
    sl = slice(256, 511)
    for i in chunks:
        h = prefix(chunk(i)); lpf = full_from(params, h)
        t = ids[i * 512 + 1:(i + 1) * 512]
        for b in SETS:
            lq = fwd[b](params, h)
            nll[b] -= float(lq[sl][np.arange(255), t[256:]].sum())
            kl[b] += float((jnp.exp(lpf[sl]) * (lpf[sl] - lq[sl])).sum())
    cnt = 255 * len(chunks)
    return {b: (round(float(np.exp(nll[b] / cnt)), 3), round(kl[b] / cnt, 4)) for b in SETS}
def export(params, path):
    ranks = hdr['ranks']; payload = []
    for l, r in enumerate(ranks):
        if r < 0: continue
        c, A, B = params[str(l)] if str(l) in params else si[l]
        for a in (c, A, B): payload.append(np.asarray(a, np.float32).astype('<f2').ravel())
    pb = np.concatenate(payload).tobytes()
    h = 0xcbf29ce484222325
    for byte in pb:
        h ^= byte; h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    head = dict(hdr); head['payload_bytes'] = len(pb); head['payload_fnv64'] = "%016x" % h
    head['notes'] = "study: stand-ins G with layers of SLEB's and ShortGPT's 0.9/0.8 sets tuned on KL (scripts/stand_in_kl_study.py; a study, not shipped)"
    hj = json.dumps(head, sort_keys=True, separators=(',', ':')).encode()
    open(path, 'wb').write(b"BUDDYSTI" + struct.pack('<II', 1, len(hj)) + hj + pb)
    print("exported", path, flush=True)
train_chunks = list(range(0, 14)) + list(range(52, 84))
sel = list(range(204, 220))
t0 = time.time()
print("shipped stand-ins", evaluate(params, sel), f"{time.time()-t0:.0f}s", flush=True)
lr = float(sys.argv[1]) if len(sys.argv) > 1 else 1e-4
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
out_prefix = sys.argv[3] if len(sys.argv) > 3 else "stand-ins-kl"
m = jax.tree.map(jnp.zeros_like, params); v = jax.tree.map(jnp.zeros_like, params); step = 0
rng = np.random.default_rng(0)
for ep in range(epochs):
    tot = 0
    for i in rng.permutation(train_chunks):
        h = prefix(chunk(i)); lpf = full_from(params, h)
        for b in SETS:
            loss, g = grad[b](params, h, lpf)
            step += 1; tot += float(loss)
            m = jax.tree.map(lambda a, x: 0.9 * a + 0.1 * x, m, g)
            v = jax.tree.map(lambda a, x: 0.999 * a + 0.001 * x * x, v, g)
            params = jax.tree.map(lambda p, a, s: p - lr * (a / (1 - 0.9 ** step)) / (jnp.sqrt(s / (1 - 0.999 ** step)) + 1e-8), params, m, v)
    export(params, f"{out_prefix}-epoch{ep}.bin")
    print(f"epoch {ep} train KL {tot / (len(train_chunks) * len(SETS)):.4f} {time.time()-t0:.0f}s", evaluate(params, sel), flush=True)

import Foundation

// Gemma 3's transformer block, over the shared building blocks of Transformer.swift.
//
//   x   = embed(token) · √dim
//   per layer l:
//     h    = rmsnorm(x) · attn_norm
//     q, k, v = Wq·h, Wk·h, Wv·h                      (4 query heads, 1 KV head of 256)
//     q, k = rmsnorm per head · q_norm / k_norm, then RoPE (NeoX halves) with layer l's base:
//            10,000 on sliding-window layers, rope.freq_base (1e6) on the global ones
//     q   *= attention scale (1/√headDim)
//     a    = softmax(q·kᵀ) v over the last `slidingWindow` positions (local layers) or all
//     x   += rmsnorm(Wo·a) · post_attention_norm
//     h    = rmsnorm(x) · ffn_norm
//     x   += rmsnorm(Wdown·(gelu(Wgate·h) ⊙ Wup·h)) · post_ffw_norm
//   logits = Wembᵀ · (rmsnorm(x) · output_norm)                      (tied head, no soft-cap)
//
// Numerics follow llama.cpp's CPU backend: K, V and Q·K in half precision, softmax weights
// rounded to half before they weigh V, and GELU through ggml's half-precision table. The
// decode step (one token) and the batch (a prompt chunk) do the same arithmetic, so they
// give bit-identical results.

/// GELU (tanh approximation) as ggml computes it on the CPU: the input rounded to half
/// precision indexes a table of half-precision results; |x| ≥ 10 short-circuits.
enum GELU {
    static let table: [Float] = (0..<65536).map { bits in
        let x = Float(Float16(bitPattern: UInt16(bits)))
        let sqrt2OverPi: Float = 0.79788456080286535587989211986876, coefA: Float = 0.044715
        let y = 0.5 * x * (1 + tanhf(sqrt2OverPi * x * (1 + coefA * x * x)))
        return Float(Float16(y))
    }

    /// gate[i] = gelu(gate[i]) · up[i] (ggml's geglu).
    static func gated(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, count n: Int) {
        table.withUnsafeBufferPointer { t in
            for i in 0..<n {
                let x = gate[i]
                if x <= -10 {
                    gate[i] = 0
                } else if x >= 10 {
                    gate[i] = x * up[i]
                } else {
                    gate[i] = t[Int(Float16(x).bitPattern)] * up[i]
                }
            }
        }
    }
}

extension Transformer {
    /// Gemma multiplies the embedding row by √dim (a no-op for llama/qwen2).
    @inline(__always)
    func scaleEmbedding(_ x: UnsafeMutablePointer<Float>) {
        let scale = config.embeddingScale
        guard scale != 1 else { return }
        for i in 0..<config.dim { x[i] *= scale }
    }

    /// Layer l's keys for position `pos`: per-head RMS norm, RoPE with the layer's base, and
    /// (fast path) half precision, as the f16 cache holds them; V rounded likewise.
    @inline(__always)
    func gemma3Keys(_ l: Int, pos: Int, k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, half: Bool) {
        let c = config, w = layers[l], hd = c.headDim
        for h in 0..<c.kvHeads { rmsNorm(k + h * hd, w.kNorm!, k + h * hd, count: hd) }
        rope(k, heads: c.kvHeads, pos: pos, layer: l)
        if half {
            Transformer.roundToHalf(k, c.kvDim)
            Transformer.roundToHalf(v, c.kvDim)
        }
    }

    /// Layer l's queries for position `pos`: per-head RMS norm, RoPE, the attention scale,
    /// and (fast path) half precision, as llama.cpp converts Q for the f16 Q·K product.
    @inline(__always)
    func gemma3Queries(_ l: Int, pos: Int, q: UnsafeMutablePointer<Float>, half: Bool) {
        let c = config, w = layers[l], hd = c.headDim
        for h in 0..<c.heads { rmsNorm(q + h * hd, w.qNorm!, q + h * hd, count: hd) }
        rope(q, heads: c.heads, pos: pos, layer: l)
        for i in 0..<c.qDim { q[i] *= c.attentionScale }
        if half { Transformer.roundToHalf(q, c.qDim) }
    }

    // MARK: - Decode: one token

    /// Gemma 3 block `l` for the token at `pos` (called by `runLayer`).
    func runGemma3Layer(_ l: Int, pos: Int, _ s: DecodeState, _ cache: KVCache) {
        let c = config, w = layers[l]

        // Attention
        rmsNorm(s.x, w.attnNorm, s.xb)
        s.emit("attn_norm", l, s.xb, c.dim)
        projectQKV(w, s)
        gemma3Queries(l, pos: pos, q: s.q, half: !s.reference)
        gemma3Keys(l, pos: pos, k: s.k, v: s.v, half: !s.reference)
        s.emit("q", l, s.q, c.qDim)
        s.emit("k", l, s.k, c.kvDim)
        s.emit("v", l, s.v, c.kvDim)
        storeKV(l, pos: pos, k: s.k, v: s.v, cache)
        attend(l, pos: pos, s, cache)
        s.emit("attn_out", l, s.attOut, c.qDim)
        project(w.wo, s.attOut, s.xb, s, quantized: false)
        rmsNorm(s.xb, w.postAttnNorm!, s.xb)
        for i in 0..<c.dim { s.x[i] += s.xb[i] }
        s.emit("ffn_inp", l, s.x, c.dim)

        // Feed-forward (GELU-gated)
        rmsNorm(s.x, w.ffnNorm, s.xb)
        s.emit("ffn_norm", l, s.xb, c.dim)
        projectGateUp(w, s)
        GELU.gated(s.hb, s.hb2, count: c.ffnDim)
        project(w.down, s.hb, s.xb, s, quantized: false)
        rmsNorm(s.xb, w.postFFNNorm!, s.xb)
        s.emit("ffn_out", l, s.xb, c.dim)
        for i in 0..<c.dim { s.x[i] += s.xb[i] }
        s.emit("l_out", l, s.x, c.dim)
    }

    // MARK: - Batch: a prompt chunk

    /// Gemma 3 block `l` over the chunk in b.x (called by `prefillLayer`, same contract:
    /// rows for which `skipping(i)` holds leave the cache entry `policy` prescribes).
    func prefillGemma3Layer(_ l: Int, n: Int, start: Int, _ b: BatchState, _ cache: KVCache,
                            skipping: ((Int) -> Bool)?, policy: KVPolicy) {
        let c = config, w = layers[l]
        let dim = c.dim, qd = c.qDim, kvd = c.kvDim

        // Attention. The per-row steps are shared across the pool (`eachRow`: each row whole
        // on one thread, so the numbers do not depend on the split).
        eachRow(n, b) { i in self.rmsNorm(b.x + i * dim, w.attnNorm, b.xb + i * dim) }
        gemm(w.wq, b.xb, n, b.q, b)
        gemm(w.wk, b.xb, n, b.k, b)
        gemm(w.wv, b.xb, n, b.v, b)
        eachRow(n, b) { i in
            let pos = start + i, q = b.q + i * qd, k = b.k + i * kvd, v = b.v + i * kvd
            self.gemma3Queries(l, pos: pos, q: q, half: true)
            self.gemma3Keys(l, pos: pos, k: k, v: v, half: true)
            // Each position has its own cache entry and flags, so rows may store concurrently.
            self.storeKV(l, pos: pos, k: k, v: v, cache, skipped: skipping?(i) == true, policy: policy)
        }
        if b.trace != nil {
            for i in 0..<n { b.emit("attn_norm", l, b.xb + i * dim, dim); b.emit("q", l, b.q + i * qd, qd) }
        }
        attendBatch(l, n: n, start: start, b, cache)
        gemm(w.wo, b.att, n, b.xb, b)
        eachRow(n, b) { i in
            let x = b.x + i * dim, o = b.xb + i * dim
            self.rmsNorm(o, w.postAttnNorm!, o)
            for j in 0..<dim { x[j] += o[j] }
        }

        // Feed-forward (GELU-gated)
        eachRow(n, b) { i in self.rmsNorm(b.x + i * dim, w.ffnNorm, b.xb + i * dim) }
        gemm(w.gate, b.xb, n, b.g, b)
        gemm(w.up, b.xb, n, b.u, b)
        eachRow(n, b) { i in GELU.gated(b.g + i * c.ffnDim, b.u + i * c.ffnDim, count: c.ffnDim) }
        gemm(w.down, b.g, n, b.xb, b)
        eachRow(n, b) { i in
            let x = b.x + i * dim, o = b.xb + i * dim
            self.rmsNorm(o, w.postFFNNorm!, o)
            for j in 0..<dim { x[j] += o[j] }
        }
        if b.trace != nil { for i in 0..<n { b.emit("l_out", l, b.x + i * dim, dim) } }
    }

}

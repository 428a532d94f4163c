import BuddyCore
import CBLAS
import Foundation

// A float32 copy of a model with a forward pass that keeps what backpropagation needs and the
// backward pass that carries a gradient from the output distribution back down the residual
// stream. It exists to train stand-ins on what the model outputs (StandInTuning): the engine's
// quantised kernels stay the product's forward pass; this one is for training only.
//
// One sequence of n tokens at a time, rows are positions; weights row-major [out × in]:
//
//   per layer l (run)      xa = rmsnorm(x)·attn_norm
//                          q, k, v = xa·Wqᵀ (+bq), xa·Wkᵀ (+bk), xa·Wvᵀ (+bv)
//                          (gemma3: q, k rmsnorm per head · q_norm / k_norm)
//                          q, k = RoPE(q), RoPE(k)
//                          att = softmax(s·q·kᵀ + causal/window mask)·v      per head, GQA
//                          o = att·Woᵀ            (gemma3: rmsnorm(o)·post_attention_norm)
//                          x1 = x + o
//                          xf = rmsnorm(x1)·ffn_norm
//                          a = act(xf·Wgateᵀ) ⊙ (xf·Wupᵀ)       act: SiLU, or GELU (gemma3)
//                          d = a·Wdownᵀ            (gemma3: rmsnorm(d)·post_ffw_norm)
//                          x = x1 + d
//   per layer l (skipped)  x = x + c + (rmsnorm(x)·Aᵀ)·Bᵀ                   (its stand-in)
//   head                   logits = (rmsnorm(x)·output_norm)·Eᵀ
//
// Gemma's GELU is the exact tanh form here (the engine reads ggml's half-precision table),
// and nothing is rounded to half: the gradients need a smooth function, not llama.cpp's bits.

/// Stand-in parameters in float32 as training changes them: c [dim], A [rank × dim], B [dim × rank].
public struct TrainableStandIn: Sendable {
    public let rank: Int
    public var bias: [Float]
    public var down: [Float]
    public var up: [Float]

    public init(_ layer: StandIns.Layer) {
        rank = layer.rank
        bias = layer.bias; down = layer.down; up = layer.up
    }

    public init(rank: Int, bias: [Float], down: [Float], up: [Float]) {
        precondition(down.count == rank * bias.count && up.count == bias.count * rank)
        self.rank = rank; self.bias = bias; self.down = down; self.up = up
    }

    /// Zeros of `p`'s shapes: a gradient accumulator for it.
    public init(zerosLike p: TrainableStandIn) {
        rank = p.rank
        bias = [Float](repeating: 0, count: p.bias.count)
        down = [Float](repeating: 0, count: p.down.count)
        up = [Float](repeating: 0, count: p.up.count)
    }

    /// Sets every parameter to 0 (an accumulator between steps).
    public mutating func zero() {
        for i in bias.indices { bias[i] = 0 }
        for i in down.indices { down[i] = 0 }
        for i in up.indices { up[i] = 0 }
    }

    public var layer: StandIns.Layer { StandIns.Layer(rank: rank, bias: bias, down: down, up: up) }

    /// The parameters as one flat vector (bias, down, up) and back, for the optimiser.
    public var flat: [Float] { bias + down + up }
    public mutating func setFlat(_ v: ArraySlice<Float>) {
        let d = bias.count, r = rank
        var i = v.startIndex
        for j in 0..<d { bias[j] = v[i]; i += 1 }
        for j in 0..<(r * d) { down[j] = v[i]; i += 1 }
        for j in 0..<(d * r) { up[j] = v[i]; i += 1 }
    }
    public var parameterCount: Int { bias.count * (1 + 2 * rank) }
}

public final class DenseTransformer: @unchecked Sendable {
    public struct Layer: Sendable {
        public var attnNorm: [Float], ffnNorm: [Float]
        public var wq: [Float], wk: [Float], wv: [Float], wo: [Float]
        public var gate: [Float], up: [Float], down: [Float]
        public var bq: [Float]?, bk: [Float]?, bv: [Float]?
        public var qNorm: [Float]?, kNorm: [Float]?, postAttnNorm: [Float]?, postFFNNorm: [Float]?

        public init(attnNorm: [Float], ffnNorm: [Float], wq: [Float], wk: [Float], wv: [Float], wo: [Float],
                    gate: [Float], up: [Float], down: [Float], bq: [Float]? = nil, bk: [Float]? = nil, bv: [Float]? = nil,
                    qNorm: [Float]? = nil, kNorm: [Float]? = nil, postAttnNorm: [Float]? = nil, postFFNNorm: [Float]? = nil) {
            self.attnNorm = attnNorm; self.ffnNorm = ffnNorm
            self.wq = wq; self.wk = wk; self.wv = wv; self.wo = wo
            self.gate = gate; self.up = up; self.down = down
            self.bq = bq; self.bk = bk; self.bv = bv
            self.qNorm = qNorm; self.kNorm = kNorm; self.postAttnNorm = postAttnNorm; self.postFFNNorm = postFFNNorm
        }
    }

    public let config: ModelConfig
    public let layers: [Layer]
    public let outputNorm: [Float]      // [dim]
    public let output: [Float]          // [vocab × dim]
    /// Token embedding rows (scaled by config.embeddingScale when read).
    let embedding: (Int32, UnsafeMutablePointer<Float>) -> Void
    /// Per layer: (cos, sin) tables [maxTokens × ropeDim/2], built on first use for a length.
    private var ropeTables: [Int: (cos: [Float], sin: [Float])] = [:]

    public init(config: ModelConfig, layers: [Layer], outputNorm: [Float], output: [Float],
                embedding: @escaping (Int32, UnsafeMutablePointer<Float>) -> Void) {
        precondition(layers.count == config.layers && output.count == config.vocabSize * config.dim)
        self.config = config; self.layers = layers; self.outputNorm = outputNorm; self.output = output
        self.embedding = embedding
    }

    /// The model's weights dequantised to float32 (SmolLM2-135M: 0.5 GB).
    public convenience init(_ t: Transformer) {
        func dense(_ m: QuantMatrix) -> [Float] {
            [Float](unsafeUninitializedCapacity: m.rows * m.cols) { p, count in
                m.dequantizeRows(0, m.rows, into: p.baseAddress!)
                count = m.rows * m.cols
            }
        }
        let layers = t.layers.map { w in
            Layer(attnNorm: w.attnNorm, ffnNorm: w.ffnNorm, wq: dense(w.wq), wk: dense(w.wk), wv: dense(w.wv), wo: dense(w.wo),
                  gate: dense(w.gate), up: dense(w.up), down: dense(w.down), bq: w.bq, bk: w.bk, bv: w.bv,
                  qNorm: w.qNorm, kNorm: w.kNorm, postAttnNorm: w.postAttnNorm, postFFNNorm: w.postFFNNorm)
        }
        let embeddings = t.tokenEmbedding
        self.init(config: t.config, layers: layers, outputNorm: t.outputNorm, output: dense(t.output)) { token, row in
            embeddings.dequantizeRows(Int(token), 1, into: row)
        }
    }

    // MARK: - Small pieces

    /// y [n × out] (+)= x [n × in] · Wᵀ, W [out × in].
    @inline(__always)
    static func linear(_ x: UnsafePointer<Float>, _ n: Int, _ w: [Float], out: Int, in k: Int, _ y: UnsafeMutablePointer<Float>, accumulate: Bool = false) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(out), Int32(k), 1, x, Int32(k), w, Int32(k), accumulate ? 1 : 0, y, Int32(out))
    }

    /// dx [n × in] (+)= dy [n × out] · W: the input gradient of `linear`.
    @inline(__always)
    static func linearBackward(_ dy: UnsafePointer<Float>, _ n: Int, _ w: [Float], out: Int, in k: Int, _ dx: UnsafeMutablePointer<Float>, accumulate: Bool) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(k), Int32(out), 1, dy, Int32(out), w, Int32(k), accumulate ? 1 : 0, dx, Int32(k))
    }

    /// Rows of `width` values from x (row stride `stride`): out = x·r·w with r = 1/√(mean x² + eps)
    /// saved per row in `inv` (w nil: no weight).
    static func rmsNormRows(_ x: UnsafePointer<Float>, rows n: Int, width: Int, stride: Int, _ w: [Float]?, eps: Float,
                            _ out: UnsafeMutablePointer<Float>, inv: UnsafeMutablePointer<Float>) {
        for i in 0..<n {
            let xi = x + i * stride, oi = out + i * stride
            var ss: Float = 0
            for j in 0..<width { ss += xi[j] * xi[j] }
            let r = 1 / (ss / Float(width) + eps).squareRoot()
            inv[i] = r
            if let w { for j in 0..<width { oi[j] = xi[j] * r * w[j] } } else { for j in 0..<width { oi[j] = xi[j] * r } }
        }
    }

    /// dx (+)= the gradient of rmsNormRows w.r.t. x, given dy:
    /// dx = r·g − x·r³·(x·g)/width with g = dy ⊙ w.
    static func rmsNormRowsBackward(_ x: UnsafePointer<Float>, rows n: Int, width: Int, stride: Int, _ w: [Float]?,
                                    inv: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, accumulate: Bool) {
        for i in 0..<n {
            let xi = x + i * stride, di = dy + i * stride, oi = dx + i * stride
            let r = inv[i]
            var dot: Float = 0
            if let w { for j in 0..<width { dot += xi[j] * di[j] * w[j] } } else { for j in 0..<width { dot += xi[j] * di[j] } }
            let k = r * r * r * dot / Float(width)
            for j in 0..<width {
                let g = w.map { di[j] * $0[j] } ?? di[j]
                let v = r * g - xi[j] * k
                oi[j] = accumulate ? oi[j] + v : v
            }
        }
    }

    /// Layer l's RoPE tables for positions 0..<n, with the engine's angle arithmetic.
    func rope(layer l: Int, n: Int) -> (cos: [Float], sin: [Float]) {
        let c = config, half = c.ropeDim / 2
        if let t = ropeTables[l], t.cos.count >= n * half { return t }
        let local = c.isSlidingWindowLayer(l)
        let thetaScale = powf(local ? c.localRopeBase : c.ropeBase, -2 / Float(c.ropeDim))
        let freqScale: Float = local ? 1 : c.ropeFreqScale
        var cs = [Float](repeating: 0, count: n * half), sn = cs
        for pos in 0..<n {
            var theta = Float(pos)
            for i in 0..<half {
                let t = freqScale == 1 ? theta : freqScale * theta
                cs[pos * half + i] = cosf(t); sn[pos * half + i] = sinf(t)
                theta *= thetaScale
            }
        }
        ropeTables[l] = (cs, sn)
        return (cs, sn)
    }

    /// Rotates `heads` heads of every row in place; `inverse` rotates back (the gradient of a rotation).
    func applyRope(_ v: UnsafeMutablePointer<Float>, rows n: Int, heads: Int, layer l: Int, inverse: Bool) {
        let c = config, hd = c.headDim, half = c.ropeDim / 2, width = heads * hd
        let (cs, sn) = rope(layer: l, n: n)
        for pos in 0..<n {
            for h in 0..<heads {
                let base = v + pos * width + h * hd
                for i in 0..<half {
                    let co = cs[pos * half + i], si = inverse ? -sn[pos * half + i] : sn[pos * half + i]
                    let (a, b) = c.ropeNeoX ? (i, i + half) : (2 * i, 2 * i + 1)
                    let x0 = base[a], x1 = base[b]
                    base[a] = x0 * co - x1 * si
                    base[b] = x0 * si + x1 * co
                }
            }
        }
    }

    /// The gated activation and its derivative.
    @inline(__always)
    func activation(_ x: Float) -> (value: Float, slope: Float) {
        if config.isGemma3 {
            let k: Float = 0.79788456080286535587989211986876, a: Float = 0.044715
            let t = tanhf(k * x * (1 + a * x * x))
            return (0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * a * x * x))
        }
        let s = 1 / (1 + expf(-x))
        return (x * s, s * (1 + x * (1 - s)))
    }

    /// Softmax scale of q·k.
    var attentionScale: Float { config.isGemma3 ? config.attentionScale : 1 / Float(config.headDim).squareRoot() }

    /// Whether the query at row i sees the key at row j on layer l.
    @inline(__always)
    func visible(_ i: Int, _ j: Int, layer l: Int) -> Bool {
        j <= i && (!config.isSlidingWindowLayer(l) || j > i - config.slidingWindow)
    }

    /// The residual stream entering layer 0 for `tokens` [n × dim].
    public func embed(_ tokens: [Int32], into x: UnsafeMutablePointer<Float>) {
        let d = config.dim, scale = config.embeddingScale
        for (i, t) in tokens.enumerated() {
            embedding(t, x + i * d)
            if scale != 1 { for j in 0..<d { x[i * d + j] *= scale } }
        }
    }
}

/// A float buffer that frees itself.
final class FloatBuffer: @unchecked Sendable {
    let p: UnsafeMutablePointer<Float>
    let count: Int
    init(_ count: Int) {
        self.count = max(count, 1)
        p = .allocate(capacity: self.count)
        p.initialize(repeating: 0, count: self.count)
    }
    deinit { p.deallocate() }
}

/// Everything one forward pass over up to `maxTokens` rows keeps for the backward pass, and the
/// backward pass's scratch: allocated once, reused for every sequence.
public final class DenseTape: @unchecked Sendable {
    final class LayerRecord {
        let x, xa, invA, qRaw, kRaw, invQ, invK, q, k, v, p, att, oRaw, invO, x1, xf, invF, g, u, a, dRaw, invD: FloatBuffer
        let xhat, invS, proj: FloatBuffer     // a skipped layer's stand-in
        init(_ c: ModelConfig, _ n: Int, rank: Int) {
            let d = c.dim, qd = c.qDim, kvd = c.kvDim, f = c.ffnDim
            x = FloatBuffer(n * d); xa = FloatBuffer(n * d); invA = FloatBuffer(n)
            qRaw = FloatBuffer(n * qd); kRaw = FloatBuffer(n * kvd); invQ = FloatBuffer(n * c.heads); invK = FloatBuffer(n * c.kvHeads)
            q = FloatBuffer(n * qd); k = FloatBuffer(n * kvd); v = FloatBuffer(n * kvd)
            p = FloatBuffer(c.heads * n * n); att = FloatBuffer(n * qd)
            oRaw = FloatBuffer(n * d); invO = FloatBuffer(n); x1 = FloatBuffer(n * d); xf = FloatBuffer(n * d); invF = FloatBuffer(n)
            g = FloatBuffer(n * f); u = FloatBuffer(n * f); a = FloatBuffer(n * f); dRaw = FloatBuffer(n * d); invD = FloatBuffer(n)
            xhat = FloatBuffer(n * d); invS = FloatBuffer(n); proj = FloatBuffer(n * rank)
        }
    }

    public let maxTokens: Int
    let layers: [LayerRecord]
    /// The stream after the last layer, its head normalisation, and the output.
    let final, finalNormed, invFinal: FloatBuffer
    /// [maxTokens × vocab]: logits, then log-probabilities; the backward pass reads d loss / d logits here.
    public let logits: UnsafeMutablePointer<Float>
    private let logitsBuffer: FloatBuffer
    // Backward scratch.
    let dx, dxa, dD, dO, dq, dk, dv, dqRaw, dkRaw, dAtt, dP, dA, dG, dU, dProj, dHat: FloatBuffer

    public init(config c: ModelConfig, maxTokens n: Int, maxRank: Int) {
        maxTokens = n
        layers = (0..<c.layers).map { _ in LayerRecord(c, n, rank: maxRank) }
        let d = c.dim, f = c.ffnDim
        final = FloatBuffer(n * d); finalNormed = FloatBuffer(n * d); invFinal = FloatBuffer(n)
        logitsBuffer = FloatBuffer(n * c.vocabSize); logits = logitsBuffer.p
        dx = FloatBuffer(n * d); dxa = FloatBuffer(n * d); dD = FloatBuffer(n * d); dO = FloatBuffer(n * d)
        dq = FloatBuffer(n * c.qDim); dk = FloatBuffer(n * c.kvDim); dv = FloatBuffer(n * c.kvDim)
        dqRaw = FloatBuffer(n * c.qDim); dkRaw = FloatBuffer(n * c.kvDim); dAtt = FloatBuffer(n * c.qDim)
        dP = FloatBuffer(n * n); dA = FloatBuffer(n * f); dG = FloatBuffer(n * f); dU = FloatBuffer(n * f)
        dProj = FloatBuffer(n * maxRank); dHat = FloatBuffer(n * d)
    }

    /// The residual stream entering layer l [n × dim] (write the starting state here).
    public func stream(_ l: Int) -> UnsafeMutablePointer<Float> { layers[l].x.p }
}

extension DenseTransformer {
    /// Runs layers from..<layers and the head over tape.stream(from) (n rows) and leaves
    /// log-probabilities [n × vocab] in tape.logits. Layer l runs where mask[l]; otherwise its
    /// stand-in is added (standIns[l]; nil: the layer is simply skipped). standInEps: the
    /// stand-ins' normalisation epsilon. Rows below `routedFrom` run every layer (a prompt at
    /// full depth, as the chat runs it, before a routed reply).
    public func forward(_ t: DenseTape, n: Int, from: Int, mask: [Bool], standIns: [TrainableStandIn?], standInEps: Float, routedFrom: Int = 0) {
        runLayers(t, n: n, from..<config.layers, mask: mask, standIns: standIns, standInEps: standInEps, routedFrom: routedFrom)
        head(t, n: n)
    }

    /// Layers `range` only: the stream entering range.upperBound is left in tape.stream(upperBound)
    /// (or, past the last layer, where `head` reads it).
    public func runLayers(_ t: DenseTape, n: Int, _ range: Range<Int>, mask: [Bool], standIns: [TrainableStandIn?], standInEps: Float,
                          routedFrom: Int = 0) {
        let c = config, L = c.layers, d = c.dim
        precondition(n <= t.maxTokens && mask.count == L && standIns.count == L && routedFrom >= 0)
        let routed = min(routedFrom, n)..<n
        for l in range {
            let r = t.layers[l]
            let next = l + 1 < L ? t.layers[l + 1].x.p : t.final.p
            if mask[l] || routed.isEmpty {
                runLayer(l, r, n: n, out: next)
            } else {
                // Causal attention: the leading full-depth rows never read the routed ones.
                if routed.lowerBound > 0 { runLayer(l, r, n: routed.lowerBound, out: next) }
                (next + routed.lowerBound * d).update(from: r.x.p + routed.lowerBound * d, count: routed.count * d)
                if let s = standIns[l] { applyStandIn(s, r, rows: routed, eps: standInEps, into: next) }
            }
        }
    }

    /// log-softmax((rmsnorm(x)·output_norm)·Eᵀ) of the stream after the last layer, into tape.logits.
    public func head(_ t: DenseTape, n: Int) {
        let c = config, d = c.dim
        DenseTransformer.rmsNormRows(t.final.p, rows: n, width: d, stride: d, outputNorm, eps: c.rmsNormEps, t.finalNormed.p, inv: t.invFinal.p)
        DenseTransformer.linear(t.finalNormed.p, n, output, out: c.vocabSize, in: d, t.logits)
        let v = c.vocabSize
        for i in 0..<n {
            let row = t.logits + i * v
            var m = -Float.infinity
            for j in 0..<v where row[j] > m { m = row[j] }
            var s: Float = 0
            for j in 0..<v { s += expf(row[j] - m) }
            let lse = m + logf(s)
            for j in 0..<v { row[j] -= lse }
        }
    }

    /// out = x + c + (rmsnorm(x)·Aᵀ)·Bᵀ on `rows`, keeping x̂ and A·x̂.
    func applyStandIn(_ s: TrainableStandIn, _ r: DenseTape.LayerRecord, rows: Range<Int>, eps: Float, into out: UnsafeMutablePointer<Float>) {
        let d = config.dim, k = s.rank, n = rows.count, lo = rows.lowerBound
        let x = r.x.p + lo * d, xhat = r.xhat.p + lo * d, proj = r.proj.p + lo * k, y = out + lo * d
        DenseTransformer.rmsNormRows(x, rows: n, width: d, stride: d, nil, eps: eps, xhat, inv: r.invS.p + lo)
        for i in 0..<n { for j in 0..<d { y[i * d + j] += s.bias[j] } }
        guard k > 0 else { return }
        DenseTransformer.linear(xhat, n, s.down, out: k, in: d, proj)
        DenseTransformer.linear(proj, n, s.up, out: d, in: k, y, accumulate: true)
    }

    /// One transformer block over r.x, result in `out`.
    func runLayer(_ l: Int, _ r: DenseTape.LayerRecord, n: Int, out: UnsafeMutablePointer<Float>) {
        let c = config, w = layers[l], d = c.dim, qd = c.qDim, kvd = c.kvDim, hd = c.headDim, f = c.ffnDim, eps = c.rmsNormEps
        typealias T = DenseTransformer
        T.rmsNormRows(r.x.p, rows: n, width: d, stride: d, w.attnNorm, eps: eps, r.xa.p, inv: r.invA.p)
        T.linear(r.xa.p, n, w.wq, out: qd, in: d, r.qRaw.p)
        T.linear(r.xa.p, n, w.wk, out: kvd, in: d, r.kRaw.p)
        T.linear(r.xa.p, n, w.wv, out: kvd, in: d, r.v.p)
        for i in 0..<n {
            if let b = w.bq { for j in 0..<qd { r.qRaw.p[i * qd + j] += b[j] } }
            if let b = w.bk { for j in 0..<kvd { r.kRaw.p[i * kvd + j] += b[j] } }
            if let b = w.bv { for j in 0..<kvd { r.v.p[i * kvd + j] += b[j] } }
        }
        if let qn = w.qNorm, let kn = w.kNorm {
            T.rmsNormRows(r.qRaw.p, rows: n * c.heads, width: hd, stride: hd, qn, eps: eps, r.q.p, inv: r.invQ.p)
            T.rmsNormRows(r.kRaw.p, rows: n * c.kvHeads, width: hd, stride: hd, kn, eps: eps, r.k.p, inv: r.invK.p)
        } else {
            r.q.p.update(from: r.qRaw.p, count: n * qd)
            r.k.p.update(from: r.kRaw.p, count: n * kvd)
        }
        applyRope(r.q.p, rows: n, heads: c.heads, layer: l, inverse: false)
        applyRope(r.k.p, rows: n, heads: c.kvHeads, layer: l, inverse: false)
        // Attention per query head h over its KV head g.
        let scale = attentionScale
        for h in 0..<c.heads {
            let g = h / c.groupSize, p = r.p.p + h * n * n
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(n), Int32(hd), scale, r.q.p + h * hd, Int32(qd),
                        r.k.p + g * hd, Int32(kvd), 0, p, Int32(n))
            for i in 0..<n {
                let row = p + i * n
                var m = -Float.infinity
                for j in 0...i where visible(i, j, layer: l) && row[j] > m { m = row[j] }
                var s: Float = 0
                for j in 0..<n {
                    if j <= i && visible(i, j, layer: l) { row[j] = expf(row[j] - m); s += row[j] } else { row[j] = 0 }
                }
                let inv = 1 / s
                for j in 0...i { row[j] *= inv }
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(hd), Int32(n), 1, p, Int32(n),
                        r.v.p + g * hd, Int32(kvd), 0, r.att.p + h * hd, Int32(qd))
        }
        T.linear(r.att.p, n, w.wo, out: d, in: qd, r.oRaw.p)
        r.x1.p.update(from: r.x.p, count: n * d)
        if let pn = w.postAttnNorm {
            T.rmsNormRows(r.oRaw.p, rows: n, width: d, stride: d, pn, eps: eps, out, inv: r.invO.p)   // out as scratch
            for i in 0..<(n * d) { r.x1.p[i] += out[i] }
        } else {
            for i in 0..<(n * d) { r.x1.p[i] += r.oRaw.p[i] }
        }
        // Feed-forward.
        T.rmsNormRows(r.x1.p, rows: n, width: d, stride: d, w.ffnNorm, eps: eps, r.xf.p, inv: r.invF.p)
        T.linear(r.xf.p, n, w.gate, out: f, in: d, r.g.p)
        T.linear(r.xf.p, n, w.up, out: f, in: d, r.u.p)
        for i in 0..<(n * f) { r.a.p[i] = activation(r.g.p[i]).value * r.u.p[i] }
        T.linear(r.a.p, n, w.down, out: d, in: f, r.dRaw.p)
        if let pn = w.postFFNNorm {
            T.rmsNormRows(r.dRaw.p, rows: n, width: d, stride: d, pn, eps: eps, out, inv: r.invD.p)
            for i in 0..<(n * d) { out[i] += r.x1.p[i] }
        } else {
            for i in 0..<(n * d) { out[i] = r.x1.p[i] + r.dRaw.p[i] }
        }
    }

    /// KL(reference ‖ model) averaged over `rows`, from the log-probabilities in tape.logits;
    /// replaces tape.logits by d loss / d logits (zero outside `rows`). reference: [n × vocab] log-probabilities.
    public func klLoss(_ t: DenseTape, n: Int, reference: UnsafePointer<Float>, rows: Range<Int>) -> Double {
        let v = config.vocabSize, count = Float(max(rows.count, 1))
        var total = 0.0
        for i in 0..<n {
            let q = t.logits + i * v, p = reference + i * v
            guard rows.contains(i) else { q.update(repeating: 0, count: v); continue }
            var kl: Float = 0
            for j in 0..<v {
                let pj = expf(p[j])
                kl += pj * (p[j] - q[j])
                q[j] = (expf(q[j]) - pj) / count
            }
            total += Double(kl)
        }
        return total / Double(count)
    }

    /// Backpropagates d loss / d logits (in tape.logits, from `klLoss`) through the head and the
    /// layers of the last `forward`, down to the lowest layer whose stand-in is trained, and
    /// adds d loss / d parameters of every applied stand-in into `gradients` (same shapes).
    /// With `routedFrom` > 0 (as in that forward), rows below it ran every layer: no stand-in
    /// reaches them (they precede the routed rows), so their gradients past a skipped layer are
    /// left unfinished; only the routed rows' gradients, which they never feed, are used.
    public func backward(_ t: DenseTape, n: Int, from: Int, mask: [Bool], standIns: [TrainableStandIn?], gradients: inout [TrainableStandIn?],
                         routedFrom: Int = 0) {
        let c = config, L = c.layers, d = c.dim
        typealias T = DenseTransformer
        let routed = min(routedFrom, n)..<n
        guard !routed.isEmpty, let lowest = (from..<L).first(where: { !mask[$0] && standIns[$0] != nil }) else { return }
        T.linearBackward(t.logits, n, output, out: c.vocabSize, in: d, t.dHat.p, accumulate: false)
        T.rmsNormRowsBackward(t.final.p, rows: n, width: d, stride: d, outputNorm, inv: t.invFinal.p, t.dHat.p, t.dx.p, accumulate: false)
        for l in stride(from: L - 1, through: lowest, by: -1) {
            let r = t.layers[l]
            if mask[l] {
                layerBackward(l, r, t, n: n)
            } else if let s = standIns[l] {
                standInBackward(s, r, t, rows: routed, gradient: &gradients[l]!)
            }
        }
    }

    /// t.dx holds d loss / d (stand-in output); adds the parameter gradients and turns t.dx into
    /// d loss / d (its input).
    func standInBackward(_ s: TrainableStandIn, _ r: DenseTape.LayerRecord, _ t: DenseTape, rows: Range<Int>, gradient g: inout TrainableStandIn) {
        let d = config.dim, k = s.rank, n = rows.count, lo = rows.lowerBound
        let dy = t.dx.p + lo * d, x = r.x.p + lo * d, xhat = r.xhat.p + lo * d, proj = r.proj.p + lo * k
        for i in 0..<n { for j in 0..<d { g.bias[j] += dy[i * d + j] } }
        guard k > 0 else { return }
        // dB += dyᵀ·proj [d × k]; dproj = dy·B [n × k]; dA += dprojᵀ·x̂ [k × d]; dx̂ = dproj·A.
        g.up.withUnsafeMutableBufferPointer { up in
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(d), Int32(k), Int32(n), 1, dy, Int32(d), proj, Int32(k), 1, up.baseAddress!, Int32(k))
        }
        DenseTransformer.linearBackward(dy, n, s.up, out: d, in: k, t.dProj.p, accumulate: false)
        g.down.withUnsafeMutableBufferPointer { down in
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(k), Int32(d), Int32(n), 1, t.dProj.p, Int32(k), xhat, Int32(d), 1, down.baseAddress!, Int32(d))
        }
        DenseTransformer.linearBackward(t.dProj.p, n, s.down, out: k, in: d, t.dHat.p, accumulate: false)
        DenseTransformer.rmsNormRowsBackward(x, rows: n, width: d, stride: d, nil, inv: r.invS.p + lo, t.dHat.p, dy, accumulate: true)
    }

    /// t.dx holds d loss / d (block output); turns it into d loss / d (block input).
    func layerBackward(_ l: Int, _ r: DenseTape.LayerRecord, _ t: DenseTape, n: Int) {
        let c = config, w = layers[l], d = c.dim, qd = c.qDim, kvd = c.kvDim, hd = c.headDim, f = c.ffnDim
        typealias T = DenseTransformer
        let dx = t.dx.p
        // Feed-forward: out = x1 + post(a·Wdownᵀ).
        var dDown = UnsafePointer(dx)
        if let pn = w.postFFNNorm {
            T.rmsNormRowsBackward(r.dRaw.p, rows: n, width: d, stride: d, pn, inv: r.invD.p, dx, t.dD.p, accumulate: false)
            dDown = UnsafePointer(t.dD.p)
        }
        T.linearBackward(dDown, n, w.down, out: d, in: f, t.dA.p, accumulate: false)
        for i in 0..<(n * f) {
            let (value, slope) = activation(r.g.p[i])
            t.dU.p[i] = t.dA.p[i] * value
            t.dG.p[i] = t.dA.p[i] * r.u.p[i] * slope
        }
        T.linearBackward(t.dG.p, n, w.gate, out: f, in: d, t.dxa.p, accumulate: false)
        T.linearBackward(t.dU.p, n, w.up, out: f, in: d, t.dxa.p, accumulate: true)
        T.rmsNormRowsBackward(r.x1.p, rows: n, width: d, stride: d, w.ffnNorm, inv: r.invF.p, t.dxa.p, dx, accumulate: true)
        // Attention: x1 = x + post(att·Woᵀ).
        var dOut = UnsafePointer(dx)
        if let pn = w.postAttnNorm {
            T.rmsNormRowsBackward(r.oRaw.p, rows: n, width: d, stride: d, pn, inv: r.invO.p, dx, t.dO.p, accumulate: false)
            dOut = UnsafePointer(t.dO.p)
        }
        T.linearBackward(dOut, n, w.wo, out: d, in: qd, t.dAtt.p, accumulate: false)
        t.dk.p.update(repeating: 0, count: n * kvd)
        t.dv.p.update(repeating: 0, count: n * kvd)
        let scale = attentionScale, dP = t.dP.p
        for h in 0..<c.heads {
            let g = h / c.groupSize, p = r.p.p + h * n * n
            // dP = dAtt_h·V_gᵀ; dV_g += Pᵀ·dAtt_h
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(n), Int32(hd), 1, t.dAtt.p + h * hd, Int32(qd),
                        r.v.p + g * hd, Int32(kvd), 0, dP, Int32(n))
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(n), Int32(hd), Int32(n), 1, p, Int32(n),
                        t.dAtt.p + h * hd, Int32(qd), 1, t.dv.p + g * hd, Int32(kvd))
            // dS = P ⊙ (dP − Σ P·dP) · scale, through the softmax.
            for i in 0..<n {
                let pr = p + i * n, dr = dP + i * n
                var dot: Float = 0
                for j in 0...i { dot += pr[j] * dr[j] }
                for j in 0..<n { dr[j] = j <= i ? pr[j] * (dr[j] - dot) * scale : 0 }
            }
            // dq_h = dS·k_g; dk_g += dSᵀ·q_h
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(hd), Int32(n), 1, dP, Int32(n),
                        r.k.p + g * hd, Int32(kvd), 0, t.dq.p + h * hd, Int32(qd))
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(n), Int32(hd), Int32(n), 1, dP, Int32(n),
                        r.q.p + h * hd, Int32(qd), 1, t.dk.p + g * hd, Int32(kvd))
        }
        applyRope(t.dq.p, rows: n, heads: c.heads, layer: l, inverse: true)
        applyRope(t.dk.p, rows: n, heads: c.kvHeads, layer: l, inverse: true)
        var dqRaw = UnsafePointer(t.dq.p), dkRaw = UnsafePointer(t.dk.p)
        if let qn = w.qNorm, let kn = w.kNorm {
            T.rmsNormRowsBackward(r.qRaw.p, rows: n * c.heads, width: hd, stride: hd, qn, inv: r.invQ.p, t.dq.p, t.dqRaw.p, accumulate: false)
            T.rmsNormRowsBackward(r.kRaw.p, rows: n * c.kvHeads, width: hd, stride: hd, kn, inv: r.invK.p, t.dk.p, t.dkRaw.p, accumulate: false)
            dqRaw = UnsafePointer(t.dqRaw.p); dkRaw = UnsafePointer(t.dkRaw.p)
        }
        T.linearBackward(dqRaw, n, w.wq, out: qd, in: d, t.dxa.p, accumulate: false)
        T.linearBackward(dkRaw, n, w.wk, out: kvd, in: d, t.dxa.p, accumulate: true)
        T.linearBackward(t.dv.p, n, w.wv, out: kvd, in: d, t.dxa.p, accumulate: true)
        T.rmsNormRowsBackward(r.x.p, rows: n, width: d, stride: d, w.attnNorm, inv: r.invA.p, t.dxa.p, dx, accumulate: true)
    }
}

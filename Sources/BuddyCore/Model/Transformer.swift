import Synchronization
import CBLAS
import CKernels
import Foundation

/// What a layer that a token skips leaves in the KV cache for later tokens to attend to.
public enum KVPolicy: String, Sendable, CaseIterable {
    /// Positions a layer skipped are excluded from that layer's attention.
    case mask
    /// Zero-filled keys and values (the paper's choice): they still take softmax weight.
    case zero
    /// Compute only that layer's K and V projections for the skipped token (extra compute).
    case fill
}

/// Weights of one transformer block, used in place from the mapped file.
public struct LayerWeights: @unchecked Sendable {
    public let attnNorm: [Float]   // [dim]
    public let ffnNorm: [Float]    // [dim]
    public let wq: QuantMatrix     // [qDim × dim]
    public let wk: QuantMatrix     // [kvDim × dim]
    public let wv: QuantMatrix     // [kvDim × dim]
    public let wo: QuantMatrix     // [dim × qDim]
    public let gate: QuantMatrix   // [ffnDim × dim]
    public let up: QuantMatrix     // [ffnDim × dim]
    public let down: QuantMatrix   // [dim × ffnDim]
    public let bq: [Float]?        // [qDim]   (qwen2)
    public let bk: [Float]?        // [kvDim]  (qwen2)
    public let bv: [Float]?        // [kvDim]  (qwen2)
    public let qNorm: [Float]?         // [headDim] per-head RMS norm of Q (gemma3)
    public let kNorm: [Float]?         // [headDim] per-head RMS norm of K (gemma3)
    public let postAttnNorm: [Float]?  // [dim] on the attention output before the residual add (gemma3)
    public let postFFNNorm: [Float]?   // [dim] on the FFN output before the residual add (gemma3)

    /// The projections that share an input, grouped once so the decode path passes them to
    /// one parallel pass without building arrays per token.
    public var qkv: [QuantMatrix] { groups.qkv }
    public var kv: [QuantMatrix] { groups.kv }
    public var gateUp: [QuantMatrix] { groups.gateUp }
    private let groups: (qkv: [QuantMatrix], kv: [QuantMatrix], gateUp: [QuantMatrix])

    public init(attnNorm: [Float], ffnNorm: [Float], wq: QuantMatrix, wk: QuantMatrix, wv: QuantMatrix, wo: QuantMatrix,
                gate: QuantMatrix, up: QuantMatrix, down: QuantMatrix, bq: [Float]?, bk: [Float]?, bv: [Float]?,
                qNorm: [Float]? = nil, kNorm: [Float]? = nil, postAttnNorm: [Float]? = nil, postFFNNorm: [Float]? = nil) {
        self.attnNorm = attnNorm; self.ffnNorm = ffnNorm
        self.wq = wq; self.wk = wk; self.wv = wv; self.wo = wo
        self.gate = gate; self.up = up; self.down = down
        self.bq = bq; self.bk = bk; self.bv = bv
        self.qNorm = qNorm; self.kNorm = kNorm; self.postAttnNorm = postAttnNorm; self.postFFNNorm = postFFNNorm
        groups = ([wq, wk, wv], [wk, wv], [gate, up])
    }
}

/// Immutable weights of a llama/qwen2/gemma3 decoder and the forward pass over them.
/// All mutable state lives in `DecodeState`, `BatchState` and `KVCache`, owned by the caller.
/// The llama/qwen2 block is in DecodeState.swift / Prefill.swift, Gemma 3's in Gemma3.swift;
/// both use the building blocks below.
public final class Transformer: @unchecked Sendable {
    public let config: ModelConfig
    public let file: GGUFFile
    public let tokenEmbedding: QuantMatrix   // [vocab × dim]
    public let layers: [LayerWeights]
    public let outputNorm: [Float]           // [dim]
    public let output: QuantMatrix           // [vocab × dim]; the embedding when tied
    public let tiedEmbeddings: Bool
    /// [layers] all true: the mask full depth runs (kept so a decode step returns it without allocating)
    public let fullDepthMask: [Bool]
    /// theta_scale = base^(-2/ropeDim); llama.cpp builds each angle as pos·scale·scale·…
    let ropeThetaScale: Float
    /// Per layer: RoPE theta_scale and position scale (they differ between Gemma's local and global layers).
    let layerRope: [(thetaScale: Float, freqScale: Float)]
    /// The screened head once made (`screenedHead`).
    let screenedHeadStore = Mutex<ScreenedHead?>(nil)
    /// Softmax scale inside the attention kernel: 1/√headDim, or 1 where Q arrives pre-scaled (gemma3).
    let kqScale: Float

    public convenience init(file: GGUFFile) throws {
        try self.init(file: file, config: try ModelConfig(gguf: file))
    }

    /// Weights of `file` run with `config` (normally the file's own; tests vary e.g. the sliding window).
    public init(file: GGUFFile, config c: ModelConfig) throws {
        self.file = file
        config = c
        fullDepthMask = [Bool](repeating: true, count: c.layers)

        func matrix(_ name: String, rows: Int, cols: Int) throws -> QuantMatrix {
            let t = try file.tensor(name)
            guard t.dims == [cols, rows] else { throw GGUFError.shapeMismatch(tensor: name, expected: [cols, rows], found: t.dims) }
            guard t.type.layout != nil else {
                throw GGUFError.badTensorType(tensor: name, type: t.type.description, reason: "this type is not supported by the engine")
            }
            return QuantMatrix(name: name, type: t.type, rows: rows, cols: cols, data: file.data(t))
        }
        func vector(_ name: String, _ n: Int) throws -> [Float] {
            let t = try file.tensor(name)
            guard t.dims == [n] else { throw GGUFError.shapeMismatch(tensor: name, expected: [n], found: t.dims) }
            guard t.type == .f32 || t.type == .f16 || t.type == .bf16 else {
                throw GGUFError.badTensorType(tensor: name, type: t.type.description, reason: "norm and bias vectors must be F32, F16 or BF16")
            }
            var out = [Float](repeating: 0, count: n)
            out.withUnsafeMutableBufferPointer { dequantizeRowRef(t.type, file.data(t), $0.baseAddress!, count: n) }
            guard out.allSatisfy({ $0.isFinite }) else {
                throw GGUFError.badTensorType(tensor: name, type: t.type.description, reason: "contains NaN or infinity")
            }
            return out
        }

        tokenEmbedding = try matrix("token_embd.weight", rows: c.vocabSize, cols: c.dim)
        var ls: [LayerWeights] = []
        for l in 0..<c.layers {
            let p = "blk.\(l)."
            ls.append(LayerWeights(
                attnNorm: try vector(p + "attn_norm.weight", c.dim),
                ffnNorm: try vector(p + "ffn_norm.weight", c.dim),
                wq: try matrix(p + "attn_q.weight", rows: c.qDim, cols: c.dim),
                wk: try matrix(p + "attn_k.weight", rows: c.kvDim, cols: c.dim),
                wv: try matrix(p + "attn_v.weight", rows: c.kvDim, cols: c.dim),
                wo: try matrix(p + "attn_output.weight", rows: c.dim, cols: c.qDim),
                gate: try matrix(p + "ffn_gate.weight", rows: c.ffnDim, cols: c.dim),
                up: try matrix(p + "ffn_up.weight", rows: c.ffnDim, cols: c.dim),
                down: try matrix(p + "ffn_down.weight", rows: c.dim, cols: c.ffnDim),
                bq: c.hasQKVBias ? try vector(p + "attn_q.bias", c.qDim) : nil,
                bk: c.hasQKVBias ? try vector(p + "attn_k.bias", c.kvDim) : nil,
                bv: c.hasQKVBias ? try vector(p + "attn_v.bias", c.kvDim) : nil,
                qNorm: c.isGemma3 ? try vector(p + "attn_q_norm.weight", c.headDim) : nil,
                kNorm: c.isGemma3 ? try vector(p + "attn_k_norm.weight", c.headDim) : nil,
                postAttnNorm: c.isGemma3 ? try vector(p + "post_attention_norm.weight", c.dim) : nil,
                postFFNNorm: c.isGemma3 ? try vector(p + "post_ffw_norm.weight", c.dim) : nil))
        }
        layers = ls
        outputNorm = try vector("output_norm.weight", c.dim)
        if file.hasTensor("output.weight") {
            output = try matrix("output.weight", rows: c.vocabSize, cols: c.dim)
            tiedEmbeddings = false
        } else {
            output = tokenEmbedding
            tiedEmbeddings = true
        }
        ropeThetaScale = powf(c.ropeBase, -2 / Float(c.ropeDim))
        layerRope = (0..<c.layers).map { l in
            c.isSlidingWindowLayer(l) ? (powf(c.localRopeBase, -2 / Float(c.ropeDim)), 1)
                                      : (powf(c.ropeBase, -2 / Float(c.ropeDim)), c.ropeFreqScale)
        }
        kqScale = c.isGemma3 ? 1 : 1 / Float(c.headDim).squareRoot()
    }

    // MARK: - Building blocks shared by every path

    /// out = x / sqrt(mean(x²) + eps) * w over the model width.
    @inline(__always)
    func rmsNorm(_ x: UnsafePointer<Float>, _ w: [Float], _ out: UnsafeMutablePointer<Float>) {
        rmsNorm(x, w, out, count: config.dim)
    }

    /// out = x / sqrt(mean(x²) + eps) * w over `n` values (out may be x).
    @inline(__always)
    func rmsNorm(_ x: UnsafePointer<Float>, _ w: [Float], _ out: UnsafeMutablePointer<Float>, count n: Int) {
        let ss = dotF32(x, x, count: n)
        let scale = 1 / (ss / Float(n) + config.rmsNormEps).squareRoot()
        w.withUnsafeBufferPointer { wp in for i in 0..<n { out[i] = x[i] * scale * wp[i] } }
    }

    /// Rotate `count` heads of `headDim` in place for position `pos`.
    @inline(__always)
    func rope(_ v: UnsafeMutablePointer<Float>, heads count: Int, pos: Int) {
        rope(v, heads: count, pos: pos, thetaScale: ropeThetaScale, freqScale: 1)
    }

    /// `rope` with layer l's base and position scale.
    @inline(__always)
    func rope(_ v: UnsafeMutablePointer<Float>, heads count: Int, pos: Int, layer l: Int) {
        rope(v, heads: count, pos: pos, thetaScale: layerRope[l].thetaScale, freqScale: layerRope[l].freqScale)
    }

    @inline(__always)
    func rope(_ v: UnsafeMutablePointer<Float>, heads count: Int, pos: Int, thetaScale: Float, freqScale: Float) {
        let hd = config.headDim, half = config.ropeDim / 2
        // Same angle arithmetic as llama.cpp's rope cache: theta_i = ((pos·s)·s)·… in float,
        // times the position scale when the layer has one.
        var thetaExtrap = Float(pos)
        for i in 0..<half {
            let theta = freqScale == 1 ? thetaExtrap : freqScale * thetaExtrap
            let c = cosf(theta), s = sinf(theta)
            thetaExtrap *= thetaScale
            for h in 0..<count {
                let base = v + h * hd
                // llama: adjacent pairs; qwen2 (NeoX): element i pairs with i + ropeDim/2.
                let (a, b) = config.ropeNeoX ? (i, i + half) : (2 * i, 2 * i + 1)
                let x0 = base[a], x1 = base[b]
                base[a] = x0 * c - x1 * s
                base[b] = x0 * s + x1 * c
            }
        }
    }

    /// The first position a query at `pos` sees on `layer`: 0, or the start of the sliding window.
    @inline(__always)
    func attentionStart(layer: Int, pos: Int) -> Int {
        config.isSlidingWindowLayer(layer) ? max(0, pos - config.slidingWindow + 1) : 0
    }

    /// Attention of one query head over positions attentionStart...pos of `layer` (vector kernel).
    /// scores: scratch of at least pos+1 floats. out: [headDim].
    @inline(__always)
    func attendHead(q: UnsafePointer<Float>, kvHead: Int, layer: Int, pos: Int, cache: KVCache,
                    scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, halfWeights: Bool) {
        let hd = config.headDim, lo = attentionStart(layer: layer, pos: pos)
        bk_attend(q, cache.key(layer, lo) + kvHead * hd, cache.value(layer, lo) + kvHead * hd, cache.kvDim,
                  cache.present + layer * cache.capacity + lo, Int32(pos + 1 - lo), Int32(hd), kqScale,
                  halfWeights ? 1 : 0, scores, out)
    }

    /// The scalar reference twin of `attendHead`.
    public func attendHeadRef(q: UnsafePointer<Float>, kvHead: Int, layer: Int, pos: Int, cache: KVCache,
                              scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, halfWeights: Bool) {
        let hd = config.headDim
        let scale = kqScale
        let off = kvHead * hd
        let lo = attentionStart(layer: layer, pos: pos)
        var maxScore = -Float.infinity
        for t in 0..<lo { scores[t] = -.infinity }
        for t in lo...pos {
            guard cache.isPresent(layer, t) else { scores[t] = -.infinity; continue }
            let s = dotF32Ref(q, cache.key(layer, t) + off, count: hd) * scale
            scores[t] = s
            if s > maxScore { maxScore = s }
        }
        var sum: Float = 0
        for t in 0...pos {
            let e = scores[t] == -.infinity ? 0 : expf(scores[t] - maxScore)
            scores[t] = e
            sum += e
        }
        out.update(repeating: 0, count: hd)
        guard sum > 0 else { return }
        let inv = 1 / sum
        for t in 0...pos {
            scores[t] *= inv
            if halfWeights { scores[t] = Float(Float16(scores[t])) }
        }
        for t in 0...pos where scores[t] != 0 {
            axpyF32Ref(scores[t], cache.value(layer, t) + off, out, count: hd)
        }
    }

    @inline(__always) static func roundToHalf(_ p: UnsafeMutablePointer<Float>, _ n: Int) {
        bk_round_to_half(p, Int32(n))
    }

    @inline(__always) static func silu(_ x: Float) -> Float { x / (1 + expf(-x)) }
}

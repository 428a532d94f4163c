/// Where per-layer intermediates go when someone asks for them (name, layer, values).
/// Names: "inp_embd", "attn_norm", "q", "k", "v", "attn_out", "ffn_inp", "ffn_norm",
/// "ffn_out", "l_out" (layer output, i.e. residual after the block), "result_norm".
public typealias TraceSink = (_ name: String, _ layer: Int, _ values: UnsafeBufferPointer<Float>) -> Void

/// The preallocated run state of the token-by-token path: nothing is allocated per token.
public final class DecodeState: @unchecked Sendable {
    public let config: ModelConfig
    public let x: UnsafeMutablePointer<Float>        // [dim] residual stream
    public let xb: UnsafeMutablePointer<Float>       // [max(dim, qDim)] normed input / block output
    public let q: UnsafeMutablePointer<Float>        // [qDim]
    public let k: UnsafeMutablePointer<Float>        // [kvDim]
    public let v: UnsafeMutablePointer<Float>        // [kvDim]
    public let attOut: UnsafeMutablePointer<Float>   // [qDim]
    public let hb: UnsafeMutablePointer<Float>       // [ffnDim] gate, then silu(gate)*up
    public let hb2: UnsafeMutablePointer<Float>      // [ffnDim] up
    public let scores: UnsafeMutablePointer<Float>   // [heads × capacity]
    public let logits: UnsafeMutablePointer<Float>   // [vocab]
    public let scratch: UnsafeMutablePointer<Float>  // [max(dim, ffnDim, qDim)] reference dequantisation
    public var xq: Q8Activations                     // [max(dim, ffnDim, qDim)] quantised input
    public let capacity: Int
    public let matvec: MatVec
    /// Output groups matching LayerWeights.qkv / kv / gateUp.
    let qkvOut: [UnsafeMutablePointer<Float>]
    let kvOut: [UnsafeMutablePointer<Float>]
    let gateUpOut: [UnsafeMutablePointer<Float>]
    /// The attention heads of one layer as a parallel loop (its parameters set per layer).
    let attention = AttentionHeads()
    /// Use the plain fp32 reference path (dequantised weights, fp32 activations, scalar code).
    public var reference = false
    public var trace: TraceSink?
    /// What a skipped layer adds to the residual stream (nil: nothing, the layer vanishes).
    public var standIns: StandIns? {
        didSet { precondition((standIns?.maxRank ?? 0) <= config.dim && standIns.map { $0.dim == config.dim } ?? true, "stand-ins do not fit this model") }
    }
    /// When set, a token that runs at most two thirds of the layers reads the screened head
    /// (ScreenedHead); full depth always reads the exact one. The product's commands set it
    /// (`Session.head`); training leaves it nil and measures with the exact head.
    public var screen: ScreenedLogits?
    /// Seconds spent applying stand-ins on this state's steps, ever (callers take differences).
    /// Timed where they run, between the layers: their weights then come from memory as in a
    /// real step, which a loop of stand-ins alone, with its weights in cache, would not show.
    public internal(set) var standInSeconds = 0.0
    /// Batch buffers for catching up many deferred K/V at once (`computeDeferredKV`): a prompt
    /// evaluated at the budget defers whole layers for all its positions, and the first token
    /// that runs such a layer then fills them as one batched product instead of one by one.
    /// Its owner (the session) sets it; the batch holds nothing live between prompts.
    public var catchUpBatch: BatchState?

    public init(config c: ModelConfig, capacity: Int, pool: ThreadPool) {
        config = c
        self.capacity = capacity
        let wide = max(c.dim, c.ffnDim, c.qDim)
        x = .allocate(capacity: c.dim)
        xb = .allocate(capacity: max(c.dim, c.qDim))
        q = .allocate(capacity: c.qDim)
        k = .allocate(capacity: c.kvDim)
        v = .allocate(capacity: c.kvDim)
        attOut = .allocate(capacity: c.qDim)
        hb = .allocate(capacity: c.ffnDim)
        hb2 = .allocate(capacity: c.ffnDim)
        scores = .allocate(capacity: c.heads * capacity)
        logits = .allocate(capacity: c.vocabSize)
        scratch = .allocate(capacity: wide)
        xq = Q8Activations(capacity: (wide + 31) / 32 * 32)
        matvec = MatVec(pool: pool, maxCols: wide)
        qkvOut = [q, k, v]
        kvOut = [k, v]
        gateUpOut = [hb, hb2]
    }

    deinit {
        for p in [x, xb, q, k, v, attOut, hb, hb2, scores, logits, scratch] { p.deallocate() }
        xq.deallocate()
    }

    @inline(__always) func emit(_ name: String, _ layer: Int, _ p: UnsafePointer<Float>, _ n: Int) {
        if let trace { trace(name, layer, UnsafeBufferPointer(start: p, count: n)) }
    }
}

extension Transformer {
    /// Start a token: the residual stream becomes the token's embedding row.
    public func embed(_ token: Int32, _ s: DecodeState) {
        precondition(token >= 0 && Int(token) < config.vocabSize, "token id \(token) out of range")
        dequantizeRow(tokenEmbedding.type, tokenEmbedding.row(Int(token)), s.x, count: config.dim)
        scaleEmbedding(s.x)
        s.emit("inp_embd", -1, s.x, config.dim)
    }

    /// y = W·x on the chosen path.
    @inline(__always)
    func project(_ m: QuantMatrix, _ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ s: DecodeState, quantized: Bool) {
        if s.reference { s.matvec.runReference(m, x, y) } else {
            if !quantized && m.usesQ8Input { s.xq.quantize(x, count: m.cols) }
            s.matvec.run(m, x, s.xq, y)
        }
    }

    /// Run block `l` for the token at `pos`, reading and updating s.x and the cache.
    public func runLayer(_ l: Int, pos: Int, _ s: DecodeState, _ cache: KVCache) {
        let c = config, w = layers[l]
        precondition(pos < cache.capacity, "position \(pos) beyond KV cache capacity \(cache.capacity)")
        if c.isGemma3 { return runGemma3Layer(l, pos: pos, s, cache) }

        // Attention
        rmsNorm(s.x, w.attnNorm, s.xb)
        s.emit("attn_norm", l, s.xb, c.dim)
        projectQKV(w, s)
        if let b = w.bq { for i in 0..<c.qDim { s.q[i] += b[i] } }
        if let b = w.bk { for i in 0..<c.kvDim { s.k[i] += b[i] } }
        if let b = w.bv { for i in 0..<c.kvDim { s.v[i] += b[i] } }
        rope(s.q, heads: c.heads, pos: pos)
        rope(s.k, heads: c.kvHeads, pos: pos)
        s.emit("q", l, s.q, c.qDim)
        s.emit("k", l, s.k, c.kvDim)
        s.emit("v", l, s.v, c.kvDim)
        if !s.reference {
            // llama.cpp keeps K and V in half precision and multiplies Q in half precision.
            Transformer.roundToHalf(s.k, c.kvDim)
            Transformer.roundToHalf(s.v, c.kvDim)
            Transformer.roundToHalf(s.q, c.qDim)
        }
        storeKV(l, pos: pos, k: s.k, v: s.v, cache)
        attend(l, pos: pos, s, cache)
        s.emit("attn_out", l, s.attOut, c.qDim)
        project(w.wo, s.attOut, s.xb, s, quantized: false)
        for i in 0..<c.dim { s.x[i] += s.xb[i] }
        s.emit("ffn_inp", l, s.x, c.dim)

        // Feed-forward (SwiGLU)
        rmsNorm(s.x, w.ffnNorm, s.xb)
        s.emit("ffn_norm", l, s.xb, c.dim)
        projectGateUp(w, s)
        for i in 0..<c.ffnDim { s.hb[i] = Transformer.silu(s.hb[i]) * s.hb2[i] }
        project(w.down, s.hb, s.xb, s, quantized: false)
        s.emit("ffn_out", l, s.xb, c.dim)
        for i in 0..<c.dim { s.x[i] += s.xb[i] }
        s.emit("l_out", l, s.x, c.dim)
    }

    /// Matrices that share the normed input s.xb (Q/K/V, K/V, gate/up) into their outputs:
    /// one parallel pass on the fast path, one scalar product each on the reference path.
    func project(group ms: [QuantMatrix], into outputs: [UnsafeMutablePointer<Float>], _ s: DecodeState) {
        if s.reference {
            for (m, y) in zip(ms, outputs) { s.matvec.runReference(m, s.xb, y) }
        } else {
            s.xq.quantize(s.xb, count: config.dim)
            s.matvec.run(ms, s.xb, s.xq, outputs)
        }
    }

    /// Q, K and V of the normed input s.xb into s.q, s.k, s.v.
    func projectQKV(_ w: LayerWeights, _ s: DecodeState) { project(group: w.qkv, into: s.qkvOut, s) }
    /// K and V only (a skipped layer under the `fill` policy).
    func projectKV(_ w: LayerWeights, _ s: DecodeState) { project(group: w.kv, into: s.kvOut, s) }
    /// The FFN's gate and up projections of s.xb into s.hb, s.hb2.
    func projectGateUp(_ w: LayerWeights, _ s: DecodeState) { project(group: w.gateUp, into: s.gateUpOut, s) }

    /// Layer l's cache entry for `pos`: k and v, or, for a position that skipped the layer,
    /// what `policy` leaves (zeros under `zero`, no entry under `mask`).
    @inline(__always)
    func storeKV(_ l: Int, pos: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>, _ cache: KVCache,
                 skipped: Bool = false, policy: KVPolicy = .mask) {
        let kvd = config.kvDim
        if skipped && policy == .zero {
            cache.key(l, pos).update(repeating: 0, count: kvd)
            cache.value(l, pos).update(repeating: 0, count: kvd)
        } else {
            cache.key(l, pos).update(from: k, count: kvd)
            cache.value(l, pos).update(from: v, count: kvd)
        }
        cache.setPresent(l, pos, !skipped || policy != .mask)
    }

    /// Every query head of s.q over layer l's cache up to `pos` into s.attOut (first the K/V
    /// that earlier tokens which skipped the layer left deferred).
    func attend(_ l: Int, pos: Int, _ s: DecodeState, _ cache: KVCache) {
        computeDeferredKV(l, before: pos, s, cache)
        let c = config
        let heads = c.heads, group = c.groupSize, hd = c.headDim, cap = s.capacity
        if s.reference {
            for h in 0..<heads {
                attendHeadRef(q: s.q + h * hd, kvHead: h / group, layer: l, pos: pos, cache: cache,
                              scores: s.scores + h * cap, out: s.attOut + h * hd, halfWeights: false)
            }
        } else {
            let pool = s.matvec.pool
            // Short contexts are cheaper on one thread than waking the pool.
            let tasks = pos < 64 ? 1 : pool.threads
            s.attention.prepare(transformer: self, state: s, layer: l, pos: pos, cache: cache, tasks: tasks)
            if tasks == 1 { s.attention.runTask(0) } else { pool.parallelFor(tasks, s.attention) }
            s.attention.finish()
        }
    }

    /// Account for a layer the token at `pos` does not run: the cache entry follows the
    /// policy (under `fill` its K/V come from the layer's input, computed now or, when the
    /// cache defers them, the first time a later token attends over the layer), then the
    /// residual stream passes through unchanged or gets the layer's stand-in when `s.standIns` has one.
    public func skipLayer(_ l: Int, pos: Int, policy: KVPolicy, _ s: DecodeState, _ cache: KVCache) {
        let c = config
        switch policy {
        case .mask:
            cache.setPresent(l, pos, false)
        case .zero:
            cache.key(l, pos).update(repeating: 0, count: c.kvDim)
            cache.value(l, pos).update(repeating: 0, count: c.kvDim)
            cache.setPresent(l, pos, true)
        case .fill where cache.defersFill && !s.reference:
            cache.deferKV(l, pos, input: s.x)
        case .fill:
            fillKV(l, pos: pos, input: s.x, s, cache)
        }
        if let standIns = s.standIns {
            if s.reference {
                standIns.applyRef(layer: l, s.x, normed: s.xb, projected: s.scratch)
            } else {
                let start = monotonicSeconds()
                standIns.apply(layer: l, s.x, normed: s.xb, projected: s.scratch, across: s.matvec, xq: s.xq)
                s.standInSeconds += monotonicSeconds() - start
            }
        }
    }

    /// Layer l's K and V for `pos` from the layer's input ([dim]) into the cache, as a token
    /// that runs the layer would store them (uses s.xb, s.k, s.v).
    func fillKV(_ l: Int, pos: Int, input: UnsafePointer<Float>, _ s: DecodeState, _ cache: KVCache) {
        let w = layers[l]
        rmsNorm(input, w.attnNorm, s.xb)
        projectKV(w, s)
        finishKeysValues(l, pos: pos, k: s.k, v: s.v, half: !s.reference)
        storeKV(l, pos: pos, k: s.k, v: s.v, cache)
    }

    /// The raw K and V projections of layer l at `pos` made into cache entries: biases, RoPE
    /// (Gemma: per-head K norm and the layer's base) and, on the fast path, half precision.
    @inline(__always)
    func finishKeysValues(_ l: Int, pos: Int, k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, half: Bool) {
        let c = config, w = layers[l]
        if c.isGemma3 { return gemma3Keys(l, pos: pos, k: k, v: v, half: half) }
        if let b = w.bk { for i in 0..<c.kvDim { k[i] += b[i] } }
        if let b = w.bv { for i in 0..<c.kvDim { v[i] += b[i] } }
        rope(k, heads: c.kvHeads, pos: pos)
        if half {
            Transformer.roundToHalf(k, c.kvDim)
            Transformer.roundToHalf(v, c.kvDim)
        }
    }

    /// Computes layer l's deferred K/V for positions before `pos` (KVCache, "Deferred fill"),
    /// one position at a time with the decode kernels. Uses s.xb, s.k, s.v; s.q is untouched.
    func computeDeferredKV(_ l: Int, before pos: Int, _ s: DecodeState, _ cache: KVCache) {
        let first = cache.firstDeferred[l]
        guard first < pos else { return }
        // The span from `first` is the number of deferred positions (every token since skipped the
        // layer, or it would have caught them up) unless a rewind left a gap; the batch takes any
        // number, so the span decides and nothing is counted.
        if let b = s.catchUpBatch, !s.reference, pos - first >= Self.batchedCatchUp {
            return computeDeferredKV(l, before: pos, b, cache)
        }
        for p in first..<pos where cache.isDeferred(l, p) {
            fillKV(l, pos: p, input: cache.deferredInput(l, p), s, cache)
        }
        // Positions from `pos` on are rewritten before anyone reads them, and a new deferral lowers this again.
        cache.firstDeferred[l] = cache.capacity
    }

    /// From a span of this many deferred positions on, a catch-up runs as one batch (`catchUpBatch`).
    static let batchedCatchUp = 8

    /// Final norm and output head: fills s.logits. `layersRun`: how many layers the token ran
    /// (nil: all), which decides between the exact and the screened head when s.screen is set.
    public func computeLogits(_ s: DecodeState, layersRun: Int? = nil) {
        rmsNorm(s.x, outputNorm, s.xb)
        s.emit("result_norm", -1, s.xb, config.dim)
        if let screen = s.screen, !s.reference, let run = layersRun,
           ScreenedHead.usesScreen(layersRun: run, of: config.layers) {
            s.xq.quantize(s.xb, count: config.dim)
            screen.run(s.xq, s.logits)
            return
        }
        project(output, s.xb, s.logits, s, quantized: false)
    }

    /// One whole token through the layers `runs` selects (all when nil); returns s.logits.
    @discardableResult
    public func forward(token: Int32, pos: Int, _ s: DecodeState, _ cache: KVCache,
                        runs: ((Int) -> Bool)? = nil, policy: KVPolicy = .mask) -> UnsafeMutablePointer<Float> {
        routedForward(token: token, pos: pos, s, cache, routing: .fixed(layers: config.layers, runs: runs), policy: policy)
        return s.logits
    }
}

/// The heads of one layer's attention for one decode token, split into `tasks` contiguous
/// groups. A reusable object rather than a closure, so the loop allocates nothing.
final class AttentionHeads: ParallelTasks, @unchecked Sendable {
    private unowned(unsafe) var transformer: Transformer?
    private unowned(unsafe) var state: DecodeState?
    private unowned(unsafe) var cache: KVCache?
    private var layer = 0, pos = 0, perTask = 0

    func prepare(transformer: Transformer, state: DecodeState, layer: Int, pos: Int, cache: KVCache, tasks: Int) {
        self.transformer = transformer; self.state = state; self.cache = cache
        self.layer = layer; self.pos = pos
        perTask = (transformer.config.heads + tasks - 1) / tasks
    }

    func finish() { transformer = nil; state = nil; cache = nil }

    func runTask(_ t: Int) {
        guard let tr = transformer, let s = state, let cache else { return }
        let c = tr.config, hd = c.headDim, cap = s.capacity
        for h in t * perTask..<min(c.heads, (t + 1) * perTask) {
            tr.attendHead(q: s.q + h * hd, kvHead: h / c.groupSize, layer: layer, pos: pos, cache: cache,
                          scores: s.scores + h * cap, out: s.attOut + h * hd, halfWeights: true)
        }
    }
}

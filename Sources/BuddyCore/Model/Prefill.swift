import CBLAS
import CKernels
import Foundation

/// Preallocated buffers for evaluating a chunk of up to `maxTokens` prompt tokens at once.
public final class BatchState: @unchecked Sendable {
    public let config: ModelConfig
    public let maxTokens: Int
    public let x: UnsafeMutablePointer<Float>       // [maxTokens × dim] residual streams
    public let xb: UnsafeMutablePointer<Float>      // [maxTokens × max(dim, qDim)]
    public let q: UnsafeMutablePointer<Float>       // [maxTokens × qDim]
    public let k: UnsafeMutablePointer<Float>       // [maxTokens × kvDim]
    public let v: UnsafeMutablePointer<Float>       // [maxTokens × kvDim]
    public let att: UnsafeMutablePointer<Float>     // [maxTokens × qDim]
    public let g: UnsafeMutablePointer<Float>       // [maxTokens × ffnDim]
    public let u: UnsafeMutablePointer<Float>       // [maxTokens × ffnDim]
    public let saved: UnsafeMutablePointer<Float>   // [maxTokens × dim] residual streams before a layer some rows skip
    public let slab: UnsafeMutablePointer<Float>    // [slabRows × max(dim, ffnDim)] dequantised weights
    public let slabRows: Int
    public let scores: UnsafeMutablePointer<Float>  // [threads × capacity]
    public let product: BatchedProduct              // [maxTokens × wideIn] rows quantised to 8 bits, and the product
    let deferredRows: UnsafeMutablePointer<Int>     // [maxTokens] positions of a deferred K/V batch
    /// [maxTokens] how many layers each row of the last routed chunk ran (routedForward sets it).
    public let rowLayers: UnsafeMutablePointer<Int32>
    /// As DecodeState.screen: rows that ran at most two thirds of the layers read the screened head.
    public var screen: ScreenedLogits?
    /// One row's input quantised for the screened head.
    var screenInput: Q8Activations
    public let capacity: Int
    public let pool: ThreadPool
    public var trace: TraceSink?
    /// What a skipped layer adds to each row's residual stream (nil: nothing).
    public var standIns: StandIns? {
        didSet { precondition((standIns?.maxRank ?? 0) <= min(config.dim, config.ffnDim) && standIns.map { $0.dim == config.dim } ?? true, "stand-ins do not fit this model") }
    }

    public init(config c: ModelConfig, maxTokens: Int, capacity: Int, pool: ThreadPool) {
        config = c
        self.maxTokens = maxTokens
        self.capacity = capacity
        self.pool = pool
        let wideIn = max(c.dim, c.ffnDim, c.qDim)
        x = .allocate(capacity: maxTokens * c.dim)
        xb = .allocate(capacity: maxTokens * max(c.dim, c.qDim))
        q = .allocate(capacity: maxTokens * c.qDim)
        k = .allocate(capacity: maxTokens * c.kvDim)
        v = .allocate(capacity: maxTokens * c.kvDim)
        att = .allocate(capacity: maxTokens * c.qDim)
        g = .allocate(capacity: maxTokens * c.ffnDim)
        u = .allocate(capacity: maxTokens * c.ffnDim)
        saved = .allocate(capacity: maxTokens * c.dim)
        // Only weights without an 8-bit kernel go through sgemm; their slab holds 1024 rows.
        slabRows = 1024
        slab = .allocate(capacity: slabRows * wideIn)
        scores = .allocate(capacity: pool.threads * capacity)
        product = BatchedProduct(rows: maxTokens, cols: wideIn, pool: pool)
        deferredRows = .allocate(capacity: maxTokens)
        rowLayers = .allocate(capacity: maxTokens)
        rowLayers.initialize(repeating: Int32(c.layers), count: maxTokens)
        screenInput = Q8Activations(capacity: (c.dim + 31) / 32 * 32)
    }

    deinit {
        for p in [x, xb, q, k, v, att, g, u, saved, slab, scores] { p.deallocate() }
        deferredRows.deallocate()
        rowLayers.deallocate()
        screenInput.deallocate()
    }

    @inline(__always) func emit(_ name: String, _ layer: Int, _ p: UnsafePointer<Float>, _ n: Int) {
        if let trace { trace(name, layer, UnsafeBufferPointer(start: p, count: n)) }
    }
}

extension Transformer {
    /// Y = X·Wᵀ for a chunk of n rows ([n × m.cols] -> [n × ldy]).
    /// Quantised weights use the same 8-bit arithmetic as the decode path, so a prompt
    /// evaluated in one batch and token by token gives identical projections; other types
    /// are dequantised and multiplied with OpenBLAS.
    func gemm(_ m: QuantMatrix, _ x: UnsafePointer<Float>, _ n: Int, _ y: UnsafeMutablePointer<Float>, _ b: BatchState, ldy: Int? = nil) {
        let ldy = ldy ?? m.rows
        if m.usesQ8Input || m.type.isKQuant {
            b.product.run(m, x, n: n, y, ldy: ldy)
        } else {
            gemmDequantized(m, x, n: n, y, ldy: ldy, slab: b.slab, slabRows: b.slabRows, pool: b.pool)
        }
    }

    /// Evaluate `tokens` at positions start..<start+n as one batch, writing K/V into the cache.
    /// `runs(l)` selects the layers (one decision for the whole chunk); skipped layers follow
    /// `policy`. On return b.x holds each token's final residual stream.
    public func prefill(_ tokens: ArraySlice<Int32>, start: Int, _ b: BatchState, _ cache: KVCache,
                        runs: ((Int) -> Bool)? = nil, policy: KVPolicy = .mask) {
        routedForward(tokens, start: start, b, cache, routing: .fixed(layers: config.layers, runs: runs), policy: policy)
    }

    /// First half of `prefill`: the chunk's embeddings into b.x.
    public func prefillEmbed(_ tokens: ArraySlice<Int32>, start: Int, _ b: BatchState, _ cache: KVCache) {
        let c = config
        let n = tokens.count
        precondition(n >= 1 && n <= b.maxTokens, "chunk of \(n) tokens exceeds batch size \(b.maxTokens)")
        precondition(start + n <= cache.capacity, "prompt does not fit the KV cache")
        for (i, t) in tokens.enumerated() {
            precondition(t >= 0 && Int(t) < c.vocabSize, "token id \(t) out of range")
            dequantizeRow(tokenEmbedding.type, tokenEmbedding.row(Int(t)), b.x + i * c.dim, count: c.dim)
            scaleEmbedding(b.x + i * c.dim)
        }
    }

    /// Second half of `prefill`: the given layers over the chunk already in b.x.
    public func prefillLayers(_ range: Range<Int>, n: Int, start: Int, _ b: BatchState, _ cache: KVCache,
                              runs: ((Int) -> Bool)? = nil, policy: KVPolicy = .mask) {
        for l in range {
            if runs?(l) ?? true {
                prefillLayer(l, n: n, start: start, b, cache)
            } else {
                skipLayerBatch(l, n: n, start: start, policy: policy, b, cache)
            }
        }
        cache.count = max(cache.count, start + n)
    }

    /// `prefillLayers` with one decision per row: rowRuns[i][l] says whether row i (position
    /// start+i) runs layer l. The result equals decoding the rows one at a time with those
    /// decisions: a layer that only some rows run is computed for the whole chunk, then the
    /// rows that skip it get their residual stream back and their cache entry follows
    /// `policy` (so later rows see exactly what token-by-token decoding would leave).
    public func prefillLayers(_ range: Range<Int>, n: Int, start: Int, _ b: BatchState, _ cache: KVCache,
                              rowRuns: [[Bool]], policy: KVPolicy = .mask) {
        precondition(rowRuns.count == n, "one layer mask per row")
        let dim = config.dim
        for l in range {
            let running = rowRuns.reduce(0) { $0 + ($1[l] ? 1 : 0) }
            if running == n {
                prefillLayer(l, n: n, start: start, b, cache)
            } else if running == 0 {
                skipLayerBatch(l, n: n, start: start, policy: policy, b, cache)
            } else {
                b.saved.update(from: b.x, count: n * dim)
                prefillLayer(l, n: n, start: start, b, cache, skipping: { !rowRuns[$0][l] }, policy: policy)
                for i in 0..<n where !rowRuns[i][l] { (b.x + i * dim).update(from: b.saved + i * dim, count: dim) }
                applyStandIns(l, n: n, b) { !rowRuns[$0][l] }
            }
        }
        cache.count = max(cache.count, start + n)
    }

    /// One layer over the chunk. Rows for which `skipping(i)` holds leave the cache entry
    /// that `policy` prescribes for a skipped layer (`fill`: the K/V computed here, as decoding
    /// computes them; `zero`: zeros; `mask`: none), before any row attends.
    func prefillLayer(_ l: Int, n: Int, start: Int, _ b: BatchState, _ cache: KVCache,
                      skipping: ((Int) -> Bool)? = nil, policy: KVPolicy = .mask) {
        if config.isGemma3 { return prefillGemma3Layer(l, n: n, start: start, b, cache, skipping: skipping, policy: policy) }
        let c = config, w = layers[l]
        let dim = c.dim, qd = c.qDim, kvd = c.kvDim, ffn = c.ffnDim
        eachRow(n, b) { i in self.rmsNorm(b.x + i * dim, w.attnNorm, b.xb + i * dim) }
        gemm(w.wq, b.xb, n, b.q, b)
        gemm(w.wk, b.xb, n, b.k, b)
        gemm(w.wv, b.xb, n, b.v, b)
        eachRow(n, b) { i in
            let q = b.q + i * qd, k = b.k + i * kvd, v = b.v + i * kvd
            if let bq = w.bq { for j in 0..<qd { q[j] += bq[j] } }
            if let bk = w.bk { for j in 0..<kvd { k[j] += bk[j] } }
            if let bv = w.bv { for j in 0..<kvd { v[j] += bv[j] } }
            self.rope(q, heads: c.heads, pos: start + i)
            self.rope(k, heads: c.kvHeads, pos: start + i)
            Transformer.roundToHalf(q, qd)
            Transformer.roundToHalf(k, kvd)
            Transformer.roundToHalf(v, kvd)
            // Each position has its own cache entry and flags, so rows may store concurrently.
            self.storeKV(l, pos: start + i, k: k, v: v, cache, skipped: skipping?(i) == true, policy: policy)
        }
        if b.trace != nil {
            for i in 0..<n { b.emit("attn_norm", l, b.xb + i * dim, dim); b.emit("q", l, b.q + i * qd, qd) }
        }
        attendBatch(l, n: n, start: start, b, cache)
        gemm(w.wo, b.att, n, b.xb, b)
        eachRow(n, b) { i in
            let x = b.x + i * dim, o = b.xb + i * dim
            for j in 0..<dim { x[j] += o[j] }
            self.rmsNorm(x, w.ffnNorm, o)
        }
        gemm(w.gate, b.xb, n, b.g, b)
        gemm(w.up, b.xb, n, b.u, b)
        eachRow(n, b) { i in
            let g = b.g + i * ffn, u = b.u + i * ffn
            for j in 0..<ffn { g[j] = Transformer.silu(g[j]) * u[j] }
        }
        gemm(w.down, b.g, n, b.xb, b)
        eachRow(n, b) { i in
            let x = b.x + i * dim, o = b.xb + i * dim
            for j in 0..<dim { x[j] += o[j] }
        }
        if b.trace != nil { for i in 0..<n { b.emit("l_out", l, b.x + i * dim, dim) } }
    }

    /// Causal attention of the chunk's queries (b.q) over layer l's cache into b.att: each
    /// (token, head) pair is independent.
    /// Deferred K/V of earlier positions (KVCache, "Deferred fill") are computed first, so call
    /// it after the chunk's own K/V are stored.
    func attendBatch(_ l: Int, n: Int, start: Int, _ b: BatchState, _ cache: KVCache) {
        computeDeferredKV(l, before: start, b, cache)
        let c = config, qd = c.qDim, hd = c.headDim
        let tasks = b.pool.threads
        // Tokens dealt out in turn: a token attends over every position before it, so
        // contiguous halves would leave the later half three times the work.
        b.pool.parallelFor(tasks) { t in
            let scores = b.scores + t * b.capacity
            for i in stride(from: t, to: n, by: tasks) {
                for h in 0..<c.heads {
                    self.attendHead(q: b.q + i * qd + h * hd, kvHead: h / c.groupSize, layer: l, pos: start + i,
                                    cache: cache, scores: scores, out: b.att + i * qd + h * hd, halfWeights: true)
                }
            }
        }
    }

    /// body(i) for every row i of an n-row chunk, the rows shared out across the pool in
    /// contiguous ranges. For per-row work between the products (norms, RoPE, activations,
    /// residual adds): each row is computed whole by one thread, so the numbers do not depend on
    /// the split, and the second core no longer idles (or falls asleep) through them.
    @inline(__always)
    func eachRow(_ n: Int, _ b: BatchState, _ body: (Int) -> Void) {
        let tasks = min(n, b.pool.threads)
        guard tasks > 1 else { for i in 0..<n { body(i) }; return }
        let perTask = (n + tasks - 1) / tasks
        b.pool.parallelFor(tasks) { t in for i in t * perTask..<min(n, (t + 1) * perTask) { body(i) } }
    }

    /// Row i's stand-in for layer l, with the decode path's kernel so that a batch and
    /// token-by-token decoding give the same numbers.
    @inline(__always)
    func applyStandIn(_ l: Int, row i: Int, _ b: BatchState) {
        guard let standIns = b.standIns else { return }
        let dim = config.dim
        standIns.apply(layer: l, b.x + i * dim, normed: b.xb + i * dim, projected: b.g + i * config.ffnDim)
    }

    /// The stand-in of layer l on every row of the chunk that `skips` (all when nil), the rows
    /// shared out across the pool (each row is computed whole by one thread, so the numbers do
    /// not depend on the split).
    func applyStandIns(_ l: Int, n: Int, _ b: BatchState, skips: ((Int) -> Bool)? = nil) {
        guard b.standIns?.layers[l] != nil else { return }
        eachRow(n, b) { i in if skips?(i) ?? true { self.applyStandIn(l, row: i, b) } }
    }

    func skipLayerBatch(_ l: Int, n: Int, start: Int, policy: KVPolicy, _ b: BatchState, _ cache: KVCache) {
        defer { applyStandIns(l, n: n, b) }
        let c = config, w = layers[l]
        switch policy {
        case .mask:
            for i in 0..<n { cache.setPresent(l, start + i, false) }
        case .zero:
            for i in 0..<n {
                cache.key(l, start + i).update(repeating: 0, count: c.kvDim)
                cache.value(l, start + i).update(repeating: 0, count: c.kvDim)
                cache.setPresent(l, start + i, true)
            }
        case .fill where cache.defersFill:
            for i in 0..<n { cache.deferKV(l, start + i, input: b.x + i * c.dim) }
        case .fill:
            for i in 0..<n { rmsNorm(b.x + i * c.dim, w.attnNorm, b.xb + i * c.dim) }
            storeKVRows(l, n: n, at: { start + $0 }, b, cache)
        }
    }

    /// Layer l's K and V for n rows whose normalised inputs are in b.xb, stored at positions
    /// position(0) ..< position(n) (batch kernels; uses b.k and b.v).
    func storeKVRows(_ l: Int, n: Int, at position: (Int) -> Int, _ b: BatchState, _ cache: KVCache) {
        let w = layers[l], kvd = config.kvDim
        gemm(w.wk, b.xb, n, b.k, b)
        gemm(w.wv, b.xb, n, b.v, b)
        for i in 0..<n {
            let k = b.k + i * kvd, v = b.v + i * kvd
            finishKeysValues(l, pos: position(i), k: k, v: v, half: true)
            storeKV(l, pos: position(i), k: k, v: v, cache)
        }
    }

    /// Computes layer l's deferred K/V for positions before `start` in batches of up to
    /// b.maxTokens rows (the batch kernels give the decode kernels' numbers). Uses b.xb, b.k
    /// and b.v, which hold nothing live once the chunk's own K/V are stored; b.q is untouched.
    func computeDeferredKV(_ l: Int, before start: Int, _ b: BatchState, _ cache: KVCache) {
        let first = cache.firstDeferred[l]
        guard first < start else { return }
        let w = layers[l], dim = config.dim, rows = b.deferredRows
        var count = 0
        for p in first..<start where cache.isDeferred(l, p) {
            rmsNorm(cache.deferredInput(l, p), w.attnNorm, b.xb + count * dim)
            rows[count] = p
            count += 1
            if count == b.maxTokens { storeKVRows(l, n: count, at: { rows[$0] }, b, cache); count = 0 }
        }
        if count > 0 { storeKVRows(l, n: count, at: { rows[$0] }, b, cache) }
        cache.firstDeferred[l] = cache.capacity
    }

    public func batchLogits(row i: Int, _ b: BatchState, _ s: DecodeState) {
        s.x.update(from: b.x + i * config.dim, count: config.dim)
        computeLogits(s, layersRun: Int(b.rowLayers[i]))
    }

    /// Logits of chunk rows `rows` into out ([rows.count × vocab]), for scoring only part of a chunk.
    public func batchLogits(rows: Range<Int>, _ b: BatchState, _ out: UnsafeMutablePointer<Float>) {
        let dim = config.dim
        guard !rows.isEmpty else { return }
        eachRow(rows.count, b) { r in let i = rows.lowerBound + r; self.rmsNorm(b.x + i * dim, self.outputNorm, b.xb + i * dim) }
        headRows(rows, b, out)
    }

    /// Whether chunk row i reads the screened head: b.screen is set and the row ran few enough layers.
    @inline(__always)
    func readsScreen(row i: Int, _ b: BatchState) -> Bool {
        b.screen != nil && ScreenedHead.usesScreen(layersRun: Int(b.rowLayers[i]), of: config.layers)
    }

    /// The head over the normed rows in b.xb into out (out's first row is rows.lowerBound): the
    /// exact head as one product unless every row reads the screen, then the screened head's
    /// logits for the rows that read it, computed as a decode step computes them (so a batch and
    /// token-by-token decoding agree).
    func headRows(_ rows: Range<Int>, _ b: BatchState, _ out: UnsafeMutablePointer<Float>) {
        let dim = config.dim, vocab = config.vocabSize
        if !rows.allSatisfy({ readsScreen(row: $0, b) }) { gemm(output, b.xb + rows.lowerBound * dim, rows.count, out, b) }
        guard let screen = b.screen else { return }
        for i in rows where readsScreen(row: i, b) {
            b.screenInput.quantize(b.xb + i * dim, count: dim)
            screen.run(b.screenInput, out + (i - rows.lowerBound) * vocab)
        }
    }

    /// Logits for every row of the chunk: out is [n × vocab]. Used by perplexity evaluation.
    public func batchLogitsAll(n: Int, _ b: BatchState, _ out: UnsafeMutablePointer<Float>) {
        let dim = config.dim
        for i in 0..<n { rmsNorm(b.x + i * dim, outputNorm, b.xb + i * dim) }
        headRows(0..<n, b, out)
    }
}

import BuddyCore
import Foundation

/// Static layer rankings measured on calibration text, for the pruning baselines.
public final class Calibrator {
    public let model: LanguageModel
    public let chunkSize: Int
    /// Scores chunks and owns the batch buffers and cache the measurements run in.
    let scorer: PerplexityEvaluator
    var batch: BatchState { scorer.batch }
    /// Stand-ins for the layers a candidate set skips (nil: plain skipping): SLEB then removes
    /// the layers whose stand-ins replace them best.
    public var standIns: StandIns? {
        get { scorer.standIns }
        set { scorer.standIns = newValue }
    }
    var cache: KVCache { scorer.cache }

    public init(model: LanguageModel, chunkSize: Int = 256, threads: Int = 2) {
        self.model = model
        self.chunkSize = chunkSize
        scorer = PerplexityEvaluator(model: model, contextSize: chunkSize, threads: threads)
    }

    func chunks(_ tokens: [Int32]) -> [ArraySlice<Int32>] {
        stride(from: 0, to: tokens.count - chunkSize + 1, by: chunkSize).map { tokens[$0..<$0 + chunkSize] }
    }

    /// ShortGPT's Block Influence: BI_l = 1 − mean over tokens of cos(x_in, x_out) of layer l.
    /// Returns BI for every layer (index = layer).
    public func blockInfluence(tokens: [Int32], progress: ((Int, Int) -> Void)? = nil) -> [Double] {
        let c = model.config
        var sums = [Double](repeating: 0, count: c.layers)
        var count = 0
        let parts = chunks(tokens)
        let n = chunkSize, dim = c.dim
        // Residual stream before the current layer, for every token of the chunk.
        var previous = [Float](repeating: 0, count: n * dim)
        for (ci, chunk) in parts.enumerated() {
            cache.truncate(to: 0)
            /// Layer l's influence from the stream before it (in `previous`) and after it (in b.x).
            func accumulate(_ l: Int) {
                previous.withUnsafeMutableBufferPointer { prev in
                    for t in 0..<n {
                        let a = prev.baseAddress! + t * dim, b = batch.x + t * dim
                        var dot = 0.0, na = 0.0, nb = 0.0
                        for i in 0..<dim { dot += Double(a[i] * b[i]); na += Double(a[i] * a[i]); nb += Double(b[i] * b[i]) }
                        sums[l] += 1 - dot / max((na * nb).squareRoot(), 1e-30)
                    }
                }
            }
            model.transformer.routedForward(chunk, start: 0, batch, cache, routing: .allLayers) { l in
                if l > 0 { accumulate(l - 1) }
                previous.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: self.batch.x, count: n * dim) }
            }
            accumulate(c.layers - 1)
            count += n
            progress?(ci + 1, parts.count)
        }
        return sums.map { $0 / Double(max(count, 1)) }
    }

    /// Routable layers ordered by Block Influence, most influential (most important) first.
    public func shortGPTRanking(tokens: [Int32], progress: ((Int, Int) -> Void)? = nil) throws -> StaticRanking {
        let bi = blockInfluence(tokens: tokens, progress: progress)
        let routable = Array(1..<model.config.layers - 1)
        let order = routable.sorted { bi[$0] > bi[$1] || (bi[$0] == bi[$1] && $0 < $1) }
        return try StaticRanking(name: "shortgpt", layers: model.config.layers, ranking: order)
    }

    /// Mean next-token NLL over all positions of the calibration chunks with `runs` layers.
    public func nll(tokens: [Int32], runs: [Bool], policy: KVPolicy = .mask) -> Double {
        var total = 0.0, count = 0
        for chunk in chunks(tokens) {
            let r = scorer.scoreChunk(chunk, runs: { runs[$0] }, policy: policy, firstScored: 0)
            total += r.nll
            count += r.count
        }
        return total / Double(max(count, 1))
    }

    /// SLEB-style greedy removal: repeatedly drop the routable layer whose removal raises the
    /// calibration NLL least. The ranking is the reverse of the removal order.
    ///
    /// Candidates share everything below themselves: per chunk the current model runs once,
    /// keeping the residual stream before every layer, and each candidate l restarts from the
    /// stream before l (the cache of layers below l is already right), so a round costs about
    /// half of what independent evaluations would.
    public func slebRanking(tokens: [Int32], progress: ((Int, Int, String) -> Void)? = nil) throws -> StaticRanking {
        let c = model.config, L = c.layers, n = chunkSize, dim = c.dim, vocab = c.vocabSize
        let t = model.transformer
        var runs = [Bool](repeating: true, count: L)
        var removed: [Int] = []
        let routable = L - 2
        let totalEvals = routable * (routable + 1) / 2 - 1
        var evals = 0
        let parts = chunks(tokens)
        // [L × n × dim] residual stream before each layer for one chunk
        var before = [Float](repeating: 0, count: L * n * dim)
        let logits = UnsafeMutablePointer<Float>.allocate(capacity: n * vocab)
        defer { logits.deallocate() }
        while removed.count < routable - 1 {
            let candidates = (1..<L - 1).filter { runs[$0] }
            var nll = [Int: Double](uniqueKeysWithValues: candidates.map { ($0, 0) })
            var count = 0
            for chunk in parts {
                let ids = Array(chunk)
                cache.truncate(to: 0)
                t.routedForward(chunk, start: 0, batch, cache, routing: .fixed(runs)) { l in
                    before.withUnsafeMutableBufferPointer { $0.baseAddress!.advanced(by: l * n * dim).update(from: self.batch.x, count: n * dim) }
                }
                for l in candidates {
                    // Restart at l from the stream kept before it, with l removed as well.
                    before.withUnsafeBufferPointer { batch.x.update(from: $0.baseAddress! + l * n * dim, count: n * dim) }
                    var without = runs
                    without[l] = false
                    t.routedForward(chunk, start: 0, batch, cache, routing: .fixed(without), fromLayer: l)
                    // Layer l is in the current model: give its cache entries back to later candidates.
                    for p in 0..<n { cache.setPresent(l, p, true) }
                    t.batchLogitsAll(n: n, batch, logits)
                    var s = 0.0
                    for j in 0..<n - 1 { s += LogProbabilities.negativeLogProb(logits + j * vocab, count: vocab, target: Int(ids[j + 1])) }
                    nll[l]! += s
                }
                count += n - 1
            }
            let best = candidates.min { nll[$0]! < nll[$1]! || (nll[$0]! == nll[$1]! && $0 < $1) }!
            evals += candidates.count
            progress?(min(evals, totalEvals), totalEvals, String(format: "removed %d (layer %d), nll %.3f", removed.count + 1, best, nll[best]! / Double(count)))
            runs[best] = false
            removed.append(best)
        }
        let last = (1..<L - 1).first { runs[$0] }!
        return try StaticRanking(name: "sleb", layers: L, ranking: [last] + removed.reversed())
    }
}

import BuddyCore
import CKernels
import Foundation

/// Training data for the Decision Module: for every scored position of a text chunk, the
/// routing context (as the module sees it at decode time) and how much each routable layer
/// matters there, measured by forward passes.
///
/// Importance of layer l at position t: KL(full ‖ skip_l) of the next-token distribution at t,
/// where skip_l runs the chunk with only layer l skipped (mask policy). Targets are
/// log(KL + 1e-4), standardised per layer, so the module learns where a layer matters more or
/// less than it does on average.
public struct RoutingExamples: Sendable {
    public var inputs: [[Float]] = []      // [examples][2·kvDim + dim] (budget features added later)
    public var targets: [[Float]] = []     // [examples][routable]
    public var count: Int { inputs.count }
    public init() {}
}

/// Mean and standard deviation of column d of rows.
public func columnStatistics(_ rows: [[Float]], _ d: Int) -> (mean: Double, std: Double) {
    var sum = 0.0, sq = 0.0
    for r in rows { let v = Double(r[d]); sum += v; sq += v * v }
    let n = Double(max(rows.count, 1))
    let mean = sum / n
    return (mean, max(0, sq / n - mean * mean).squareRoot())
}

public final class RouterTrainer {
    public let model: LanguageModel
    public let chunkSize: Int
    let scorer: PerplexityEvaluator
    /// [chunkSize × vocab] full-depth log-probabilities of the current chunk
    let fullLogProbs: UnsafeMutablePointer<Float>
    let logits: UnsafeMutablePointer<Float>

    public init(model: LanguageModel, chunkSize: Int = 256, threads: Int = 2) {
        self.model = model
        self.chunkSize = chunkSize
        scorer = PerplexityEvaluator(model: model, contextSize: chunkSize, threads: threads)
        fullLogProbs = .allocate(capacity: chunkSize * model.config.vocabSize)
        logits = .allocate(capacity: chunkSize * model.config.vocabSize)
    }
    deinit { fullLogProbs.deallocate(); logits.deallocate() }


    /// Measures one chunk; positions from `firstScored` on become examples.
    public func collect(chunk: ArraySlice<Int32>, firstScored: Int, into ex: inout RoutingExamples) {
        let c = model.config, t = model.transformer
        let n = chunk.count, vocab = c.vocabSize, dim = c.dim, L = c.layers
        precondition(n == chunkSize)
        let b = scorer.batch, cache = scorer.cache
        // Full depth, keeping the hidden states after layer 0 for the routing context.
        cache.truncate(to: 0)
        var inputs: [[Float]] = []
        t.routedForward(chunk, start: 0, b, cache) { l in
            // Before layer 1: b.x holds h0 and the cache layer 0's K/V, as a decode step sees them.
            if l == 1 { inputs = RoutingInput.rows(cache: cache, batch: b, positions: firstScored..<n, withHiddenState: true, dim: dim) }
        }
        t.batchLogitsAll(n: n, b, logits)
        for j in firstScored..<n { LogProbabilities.logSoftmax(logits + j * vocab, into: fullLogProbs + j * vocab, count: vocab) }
        var first = ex.count
        ex.inputs += inputs
        ex.targets += [[Float]](repeating: [Float](repeating: 0, count: L - 2), count: inputs.count)
        // One pass per routable layer with only that layer skipped.
        for l in 1..<L - 1 {
            cache.truncate(to: 0)
            var mask = t.fullDepthMask
            mask[l] = false
            t.routedForward(chunk, start: 0, b, cache, routing: .fixed(mask), policy: .mask)
            t.batchLogitsAll(n: n, b, logits)
            for j in firstScored..<n {
                let kl = LogProbabilities.divergence(referenceLogProbs: fullLogProbs + j * vocab, logits: logits + j * vocab, count: vocab)
                ex.targets[first + j - firstScored][l - 1] = Float(log(max(kl, 0) + 1e-4))
            }
        }
        first = ex.count
    }
}

/// Plain two-layer MLP regression with Adam, for the Decision Module's learned part.
public struct MLPTrainer {
    public let inputDim: Int, hidden: Int, outputs: Int
    public var w1: [Float], b1: [Float], w2: [Float], b2: [Float]
    var m: [[Float]], v: [[Float]]
    var step = 0
    public var learningRate: Float = 1e-3
    public var weightDecay: Float = 1e-4

    public init(inputDim: Int, hidden: Int, outputs: Int, seed: UInt64) {
        self.inputDim = inputDim; self.hidden = hidden; self.outputs = outputs
        var rng = SeededRNG(seed: seed)
        let s1 = (2 / Float(inputDim)).squareRoot(), s2 = (1 / Float(hidden)).squareRoot()
        w1 = (0..<hidden * inputDim).map { _ in (rng.nextUnitFloat() * 2 - 1) * s1 }
        b1 = [Float](repeating: 0, count: hidden)
        w2 = (0..<outputs * hidden).map { _ in (rng.nextUnitFloat() * 2 - 1) * s2 }
        b2 = [Float](repeating: 0, count: outputs)
        m = [w1, b1, w2, b2].map { [Float](repeating: 0, count: $0.count) }
        v = m
    }

    public func predict(_ x: [Float]) -> [Float] {
        var h = [Float](repeating: 0, count: hidden)
        forwardHidden(x, &h)
        return (0..<outputs).map { r in w2.withUnsafeBufferPointer { bk_dot_f32($0.baseAddress! + r * hidden, h, Int32(hidden)) } + b2[r] }
    }

    func forwardHidden(_ x: [Float], _ h: inout [Float]) {
        w1.withUnsafeBufferPointer { w in
            for j in 0..<hidden { h[j] = max(0, bk_dot_f32(w.baseAddress! + j * inputDim, x, Int32(inputDim)) + b1[j]) }
        }
    }

    /// One Adam step on a mini-batch; returns the batch's mean squared error.
    public mutating func train(batch xs: [[Float]], _ ys: [[Float]]) -> Float {
        var gw1 = [Float](repeating: 0, count: w1.count), gb1 = [Float](repeating: 0, count: hidden)
        var gw2 = [Float](repeating: 0, count: w2.count), gb2 = [Float](repeating: 0, count: outputs)
        var h = [Float](repeating: 0, count: hidden)
        var dh = [Float](repeating: 0, count: hidden)
        var loss: Float = 0
        for (x, y) in zip(xs, ys) {
            forwardHidden(x, &h)
            for j in 0..<hidden { dh[j] = 0 }
            for r in 0..<outputs {
                let out = w2.withUnsafeBufferPointer { bk_dot_f32($0.baseAddress! + r * hidden, h, Int32(hidden)) } + b2[r]
                let e = out - y[r]
                loss += e * e
                let d = 2 * e / Float(outputs)
                gb2[r] += d
                for j in 0..<hidden { gw2[r * hidden + j] += d * h[j]; dh[j] += d * w2[r * hidden + j] }
            }
            gw1.withUnsafeMutableBufferPointer { g0 in
                for j in 0..<hidden where h[j] > 0 {
                    gb1[j] += dh[j]
                    bk_axpy_f32(dh[j], x, g0.baseAddress! + j * inputDim, Int32(inputDim))
                }
            }
        }
        step += 1
        let n = Float(xs.count), c1 = 1 - powf(0.9, Float(step)), c2 = 1 - powf(0.999, Float(step))
        let lr = learningRate, wd = weightDecay
        func update(_ p: inout [Float], _ g: [Float], _ m: inout [Float], _ v: inout [Float]) {
            for i in p.indices {
                let gi = g[i] / n + wd * p[i]
                m[i] = 0.9 * m[i] + 0.1 * gi
                v[i] = 0.999 * v[i] + 0.001 * gi * gi
                p[i] -= lr * (m[i] / c1) / ((v[i] / c2).squareRoot() + 1e-8)
            }
        }
        update(&w1, gw1, &m[0], &v[0]); update(&b1, gb1, &m[1], &v[1])
        update(&w2, gw2, &m[2], &v[2]); update(&b2, gb2, &m[3], &v[3])
        return loss / (n * Float(outputs))
    }

    public func meanSquaredError(_ xs: [[Float]], _ ys: [[Float]]) -> Float {
        var s: Float = 0
        for (x, y) in zip(xs, ys) { for (a, b) in zip(predict(x), y) { s += (a - b) * (a - b) } }
        return s / Float(max(1, xs.count * outputs))
    }
}

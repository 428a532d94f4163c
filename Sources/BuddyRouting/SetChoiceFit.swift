import CBLAS
import CKernels
import Foundation

/// Fits the scorer of one Decision Module choice: m candidate layer sets, and for every
/// training position the routing input z (normalised, [d]) and what each candidate costs there
/// (KL from full depth when every token runs that set). The scorer is linear, s = W z + b, and
/// the set run is argmax s; it is fitted by minimising the expected cost under softmax(s),
///
///   loss = mean_t Σ_j softmax(s_t)_j · (cost_tj − min_j cost_tj) + λ/2 · ‖W‖²,
///
/// a smooth stand-in for the cost of the argmax (cost-sensitive multiclass regression): a
/// position where the sets differ little barely counts, one where a wrong set is expensive
/// counts a lot. Full-batch Adam from W = 0 with b set to favour the cheapest set on average,
/// so a scorer that learns nothing picks the best single set.
///
/// With `balance` β > 0 the loss adds β/2 · Σ_j (p̄_j − 1/m)², p̄ the mean of softmax(s) over
/// the positions: it keeps every candidate in use. The per-set costs are measured with one set
/// for every token, so they cannot see what mixing does; mixing near-equal sets token by token
/// leaves no layer's K/V stale at every position, which routed measurement shows can beat
/// either set (docs/TRAINING.md, "Mixing near-equal sets"). `balanceFrom` > 0 takes p̄ over the
/// positions from that index on only (the reply-set pair: chat, after the guarded prose).
public enum SetChoiceFit {
    public struct Scorer: Sendable, Equatable {
        public var weights: [Float]   // [m × d]
        public var bias: [Float]      // [m]
    }

    /// - inputs: [n][d] normalised routing inputs; costs: [n][m] per-position costs.
    public static func fit(inputs: [[Float]], costs: [[Double]], l2: Float, balance: Float = 0, balanceFrom: Int = 0, steps: Int = 300, learningRate: Float = 0.01) -> Scorer {
        let n = inputs.count, m = costs.first?.count ?? 0, d = inputs.first?.count ?? 0
        precondition(n > 0 && m > 1 && d > 0 && costs.count == n, "one cost per candidate at every position")
        let z = inputs.flatMap { $0 }                                     // [n × d]
        // Regrets: the cheapest set at a position costs 0 there.
        var regret = [Float](repeating: 0, count: n * m)
        var meanCost = [Double](repeating: 0, count: m)
        for t in 0..<n {
            let best = costs[t].min()!
            for j in 0..<m { regret[t * m + j] = Float(costs[t][j] - best); meanCost[j] += costs[t][j] / Double(n) }
        }
        var w = [Float](repeating: 0, count: m * d)
        // Start at "always the cheapest set on average" (one nat of margin).
        let cheapest = meanCost.indices.min { meanCost[$0] < meanCost[$1] }!
        var b = (0..<m).map { $0 == cheapest ? Float(1) : 0 }
        var s = [Float](repeating: 0, count: n * m), g = s
        var gw = w, gb = b
        var (mw, vw, mb, vb) = (w, w, b.map { _ in Float(0) }, b.map { _ in Float(0) })
        let (beta1, beta2, eps): (Float, Float, Float) = (0.9, 0.999, 1e-8)
        for step in 1...max(steps, 1) {
            // s = z wᵀ + b
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(m), Int32(d), 1, z, Int32(d), w, Int32(d), 0, &s, Int32(m))
            for t in 0..<n {
                var top = -Float.infinity
                for j in 0..<m { s[t * m + j] += b[j]; top = max(top, s[t * m + j]) }
                var sum: Float = 0
                for j in 0..<m { s[t * m + j] = exp(s[t * m + j] - top); sum += s[t * m + j] }
                var expected: Float = 0
                for j in 0..<m { s[t * m + j] /= sum; expected += s[t * m + j] * regret[t * m + j] }
                // d(expected cost)/d score_j = p_j (regret_j − expected), averaged over positions.
                for j in 0..<m { g[t * m + j] = s[t * m + j] * (regret[t * m + j] - expected) / Float(n) }
            }
            if balance > 0 {
                // d/ds_tj of β/2 Σ_i (p̄_i − 1/m)² = β/n · p_tj (dev_j − Σ_i p_ti dev_i), dev = p̄ − 1/m.
                let first = min(max(balanceFrom, 0), n - 1), counted = Float(n - first)
                var dev = [Float](repeating: -1 / Float(m), count: m)
                for t in first..<n { for j in 0..<m { dev[j] += s[t * m + j] / counted } }
                for t in first..<n {
                    var mean: Float = 0
                    for i in 0..<m { mean += s[t * m + i] * dev[i] }
                    for j in 0..<m { g[t * m + j] += balance / counted * s[t * m + j] * (dev[j] - mean) }
                }
            }
            // gw = gᵀ z + λ w,  gb = Σ_t g_t
            gw = w
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(d), Int32(n), 1, g, Int32(m), z, Int32(d), l2, &gw, Int32(d))
            for j in 0..<m { gb[j] = 0 }
            for t in 0..<n { for j in 0..<m { gb[j] += g[t * m + j] } }
            let c1 = 1 - pow(beta1, Float(step)), c2 = 1 - pow(beta2, Float(step))
            for i in 0..<(m * d) {
                mw[i] = beta1 * mw[i] + (1 - beta1) * gw[i]
                vw[i] = beta2 * vw[i] + (1 - beta2) * gw[i] * gw[i]
                w[i] -= learningRate * (mw[i] / c1) / ((vw[i] / c2).squareRoot() + eps)
            }
            for j in 0..<m {
                mb[j] = beta1 * mb[j] + (1 - beta1) * gb[j]
                vb[j] = beta2 * vb[j] + (1 - beta2) * gb[j] * gb[j]
                b[j] -= learningRate * (mb[j] / c1) / ((vb[j] / c2).squareRoot() + eps)
            }
        }
        return Scorer(weights: w, bias: b)
    }

    /// The candidate the scorer picks for each input (argmax of w_j · z + b_j, first on ties),
    /// with the dot product `DecisionModule` decides with, so the estimate is of its choices.
    public static func picks(_ scorer: Scorer, inputs: [[Float]]) -> [Int] {
        let m = scorer.bias.count
        return scorer.weights.withUnsafeBufferPointer { w in
            inputs.map { z in
                var best = 0, bestScore = -Float.infinity
                for j in 0..<m {
                    let s = bk_dot_f32(w.baseAddress! + j * z.count, z, Int32(z.count)) + scorer.bias[j]
                    if s > bestScore { bestScore = s; best = j }
                }
                return best
            }
        }
    }

    /// Mean cost of running each position's picked candidate.
    public static func meanCost(picks: [Int], costs: [[Double]]) -> Double {
        zip(picks, costs).reduce(0) { $0 + $1.1[$1.0] } / Double(max(picks.count, 1))
    }
}

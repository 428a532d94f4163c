import CKernels
import Foundation

/// Log-probabilities and divergences of logit rows, in one place for every evaluator,
/// search and training step. Sums run in double precision after subtracting the row's
/// maximum, so long vocabularies lose nothing to rounding.
public enum LogProbabilities {
    /// log Σ exp(x[i]).
    public static func logSumExp(_ x: UnsafePointer<Float>, count: Int) -> Double {
        var m = -Float.infinity
        for i in 0..<count where x[i] > m { m = x[i] }
        var s = 0.0
        for i in 0..<count { s += exp(Double(x[i] - m)) }
        return Double(m) + log(s)
    }

    /// The entropy of softmax(x) in nats: log z − Σ q·(x − m) with z = Σ exp(x − m), in one
    /// pass after the maximum m (a decode step's steering reads it every token, so it runs in
    /// the kernel `bk_entropy`: about 0.5 ms in scalar double over a 49,152-token vocabulary
    /// cost 10 % of decode speed at 0.5; its scalar twin is `bk_entropy_ref`).
    public static func entropy(_ x: UnsafePointer<Float>, count: Int) -> Double {
        bk_entropy(x, Int32(count))
    }

    /// −log softmax(logits)[target].
    public static func negativeLogProb(_ logits: UnsafePointer<Float>, count: Int, target: Int) -> Double {
        var m = -Float.infinity
        for i in 0..<count where logits[i] > m { m = logits[i] }
        var sum = 0.0
        for i in 0..<count { sum += exp(Double(logits[i] - m)) }
        return log(sum) - Double(logits[target] - m)
    }

    /// out[i] = log softmax(x)[i].
    public static func logSoftmax(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count: Int) {
        let lse = logSumExp(x, count: count)
        for i in 0..<count { out[i] = Float(Double(x[i]) - lse) }
    }

    /// KL(p ‖ softmax(logits)) for a reference row given as log-probabilities. Terms with
    /// p < e^-30 add nothing measurable; their exp is skipped.
    public static func divergence(referenceLogProbs p: UnsafePointer<Float>, logits: UnsafePointer<Float>, count: Int) -> Double {
        let lse = logSumExp(logits, count: count)
        var kl = 0.0
        for i in 0..<count {
            let lp = Double(p[i])
            if lp > -30 { kl += exp(lp) * (lp - (Double(logits[i]) - lse)) }
        }
        return kl
    }

    /// The same divergence for a reference kept as probabilities p and its Σ p log p (what a
    /// search that scores thousands of candidates against one reference precomputes):
    /// KL = Σ p log p − Σ p·logit + logsumexp(logits).
    public static func divergence(referenceProbabilities p: UnsafePointer<Float>, negativeEntropy: Double,
                                  logits row: UnsafePointer<Float>, count: Int) -> Double {
        var m = -Float.infinity
        for j in 0..<count where row[j] > m { m = row[j] }
        var z = 0.0, cross = 0.0
        for j in 0..<count { z += Double(expf(row[j] - m)); cross += Double(p[j] * row[j]) }
        return negativeEntropy - (cross - Double(m) - log(z))
    }

    /// Probabilities of a row (into out) and their Σ p log p.
    public static func probabilities(_ logits: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count: Int) -> Double {
        let lse = logSumExp(logits, count: count)
        var h = 0.0
        for i in 0..<count {
            let lp = Double(logits[i]) - lse, q = exp(lp)
            out[i] = Float(q)
            h += q * lp
        }
        return h
    }
}

import CKernels
import Foundation

/// Weighted logistic regression by full-batch gradient descent (Adam, L2 `decay` on the
/// weights, not the bias; a fixed number of steps from zero, so a fit is reproducible).
/// Minimises Σ_i exampleWeight[i] · logloss(σ(w·x_i + b), label[i]) + decay/2 · |w|².
/// The context gate and the token switches are both fitted with it.
enum LogisticRegression {
    static func fit(inputs: [[Float]], labels: [Float], exampleWeights: [Float],
                    steps: Int, learningRate: Float, decay: Float) -> (weights: [Float], bias: Float) {
        precondition(inputs.count == labels.count && labels.count == exampleWeights.count, "one label and weight per input")
        let d = inputs.first?.count ?? 0
        var w = [Float](repeating: 0, count: d), bias: Float = 0
        var mw = w, vw = w, mb: Float = 0, vb: Float = 0
        var gw = w
        let beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8
        for step in 1...max(1, steps) {
            for i in 0..<d { gw[i] = decay * w[i] }
            var gb: Float = 0
            for (i, x) in inputs.enumerated() where exampleWeights[i] != 0 {
                let s = bias + dot(w, x)
                let g = (1 / (1 + exp(-s)) - labels[i]) * exampleWeights[i]
                for j in 0..<d { gw[j] += g * x[j] }
                gb += g
            }
            let c1 = 1 - pow(beta1, Float(step)), c2 = 1 - pow(beta2, Float(step))
            for i in 0..<d {
                mw[i] = beta1 * mw[i] + (1 - beta1) * gw[i]
                vw[i] = beta2 * vw[i] + (1 - beta2) * gw[i] * gw[i]
                w[i] -= learningRate * (mw[i] / c1) / ((vw[i] / c2).squareRoot() + eps)
            }
            mb = beta1 * mb + (1 - beta1) * gb
            vb = beta2 * vb + (1 - beta2) * gb * gb
            bias -= learningRate * (mb / c1) / ((vb / c2).squareRoot() + eps)
        }
        return (w, bias)
    }

    static func dot(_ a: [Float], _ b: [Float]) -> Float {
        a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in bk_dot_f32(ap.baseAddress!, bp.baseAddress!, Int32(min(ap.count, bp.count))) } }
    }
}

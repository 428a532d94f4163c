import BuddyCore
import Foundation

/// Fits token switches: per table and k, a linear test on the Decision Module's normalised
/// input that sends a token to an alternative set when that set is expected to serve it
/// better than the table's set.
///
/// Training data are per-token costs measured by forward passes: for every scored position of
/// the training sequences, the KL from full depth when every token runs the table's set
/// (`base`) and when every token runs the alternative. The test is a logistic regression whose
/// label is "the alternative had the lower KL here" and whose example weight is the size of
/// the difference, so that positions where the two sets are nearly equal hardly count: its
/// loss bounds the expected KL of the switched choice (cost-sensitive classification).
public enum TokenSwitchTraining {
    /// The module's normalised input z ([inputDim]; the budget part left at zero, since a
    /// switch serves one k) at every scored position of `sequences`, in order. Only layer 0 runs.
    public static func inputs(model: LanguageModel, module: DecisionModule, sequences: [SearchSequence],
                              scratch: PerplexityEvaluator) -> [[Float]] {
        let budgetPart = [Float](repeating: 0, count: BudgetEncoding.count)
        return sequences.flatMap { s in
            ContextGateTraining.pooledInputs(model: model, tokens: s.tokens, positions: s.scored, withHiddenState: true, scratch: scratch)
                .map { ContextGateTraining.normalised($0, module: module) + budgetPart }
        }
    }

    public struct Fit: Sendable {
        public var weights: [Float]   // [inputDim]
        public var bias: Float
    }

    /// Cost-weighted logistic regression: example i has label `alternative[i] < base[i]` and
    /// weight |alternative[i] − base[i]|.
    public static func fit(inputs: [[Float]], base: [Double], alternative: [Double],
                           steps: Int = 300, learningRate: Float = 0.02, decay: Float = 1e-2) -> Fit {
        precondition(inputs.count == base.count && base.count == alternative.count, "one cost pair per input")
        let d = inputs.first?.count ?? 0, n = inputs.count
        let never = Fit(weights: [Float](repeating: 0, count: d), bias: -1)
        guard n > 0, d > 0 else { return never }
        let gain = zip(base, alternative).map { Float($0 - $1) }       // > 0: the alternative is better
        let total = gain.reduce(0) { $0 + abs($1) }
        guard total > 0 else { return never }
        let (w, bias) = LogisticRegression.fit(inputs: inputs, labels: gain.map { $0 > 0 ? 1 : 0 }, exampleWeights: gain.map { abs($0) / total },
                                               steps: steps, learningRate: learningRate, decay: decay)
        return Fit(weights: w, bias: bias)
    }

    /// Mean cost of the switched choice and the share of positions sent to the alternative.
    public static func switchedCost(_ fit: Fit, inputs: [[Float]], base: [Double], alternative: [Double]) -> (cost: Double, share: Double) {
        var cost = 0.0, on = 0
        for (i, x) in inputs.enumerated() {
            if fit.bias + LogisticRegression.dot(fit.weights, x) > 0 { cost += alternative[i]; on += 1 } else { cost += base[i] }
        }
        let n = Double(max(inputs.count, 1))
        return (cost / n, Double(on) / n)
    }
}

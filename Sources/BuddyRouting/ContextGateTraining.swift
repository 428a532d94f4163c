import BuddyCore
import Foundation

/// Fits a Decision Module's context gate and picks its two tables of layer sets.
///
/// The gate is a logistic regression on the module's normalised pooled part of the input
/// (mean K and V of layer 0 over the context so far); h0 and the budget get zero weight, so the
/// gate follows the kind of context, not the token. Its label is "conversation" (1) against
/// "running prose" (0). Each table is chosen per k on validation data of its kind, among
/// candidate routers' sets, by mean KL from full depth.
public enum ContextGateTraining {
    /// The pooled inputs (mean K0, mean V0: [2·kvDim], not normalised) at positions
    /// from `first` on, every `stride`-th, of `tokens` (layer 0 is all it runs).
    public static func pooledInputs(model: LanguageModel, tokens: [Int32], first: Int, stride: Int,
                                    scratch: PerplexityEvaluator) -> [[Float]] {
        pooledInputs(model: model, tokens: tokens, positions: Swift.stride(from: first, to: tokens.count, by: max(1, stride)), scratch: scratch)
    }

    /// The Decision Module's raw input at `positions` (ascending) of `tokens`, as a decode step
    /// there would see it: mean K0 and mean V0 over the context through that position
    /// ([2·kvDim]), followed by that token's h0 ([dim]) when `withHiddenState`; not normalised,
    /// no budget part. Layer 0 is all it runs.
    public static func pooledInputs(model: LanguageModel, tokens: [Int32], positions: some Sequence<Int>, withHiddenState: Bool = false,
                                    scratch: PerplexityEvaluator) -> [[Float]] {
        let t = model.transformer, b = scratch.batch, cache = scratch.cache
        let n = tokens.count
        precondition(n <= b.maxTokens && n <= cache.capacity, "sequence longer than the scratch batch")
        cache.truncate(to: 0)
        t.routedForward(tokens[...], start: 0, b, cache, endLayer: 1)
        return RoutingInput.rows(cache: cache, batch: b, positions: positions, withHiddenState: withHiddenState, dim: model.config.dim)
    }

    public struct GateFit: Sendable {
        public var gate: (weights: [Float], bias: Float)
        public var trainAccuracy: Double
    }

    /// Logistic regression on inputs normalised as `module` normalises them; the positive class
    /// weighs `positiveWeight` in all, the negative class the rest (equally by default).
    public static func fitGate(module: DecisionModule, positives: [[Float]], negatives: [[Float]], positiveWeight: Float = 0.5,
                               steps: Int = 400, learningRate: Float = 0.05, decay: Float = 1e-3) -> GateFit {
        let d = 2 * module.kvDim, inDim = module.inputDim
        let xs = (positives + negatives).map { normalised($0, module: module) }
        let ys = [Float](repeating: 1, count: positives.count) + [Float](repeating: 0, count: negatives.count)
        let weightOf: [Float] = [(1 - positiveWeight) / Float(max(negatives.count, 1)), positiveWeight / Float(max(positives.count, 1))]
        let (w, bias) = LogisticRegression.fit(inputs: xs, labels: ys, exampleWeights: ys.map { weightOf[Int($0)] },
                                               steps: steps, learningRate: learningRate, decay: decay)
        var full = [Float](repeating: 0, count: inDim)
        for i in 0..<d { full[i] = w[i] }
        let gate = (weights: full, bias: bias)
        let accuracy = balancedAccuracy(gate: gate, module: module, positives: positives, negatives: negatives)
        return GateFit(gate: gate, trainAccuracy: accuracy)
    }

    /// A raw input (a prefix of the module's input: [2·kvDim] pooled, optionally h0) normalised
    /// as the module normalises that part of its input.
    static func normalised(_ x: [Float], module: DecisionModule) -> [Float] {
        let mean = module.weights.inputMean, scale = module.weights.inputScale
        return x.indices.map { (x[$0] - mean[$0]) * scale[$0] }
    }

    /// Mean of the two classes' hit rates for a gate on raw pooled inputs.
    public static func balancedAccuracy(gate: (weights: [Float], bias: Float), module: DecisionModule,
                                        positives: [[Float]], negatives: [[Float]]) -> Double {
        let r = hitRates(gate: gate, module: module, positives: positives, negatives: negatives)
        return (r.positives + r.negatives) / 2
    }

    /// The share of positives the gate turns on and the share of negatives it leaves off.
    public static func hitRates(gate: (weights: [Float], bias: Float), module: DecisionModule,
                                positives: [[Float]], negatives: [[Float]]) -> (positives: Double, negatives: Double) {
        func on(_ x: [Float]) -> Bool {
            let z = normalised(x, module: module)
            var s = gate.bias
            for i in 0..<z.count { s += gate.weights[i] * z[i] }
            return s > 0
        }
        let tp = Double(positives.filter(on).count) / Double(max(positives.count, 1))
        let tn = Double(negatives.filter { !on($0) }.count) / Double(max(negatives.count, 1))
        return (tp, tn)
    }

    /// For each k in `ks`, the candidate set with the lowest mean KL from full depth on
    /// `search`'s sequences. candidates[c][k] is candidate c's set of k routable layers.
    /// Returns per k the chosen candidate's index and every candidate's KL (sets shared by
    /// several candidates are evaluated once).
    public static func chooseSets(search: LayerSetSearch, candidates: [[Int: [Int]]], ks: [Int],
                                  progress: ((Int) -> Void)? = nil) -> [Int: (chosen: Int, kl: [Double])] {
        let L = search.model.config.layers
        var memo: [[Int]: Double] = [:]
        var result: [Int: (chosen: Int, kl: [Double])] = [:]
        var done = 0
        for k in ks {
            var kls: [Double] = []
            for c in candidates {
                guard let set = c[k]?.sorted() else { kls.append(.infinity); continue }
                if let v = memo[set] { kls.append(v); continue }
                let v = search.objective(LayerBudget.mask(layers: L, chosen: set))
                memo[set] = v
                kls.append(v)
                done += 1
                progress?(done)
            }
            let best = kls.indices.min { kls[$0] < kls[$1] || (kls[$0] == kls[$1] && $0 < $1) }!
            result[k] = (best, kls)
        }
        return result
    }

    /// The set a router runs with k routable layers when that choice depends on k alone.
    public static func sets(of selector: BudgetedLayerSelector, routable: Int) -> [Int: [Int]] {
        var out: [Int: [Int]] = [:]
        for k in 1...routable {
            guard let m = Routers.fixedMask(selector, budget: Double(k) / Double(routable)) else { continue }
            out[k] = (1...routable).filter { m[$0] }
        }
        return out
    }
}

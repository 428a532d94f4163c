import BuddyCore
import CKernels
import Foundation

/// The learned router: a two-layer MLP from the routing context to one score per routable
/// layer, plus a per-layer prior score, then a deterministic top-k under the budget.
///
///   input  x = [mean K0 (kvDim), mean V0 (kvDim), h0 (dim), budget features (4)]   (inputDim)
///   z      = (x - inputMean) * inputScale                                          (inputDim)
///   hidden = relu(W1 z + b1)                                                       (hidden)
///   score  = W2 hidden + b2 + priorWeight * prior(k)                               (routable)
///
/// prior(k) is one row of `priorByCount` when the module has budget-specific layer sets
/// (row k−1 for k routable layers kept: the set found by `LayerSetSearch`), else the single
/// ranking prior. With W2 = 0 and b2 = 0 the scores are the prior alone, so a module
/// initialised from a static ranking (or from per-budget sets) makes exactly that choice.
/// A context gate (optional) picks a second table for conversations; a token switch
/// (optional, per k and table) runs an alternative set for the tokens its linear test picks.
public final class DecisionModule: BudgetedLayerSelector, RowwiseLayerSelector, @unchecked Sendable {
    public struct Weights: Sendable, Equatable {
        public var inputMean: [Float]    // [inputDim]
        public var inputScale: [Float]   // [inputDim]
        public var w1: [Float]           // [hidden × inputDim]
        public var b1: [Float]           // [hidden]
        public var w2: [Float]           // [routable × hidden]
        public var b2: [Float]           // [routable]
        public var prior: [Float]        // [routable]
        public var priorWeight: Float
        public var priorByCount: [Float]? // [routable (k = 1...routable) × routable], optional
        public var gate: ContextGate?
        public var tokenSwitches: [TokenSwitch]

        public init(inputMean: [Float], inputScale: [Float], w1: [Float], b1: [Float], w2: [Float], b2: [Float], prior: [Float], priorWeight: Float,
                    priorByCount: [Float]? = nil, gate: ContextGate? = nil, tokenSwitches: [TokenSwitch] = []) {
            self.inputMean = inputMean; self.inputScale = inputScale
            self.w1 = w1; self.b1 = b1; self.w2 = w2; self.b2 = b2
            self.prior = prior; self.priorWeight = priorWeight; self.priorByCount = priorByCount
            self.gate = gate
            self.tokenSwitches = tokenSwitches
        }
    }

    /// A per-token choice between the table's set for `kept` layers and one `alternative`
    /// set of the same size: `weights · z + bias > 0` (z the normalised input, so the newest
    /// token's h0 counts as well as the pooled context) runs the alternative for this token.
    /// Different tokens are served best by different layers (docs/TRAINING.md); a switch is
    /// trained on which of its two sets gives the lower KL from full depth, token by token.
    public struct TokenSwitch: Sendable, Equatable {
        public var kept: Int              // routable layers kept (the row of the table it refines)
        public var conversation: Bool     // refines the context gate's table, else the module's own
        public var alternative: [Int]     // [kept] routable layers (1...layers-2), ascending
        public var weights: [Float]       // [inputDim]
        public var bias: Float
        public init(kept: Int, conversation: Bool, alternative: [Int], weights: [Float], bias: Float) {
            self.kept = kept; self.conversation = conversation; self.alternative = alternative
            self.weights = weights; self.bias = bias
        }
    }

    /// A second table of layer sets and a linear test on the normalised input that says when
    /// to use it: `weights · z + bias > 0` picks `priorByCount` here instead of the module's
    /// own. Trained to tell conversation (ChatML turns) from running prose by the pooled
    /// first-layer cache, it lets one module keep different sets for the two kinds of context.
    public struct ContextGate: Sendable, Equatable {
        public var weights: [Float]       // [inputDim]
        public var bias: Float
        public var priorByCount: [Float]  // [routable × routable]
        public init(weights: [Float], bias: Float, priorByCount: [Float]) {
            self.weights = weights; self.bias = bias; self.priorByCount = priorByCount
        }
    }

    public let name: String
    public let layers: Int
    public let dim: Int
    public let kvDim: Int
    public let hidden: Int
    public var routable: Int { layers - 2 }
    public var inputDim: Int { 2 * kvDim + dim + BudgetEncoding.count }
    public var weights: Weights
    public var budget: Double = 1
    /// Re-decide every N decode steps (1 = every token, as the paper does).
    public var rerouteEvery = 1
    /// The scores of the last decision (a copy of the module's buffer once read).
    public var lastScores: [Float]? { decisions > 0 ? scores : nil }
    /// Seconds spent deciding (context pooling + MLP + top-k), for overhead reports.
    public private(set) var routingSeconds = 0.0
    public private(set) var decisions = 0

    public private(set) var pooled: PooledContext
    /// Whether maskBuffer holds a decision that may be kept (not after a rewind or reset).
    private var hasDecision = false
    private var stepsSinceDecision = 0
    // Scratch buffers: nothing is allocated per token.
    private var input: [Float]
    private var z: [Float]
    private var h: [Float]
    private var scores: [Float]
    /// [layers] the last decision's mask, rewritten in place (the caller copies it out).
    private var maskBuffer: [Bool]

    public init(name: String = "buddy", layers: Int, dim: Int, kvDim: Int, hidden: Int, weights: Weights) throws {
        self.name = name
        self.layers = layers
        self.dim = dim
        self.kvDim = kvDim
        self.hidden = hidden
        self.weights = weights
        pooled = PooledContext(kvDim: kvDim)
        let inDim = 2 * kvDim + dim + BudgetEncoding.count
        input = [Float](repeating: 0, count: inDim)
        z = input
        h = [Float](repeating: 0, count: hidden)
        scores = [Float](repeating: 0, count: layers - 2)
        maskBuffer = [Bool](repeating: true, count: layers)
        try validate()
    }

    /// A module whose decisions equal a static ranking's (W2 = 0, prior from the ranking).
    public convenience init(prior ranking: StaticRanking, dim: Int, kvDim: Int, hidden: Int = 64, seed: UInt64 = 0) throws {
        let layers = ranking.layers, routable = layers - 2
        let inDim = 2 * kvDim + dim + BudgetEncoding.count
        var prior = [Float](repeating: 0, count: routable)
        for (rank, layer) in ranking.ranking.enumerated() { prior[layer - 1] = Float(routable - rank) / Float(routable) }
        var rng = SeededRNG(seed: seed)
        let s = 1 / Float(inDim).squareRoot()
        let w1 = (0..<hidden * inDim).map { _ in (rng.nextUnitFloat() * 2 - 1) * s }
        try self.init(layers: layers, dim: dim, kvDim: kvDim, hidden: hidden, weights: Weights(
            inputMean: [Float](repeating: 0, count: inDim), inputScale: [Float](repeating: 1, count: inDim),
            w1: w1, b1: [Float](repeating: 0, count: hidden),
            w2: [Float](repeating: 0, count: routable * hidden), b2: [Float](repeating: 0, count: routable),
            prior: prior, priorWeight: 1))
    }

    func validate() throws {
        let w = weights, inDim = inputDim
        func check(_ name: String, _ a: [Float], _ n: Int) throws {
            guard a.count == n else { throw RoutingError.badRouterFile(path: self.name, reason: "\(name) has \(a.count) values, expected \(n)") }
            guard a.allSatisfy({ $0.isFinite }) else { throw RoutingError.badRouterFile(path: self.name, reason: "\(name) contains NaN or infinity") }
        }
        guard layers >= 3, hidden >= 1, hidden <= 4096, dim >= 1, kvDim >= 1 else {
            throw RoutingError.badRouterFile(path: name, reason: "absurd dimensions (layers \(layers), hidden \(hidden), dim \(dim), kvDim \(kvDim))")
        }
        try check("input_mean", w.inputMean, inDim)
        try check("input_scale", w.inputScale, inDim)
        try check("w1", w.w1, hidden * inDim)
        try check("b1", w.b1, hidden)
        try check("w2", w.w2, routable * hidden)
        try check("b2", w.b2, routable)
        try check("prior", w.prior, routable)
        if let t = w.priorByCount { try check("prior_by_count", t, routable * routable) }
        if let g = w.gate {
            try check("context_gate.weights", g.weights, inDim)
            try check("context_gate.prior_by_count", g.priorByCount, routable * routable)
            guard g.bias.isFinite else { throw RoutingError.badRouterFile(path: name, reason: "context_gate.bias is not finite") }
        }
        var seen = Set<[Int]>()
        for (i, t) in w.tokenSwitches.enumerated() {
            let field = "token_switches[\(i)]"
            guard (1...routable).contains(t.kept) else { throw RoutingError.badRouterFile(path: name, reason: "\(field).kept \(t.kept) is outside 1...\(routable)") }
            guard t.alternative.count == t.kept, t.alternative == t.alternative.sorted(), Set(t.alternative).count == t.kept,
                  t.alternative.allSatisfy({ (1...routable).contains($0) }) else {
                throw RoutingError.badRouterFile(path: name, reason: "\(field).alternative must be \(t.kept) distinct routable layers in ascending order")
            }
            try check("\(field).weights", t.weights, inDim)
            guard t.bias.isFinite else { throw RoutingError.badRouterFile(path: name, reason: "\(field).bias is not finite") }
            guard !t.conversation || w.gate != nil else { throw RoutingError.badRouterFile(path: name, reason: "\(field) refines the conversation table of a module without a context gate") }
            guard seen.insert([t.kept, t.conversation ? 1 : 0]).inserted else {
                throw RoutingError.badRouterFile(path: name, reason: "\(field) repeats a switch for k = \(t.kept)")
            }
        }
        guard w.priorWeight.isFinite else { throw RoutingError.badRouterFile(path: name, reason: "prior_weight is not finite") }
    }

    /// Scores of the routable layers for a context (exposed for training and tests).
    /// `context` is [inputDim] without the budget part filled in; the budget is written here.
    public func score(hiddenState: UnsafePointer<Float>, budget: Double) -> [Float] {
        input.withUnsafeMutableBufferPointer { inp in
            RoutingInput.write(pooled: pooled, hiddenState: hiddenState, dim: dim, into: inp.baseAddress!)
            BudgetEncoding.write(budget, into: inp.baseAddress! + 2 * kvDim + dim)
        }
        return forward(input, kept: LayerBudget.routableCount(budget: budget, layers: layers))
    }

    /// The prior scores used when `kept` routable layers run (the gate's table when `gated`).
    public func priorScores(kept: Int, gated: Bool = false) -> ArraySlice<Float> {
        let k = min(max(kept, 1), routable)
        if gated, let g = weights.gate { return g.priorByCount[((k - 1) * routable)..<(k * routable)] }
        guard let t = weights.priorByCount else { return weights.prior[...] }
        return t[((k - 1) * routable)..<(k * routable)]
    }

    /// Whether the context gate picks its table for the normalised input z (false without a gate).
    func gateIsOn(_ z: [Float]) -> Bool {
        guard let g = weights.gate else { return false }
        var s = g.bias
        for i in 0..<z.count { s += g.weights[i] * z[i] }
        return s > 0
    }

    /// Whether the gate picked its table at the last decision (nil without a gate).
    public private(set) var lastGateOn: Bool?
    /// Whether a token switch ran its alternative set at the last decision.
    public private(set) var lastSwitched = false
    public var layerSetLabel: String? {
        guard let on = lastGateOn else { return lastSwitched ? "token switch" : nil }
        return (on ? "conversation sets" : "prose sets") + (lastSwitched ? ", token switch" : "")
    }

    /// The alternative set of the switch for (kept, table) when its test passes on z.
    func switchedSet(_ z: [Float], kept: Int, conversation: Bool) -> [Int]? {
        for t in weights.tokenSwitches where t.kept == kept && t.conversation == conversation {
            // The same dot product the switch was fitted and measured with.
            return t.bias + LogisticRegression.dot(t.weights, z) > 0 ? t.alternative : nil
        }
        return nil
    }

    /// The MLP on a full input vector, plus the prior for `kept` layers.
    public func forward(_ x: [Float], kept: Int) -> [Float] {
        let inDim = inputDim, w = weights
        for i in 0..<inDim { z[i] = (x[i] - w.inputMean[i]) * w.inputScale[i] }
        let gated = gateIsOn(z)
        if w.gate != nil { lastGateOn = gated }
        let prior = priorScores(kept: kept, gated: gated)
        z.withUnsafeBufferPointer { zp in
            w.w1.withUnsafeBufferPointer { w1 in
                for j in 0..<hidden {
                    h[j] = max(0, bk_dot_f32(w1.baseAddress! + j * inDim, zp.baseAddress!, Int32(inDim)) + w.b1[j])
                }
            }
        }
        h.withUnsafeBufferPointer { hp in
            w.w2.withUnsafeBufferPointer { w2 in
                for r in 0..<routable {
                    scores[r] = bk_dot_f32(w2.baseAddress! + r * hidden, hp.baseAddress!, Int32(hidden)) + w.b2[r] + w.priorWeight * prior[prior.startIndex + r]
                }
            }
        }
        lastSwitched = false
        if !w.tokenSwitches.isEmpty, let alternative = switchedSet(z, kept: min(max(kept, 1), routable), conversation: gated) {
            // Lift the alternative's layers far above the rest, so the top k are exactly its set.
            for layer in alternative { scores[layer - 1] += 1e4 }
            lastSwitched = true
        }
        return scores
    }

    public func decide(hiddenState: UnsafePointer<Float>, cache: KVCache, through end: Int) -> [Bool] {
        let t0 = DispatchTime.now().uptimeNanoseconds
        pooled.update(cache: cache, through: end)
        _ = score(hiddenState: hiddenState, budget: budget)
        let k = LayerBudget.routableCount(budget: budget, layers: layers)
        LayerBudget.writeTopKMask(scores, k: k, into: &maskBuffer)
        routingSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        decisions += 1
        return maskBuffer
    }

    public func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] {
        selectLayers(position: position, hiddenState: state.x, cache: cache)
    }

    func selectLayers(position: Int, hiddenState: UnsafePointer<Float>, cache: KVCache) -> [Bool] {
        // A rewound cache rewrote positions the sums already hold: rebuild them.
        if position < pooled.count { pooled.reset(); hasDecision = false }
        let k = LayerBudget.routableCount(budget: budget, layers: layers)
        // Between re-decisions keep the last set, unless the budget moved.
        if hasDecision, stepsSinceDecision + 1 < rerouteEvery, Session.count(maskBuffer) == k + 2 {
            stepsSinceDecision += 1
            pooled.update(cache: cache, through: position + 1)
            return maskBuffer
        }
        stepsSinceDecision = 0
        let m = decide(hiddenState: hiddenState, cache: cache, through: position + 1)
        hasDecision = true
        return m
    }

    public func selectLayers(rowsFrom chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [[Bool]] {
        // Row i's hidden state after layer 0 is what a decode step at chunkStart+i would see,
        // and the pooled cache through that position is the same: the decisions are equal.
        var rows: [[Bool]] = []
        rows.reserveCapacity(count)
        for i in 0..<count {
            rows.append(selectLayers(position: chunkStart + i, hiddenState: batch.x + i * dim, cache: cache))
        }
        return rows
    }

    public func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool] {
        // One decision per prompt chunk, from the chunk's last token and everything pooled so far.
        if chunkStart < pooled.count { pooled.reset() }
        let m = decide(hiddenState: batch.x + (count - 1) * dim, cache: cache, through: chunkStart + count)
        hasDecision = true
        stepsSinceDecision = 0
        return m
    }

    /// The layers run at `budget` for every token when the learned part is zero (W2 = 0,
    /// b2 = 0): the scores are then the prior's alone, so the choice depends on the budget
    /// only and evaluation may run whole sequences as one batch. nil when the module routes
    /// per token.
    public func fixedMask(budget: Double) -> [Bool]? {
        guard weights.gate == nil, weights.tokenSwitches.isEmpty, weights.w2.allSatisfy({ $0 == 0 }), weights.b2.allSatisfy({ $0 == 0 }) else { return nil }
        let k = LayerBudget.routableCount(budget: budget, layers: layers)
        let s = priorScores(kept: k).map { weights.priorWeight * $0 }
        return LayerBudget.mask(layers: layers, chosen: LayerBudget.topK(Array(s), k: k))
    }

    /// Budget-specific layer sets as a prior table: for each k with a set, that set's layers
    /// score 1 and the others 0; a k without a set uses the single prior. The single prior
    /// (scaled down) breaks ties inside each row, so rows stay a strict order.
    public static func priorTable(sets: [Int: [Int]], fallback prior: [Float], routable: Int) -> [Float] {
        var t = [Float](repeating: 0, count: routable * routable)
        let lo = prior.min() ?? 0, hi = prior.max() ?? 1
        let span = max(hi - lo, 1e-6)
        for k in 1...routable {
            for r in 0..<routable {
                let tie = 0.001 * (prior[r] - lo) / span
                if let set = sets[k] {
                    t[(k - 1) * routable + r] = (set.contains(r + 1) ? 1 : 0) + tie
                } else {
                    t[(k - 1) * routable + r] = prior[r]
                }
            }
        }
        return t
    }

    /// `set` (routable layers, 1...layers-2) becomes the k-layer row of the conversation table
    /// when `conversation`, else of the module's own table (which is created from the single
    /// prior when the module has none). Token switches are left as they are.
    public func replacingSet(kept k: Int, conversation: Bool, with set: [Int]) throws -> DecisionModule {
        let routable = self.routable
        guard set.count == k, Set(set).count == k, set.allSatisfy({ (1...routable).contains($0) }) else {
            throw RoutingError.invalidRanking("expected \(k) distinct routable layers in 1...\(routable), got \(set)")
        }
        let row = DecisionModule.priorTable(sets: [k: set], fallback: weights.prior, routable: routable)[((k - 1) * routable)..<(k * routable)]
        var w = weights
        if conversation {
            guard var g = w.gate else { throw RoutingError.badRouterFile(path: name, reason: "the module has no conversation table (no context gate)") }
            g.priorByCount.replaceSubrange(((k - 1) * routable)..<(k * routable), with: row)
            w.gate = g
        } else {
            var t = w.priorByCount ?? (1...routable).flatMap { _ in weights.prior }
            t.replaceSubrange(((k - 1) * routable)..<(k * routable), with: row)
            w.priorByCount = t
        }
        return try DecisionModule(name: name, layers: layers, dim: dim, kvDim: kvDim, hidden: hidden, weights: w)
    }

    /// Forget the pooled context (a new conversation).
    public func resetContext() { pooled.reset(); hasDecision = false }
}

import BuddyCore
import CKernels
import Foundation

/// The learned router. For every number k of routable layers a budget allows, it holds a few
/// candidate layer sets of exactly k layers and a linear scorer that picks one of them per
/// token from the routing context:
///
///   input  x = [mean K0 (kvDim), mean V0 (kvDim), h0 (dim)]          (inputDim, `RoutingInput`)
///   z      = (x − inputMean) ⊙ inputScale                           (inputDim)
///   k      = round(budget × routable)                                (`LayerBudget.routableCount`)
///   score_j = w_kj · z + b_kj      for each candidate set j of k     (candidates(k) ≤ 16)
///   run    first layer + set argmax_j score_j + last layer           (exactly k + 2 layers)
///
/// A k with one candidate runs that set for every token (no scorer is stored). One module
/// serves every budget: the budget picks the row of choices, the context picks the set.
/// A prompt at the budget runs the k's searched prompt set when the module has one
/// (`promptSets`, `buddy train prompt-sets`), and is decided like a token otherwise. The
/// sets come from a layer-set search with stand-ins and from static rankings; the scorers are
/// fitted on per-token KL from full depth (`SetChoiceFit`, `buddy train router`,
/// docs/TRAINING.md).
public final class DecisionModule: BudgetedLayerSelector, RowwiseLayerSelector, PromptSetSelector, ContextKeepingSelector, @unchecked Sendable {
    /// The candidate sets for one k and the scorer that picks among them.
    public struct Choice: Sendable, Equatable {
        public var kept: Int
        public var sets: [[Int]]      // [candidates][kept] routable layers (1...layers-2), ascending
        public var names: [String]    // [candidates] where each set came from ("search", "sleb", ...)
        public var weights: [Float]   // [candidates × inputDim], empty with one candidate
        public var bias: [Float]      // [candidates], empty with one candidate
        public var candidates: Int { sets.count }
        public init(kept: Int, sets: [[Int]], names: [String], weights: [Float] = [], bias: [Float] = []) {
            self.kept = kept; self.sets = sets; self.names = names; self.weights = weights; self.bias = bias
        }
    }

    public struct Weights: Sendable, Equatable {
        public var inputMean: [Float]   // [inputDim]
        public var inputScale: [Float]  // [inputDim]
        public var choices: [Choice]    // [routable], choices[k-1] serves k routable layers
        public init(inputMean: [Float], inputScale: [Float], choices: [Choice]) {
            self.inputMean = inputMean; self.inputScale = inputScale; self.choices = choices
        }
    }

    public static let maxCandidates = 16

    public let name: String
    public let layers: Int
    public let dim: Int
    public let kvDim: Int
    public var routable: Int { layers - 2 }
    public var inputDim: Int { 2 * kvDim + dim }
    public let weights: Weights
    public var budget: Double = 1
    /// Per k, the set a prompt at the budget runs (searched on training chat); empty: none.
    public var promptSets: PromptSets
    /// Re-decide every N decode steps (1 = every token, as the paper does).
    public var rerouteEvery = 1
    /// Per routable layer, the probability the last decision's scorer gave to running it
    /// (softmax over the candidates' scores, summed over the sets holding the layer).
    public var lastScores: [Float]? { decisions > 0 ? layerProbability : nil }
    /// The source of the set the last decision ran ("search", "sleb", ...; "prompt" for a prompt set).
    public var layerSetLabel: String? { lastSetName.isEmpty ? nil : lastSetName }
    /// Seconds spent deciding (context pooling + scoring), for overhead reports.
    public private(set) var routingSeconds = 0.0
    public private(set) var decisions = 0
    /// Index of the candidate the last decision ran.
    public private(set) var lastCandidate = 0

    public private(set) var pooled: PooledContext
    /// [routable][candidates][layers] every candidate's mask, built once.
    private let masks: [[[Bool]]]
    /// Whether maskBuffer holds a decision that may be kept (not after a rewind or reset).
    private var hasDecision = false
    private var stepsSinceDecision = 0
    private var lastSetName = ""
    // Scratch buffers: nothing is allocated per token.
    private var input: [Float]                 // [inputDim]
    private var z: [Float]                     // [inputDim]
    private var candidateScores: [Float]       // [maxCandidates]
    private var layerProbability: [Float]      // [routable]
    /// [layers] the last decision's mask, rewritten in place (the caller copies it out).
    private var maskBuffer: [Bool]

    public init(name: String = "buddy", layers: Int, dim: Int, kvDim: Int, weights: Weights) throws {
        self.name = name
        self.layers = layers
        self.dim = dim
        self.kvDim = kvDim
        self.weights = weights
        pooled = PooledContext(kvDim: kvDim)
        input = [Float](repeating: 0, count: 2 * kvDim + dim)
        z = input
        candidateScores = [Float](repeating: 0, count: DecisionModule.maxCandidates)
        layerProbability = [Float](repeating: 0, count: max(layers - 2, 0))
        maskBuffer = [Bool](repeating: true, count: layers)
        promptSets = .none(routable: layers - 2)
        masks = weights.choices.map { c in c.sets.map { LayerBudget.mask(layers: layers, chosen: Set($0)) } }
        try validate()
    }

    /// The same module (weights, budget, prompt sets, rerouting) with a context of its own: for
    /// routing several sequences at once.
    public func copy() -> DecisionModule {
        let m = try! DecisionModule(name: name, layers: layers, dim: dim, kvDim: kvDim, weights: weights)
        m.budget = budget
        m.promptSets = promptSets
        m.rerouteEvery = rerouteEvery
        return m
    }

    /// A module with one set per k: each k's set is a static ranking's (the untrained start).
    public convenience init(ranking: StaticRanking, dim: Int, kvDim: Int) throws {
        let routable = ranking.layers - 2, inDim = 2 * kvDim + dim
        let choices = (1...routable).map { k in
            Choice(kept: k, sets: [Array(ranking.ranking.prefix(k)).sorted()], names: [ranking.name])
        }
        try self.init(layers: ranking.layers, dim: dim, kvDim: kvDim, weights: Weights(
            inputMean: [Float](repeating: 0, count: inDim), inputScale: [Float](repeating: 1, count: inDim), choices: choices))
    }

    func validate() throws {
        func bad(_ reason: String) -> RoutingError { .badRouterFile(path: name, reason: reason) }
        func check(_ field: String, _ a: [Float], _ n: Int) throws {
            guard a.count == n else { throw bad("\(field) has \(a.count) values, expected \(n)") }
            guard a.allSatisfy({ $0.isFinite }) else { throw bad("\(field) contains NaN or infinity") }
        }
        guard layers >= 3, layers <= 1024, dim >= 1, dim <= 65536, kvDim >= 1, kvDim <= 65536 else {
            throw bad("absurd dimensions (layers \(layers), dim \(dim), kvDim \(kvDim))")
        }
        let w = weights, inDim = inputDim
        try check("input_mean", w.inputMean, inDim)
        try check("input_scale", w.inputScale, inDim)
        guard w.choices.count == routable else { throw bad("choices has \(w.choices.count) entries, expected one per k = 1...\(routable)") }
        for (i, c) in w.choices.enumerated() {
            let field = "choices[\(i)]"
            guard c.kept == i + 1 else { throw bad("\(field).kept is \(c.kept), expected \(i + 1)") }
            guard (1...DecisionModule.maxCandidates).contains(c.candidates) else {
                throw bad("\(field) has \(c.candidates) candidate sets, expected 1...\(DecisionModule.maxCandidates)")
            }
            guard c.names.count == c.candidates else { throw bad("\(field).names has \(c.names.count) entries for \(c.candidates) sets") }
            for (j, set) in c.sets.enumerated() {
                guard set.count == c.kept, set == set.sorted(), Set(set).count == c.kept, set.allSatisfy({ (1...routable).contains($0) }) else {
                    throw bad("\(field).sets[\(j)] must be \(c.kept) distinct routable layers (1...\(routable)) in ascending order")
                }
            }
            if c.candidates > 1 {
                try check("\(field).weights", c.weights, c.candidates * inDim)
                try check("\(field).bias", c.bias, c.candidates)
            } else {
                guard c.weights.isEmpty, c.bias.isEmpty else { throw bad("\(field) has one set and a scorer; a single set needs none") }
            }
        }
    }

    /// The choice that serves `budget`.
    public func choice(budget: Double) -> Choice {
        weights.choices[LayerBudget.routableCount(budget: budget, layers: layers) - 1]
    }

    /// Index of the candidate the scorer of `choice` picks for the normalised input in `z`,
    /// leaving every candidate's score in candidateScores (`SetChoiceFit.picks` uses the same dot product).
    private func pick(_ c: Choice) -> Int {
        guard c.candidates > 1 else { candidateScores[0] = 0; return 0 }
        let inDim = inputDim
        var best = 0
        z.withUnsafeBufferPointer { zp in
            c.weights.withUnsafeBufferPointer { wp in
                for j in 0..<c.candidates {
                    candidateScores[j] = bk_dot_f32(wp.baseAddress! + j * inDim, zp.baseAddress!, Int32(inDim)) + c.bias[j]
                    if candidateScores[j] > candidateScores[best] { best = j }
                }
            }
        }
        return best
    }

    /// The candidate index picked for a raw input row x ([inputDim]) at `budget` (training and tests).
    public func pick(input x: [Float], budget: Double) -> Int {
        for i in 0..<inputDim { z[i] = (x[i] - weights.inputMean[i]) * weights.inputScale[i] }
        return pick(choice(budget: budget))
    }

    /// Decides from the pooled context through `end` and the newest hidden state.
    public func decide(hiddenState: UnsafePointer<Float>, cache: KVCache, through end: Int) -> [Bool] {
        let t0 = DispatchTime.now().uptimeNanoseconds
        pooled.update(cache: cache, through: end)
        input.withUnsafeMutableBufferPointer { RoutingInput.write(pooled: pooled, hiddenState: hiddenState, dim: dim, into: $0.baseAddress!) }
        let w = weights
        for i in 0..<inputDim { z[i] = (input[i] - w.inputMean[i]) * w.inputScale[i] }
        let k = LayerBudget.routableCount(budget: budget, layers: layers)
        let c = w.choices[k - 1]
        let j = pick(c)
        lastCandidate = j
        lastSetName = c.names[j]
        writeLayerProbability(c)
        let m = masks[k - 1][j]
        for l in 0..<layers { maskBuffer[l] = m[l] }
        routingSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        decisions += 1
        return maskBuffer
    }

    /// Softmax of the candidates' scores spread over their layers, for the routing panel.
    private func writeLayerProbability(_ c: Choice) {
        for r in 0..<routable { layerProbability[r] = 0 }
        var top = -Float.infinity
        for j in 0..<c.candidates { top = max(top, candidateScores[j]) }
        var sum: Float = 0
        for j in 0..<c.candidates { candidateScores[j] = Foundation.exp(candidateScores[j] - top); sum += candidateScores[j] }
        for j in 0..<c.candidates { for layer in c.sets[j] { layerProbability[layer - 1] += candidateScores[j] / sum } }
    }

    public func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] {
        selectLayers(position: position, hiddenState: state.x, cache: cache)
    }

    func selectLayers(position: Int, hiddenState: UnsafePointer<Float>, cache: KVCache) -> [Bool] {
        // A rewound cache rewrote positions the sums already hold: rebuild them.
        cacheTruncated(to: position)
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
        pooled.truncate(to: chunkStart)
        let m = decide(hiddenState: batch.x + (count - 1) * dim, cache: cache, through: chunkStart + count)
        hasDecision = true
        stepsSinceDecision = 0
        return m
    }

    /// The layers run at `budget` for every token when that budget's choice has one set, so
    /// evaluation may run whole sequences as one batch; nil when the module picks per token.
    public func fixedMask(budget: Double) -> [Bool]? {
        let k = LayerBudget.routableCount(budget: budget, layers: layers)
        return masks[k - 1].count == 1 ? masks[k - 1][0] : nil
    }

    /// Every candidate set of the choice that serves `budget`, as masks (stand-in fitting
    /// learns the inputs each of them gives a skipped layer).
    public func candidateMasks(budget: Double) -> [[Bool]] {
        masks[LayerBudget.routableCount(budget: budget, layers: layers) - 1]
    }

    public func promptMask() -> [Bool]? {
        guard let m = promptSets.mask(budget: budget) else { return nil }
        lastSetName = "prompt"
        return m
    }

    /// Forget the pooled context (a new conversation).
    public func resetContext() { pooled.reset(); hasDecision = false }

    /// Positions from `length` on are gone or rewritten: the sums are rebuilt from the cache at
    /// the next decision. Without this, a prompt the module did not route (at full depth, or on
    /// a prompt set) that ended beyond the old sums left the last conversation's positions in them.
    public func cacheTruncated(to length: Int) {
        if length < pooled.count { resetContext() }
    }
}

extension DecisionModule {
    /// This module with `choices` in place of its own, its prompt sets kept.
    public func replacingChoices(_ choices: [Choice]) throws -> DecisionModule {
        let m = try DecisionModule(name: name, layers: layers, dim: dim, kvDim: kvDim,
                                   weights: Weights(inputMean: weights.inputMean, inputScale: weights.inputScale, choices: choices))
        m.promptSets = promptSets
        return m
    }

    /// This module with `choice` serving its k (`choice.kept`), everything else kept.
    public func replacingChoice(_ choice: Choice) throws -> DecisionModule {
        var choices = weights.choices
        choices[choice.kept - 1] = choice
        return try replacingChoices(choices)
    }
}

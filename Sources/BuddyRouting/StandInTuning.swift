import BuddyCore
import Foundation

/// The second stage of `buddy calibrate stand-ins`: stand-ins tuned on what the model outputs.
///
/// The closed-form fit makes each stand-in reproduce its layer's update (or the full model's
/// stream) as well as a linear map can, but it weighs every direction of the residual stream
/// alike, while the later layers and the head care about a few. This stage starts from the
/// closed-form stand-ins and lowers KL(full model ‖ routed model) on calibration sequences
/// directly, by gradient descent back-propagated through every later layer (DenseTransformer):
/// each step takes one sequence and one layer set, runs the set with the current stand-ins,
/// and moves the stand-ins of the layers it skips (Adam). Sets take turns on each sequence, so
/// a stand-in serves every set that skips it. Only layers some set skips change.
///
/// Validation: mean KL over the validation sequences and the sets, before tuning and after each
/// epoch; the stand-ins of the best of those are returned (the closed-form ones when tuning
/// never improves them).
public final class StandInTuning {
    public struct Options: Sendable {
        public var epochs: Int
        public var learningRate: Float
        public var seed: UInt64
        /// How a chat sequence's prompt runs: at the set's depth (as `buddy eval chat` measures by
        /// default) or at full depth, as the chat runs a message (only the reply is routed).
        public var promptDepth: PromptDepth
        /// Layers whose stand-ins stay as they are even when a set skips them, so that sets
        /// tuned earlier (at higher budgets, say) keep exactly their stand-ins.
        public var keptLayers: Set<Int>
        public init(epochs: Int = 1, learningRate: Float = 1e-4, seed: UInt64 = 0, promptDepth: PromptDepth = .budget,
                    keptLayers: Set<Int> = []) {
            self.epochs = epochs; self.learningRate = learningRate; self.seed = seed; self.promptDepth = promptDepth
            self.keptLayers = keptLayers
        }
    }

    public struct Report: Sendable {
        /// Mean validation KL per set (rows: before tuning, then after each epoch).
        public var validation: [[Double]] = []
        /// Mean training KL per epoch (measured while training).
        public var trainLoss: [Double] = []
        /// The chosen row of `validation` (0: the closed-form stand-ins were kept).
        public var chosen = 0
        public var seconds = 0.0
        /// Mean over sets of a `validation` row.
        public static func mean(_ row: [Double]) -> Double { row.reduce(0, +) / Double(max(row.count, 1)) }
    }

    public let dense: DenseTransformer
    let tape: DenseTape
    /// [maxTokens × vocab]: the full model's log-probabilities of the current sequence.
    private let reference: FloatBuffer

    public convenience init(transformer: Transformer, maxTokens: Int, maxRank: Int) {
        self.init(dense: DenseTransformer(transformer), maxTokens: maxTokens, maxRank: maxRank)
    }

    public init(dense: DenseTransformer, maxTokens: Int, maxRank: Int) {
        self.dense = dense
        tape = DenseTape(config: dense.config, maxTokens: maxTokens, maxRank: maxRank)
        reference = FloatBuffer(maxTokens * dense.config.vocabSize)
    }

    /// Runs a sequence's shared prefix (layers below `first`, which every set runs) and the full
    /// model from there; leaves the reference log-probabilities in `reference`.
    private func prepare(_ s: SearchSequence, first: Int, standIns: [TrainableStandIn?], eps: Float) {
        let n = s.tokens.count, L = dense.config.layers, full = [Bool](repeating: true, count: L)
        dense.embed(s.tokens, into: tape.stream(0))
        dense.runLayers(tape, n: n, 0..<first, mask: full, standIns: standIns, standInEps: eps)
        dense.forward(tape, n: n, from: first, mask: full, standIns: standIns, standInEps: eps)
        reference.p.update(from: tape.logits, count: n * dense.config.vocabSize)
    }

    /// KL(full ‖ set) over the scored rows of `s` with the current stand-ins (after `prepare`);
    /// rows below `routedFrom` run at full depth.
    private func loss(_ s: SearchSequence, first: Int, set: [Bool], standIns: [TrainableStandIn?], eps: Float, routedFrom: Int) -> Double {
        dense.forward(tape, n: s.tokens.count, from: first, mask: set, standIns: standIns, standInEps: eps, routedFrom: routedFrom)
        return dense.klLoss(tape, n: s.tokens.count, reference: reference.p, rows: s.scored)
    }

    /// Mean KL per set over `sequences` (prompts at `promptDepth`).
    public func evaluate(_ sequences: [SearchSequence], sets: [[Bool]], standIns: [TrainableStandIn?], eps: Float,
                         promptDepth: PromptDepth = .budget) -> [Double] {
        let first = StandInTuning.firstSkipped(sets)
        var total = [Double](repeating: 0, count: sets.count)
        for s in sequences {
            prepare(s, first: first, standIns: standIns, eps: eps)
            let routedFrom = Self.routedFrom(s, promptDepth)
            for (k, set) in sets.enumerated() { total[k] += loss(s, first: first, set: set, standIns: standIns, eps: eps, routedFrom: routedFrom) }
        }
        return total.map { $0 / Double(max(sequences.count, 1)) }
    }

    /// The first routed row of `s`: after its prompt when prompts run at full depth.
    static func routedFrom(_ s: SearchSequence, _ promptDepth: PromptDepth) -> Int { promptDepth == .full ? s.prompt : 0 }

    /// The lowest layer any set skips (every layer below it runs in every set).
    static func firstSkipped(_ sets: [[Bool]]) -> Int {
        sets.compactMap { $0.firstIndex(of: false) }.min() ?? (sets.first?.count ?? 0)
    }

    /// Tunes `initial`'s stand-ins of the layers `sets` skip (true = the layer runs), except
    /// `options.keptLayers`.
    /// - progress: (steps done, steps, running mean training KL).
    public func tune(_ initial: StandIns, sets: [[Bool]], train: [SearchSequence], validation: [SearchSequence],
                     options: Options, progress: ((Int, Int, Double) -> Void)? = nil) throws -> (standIns: StandIns, report: Report) {
        let c = dense.config, L = c.layers, eps = initial.eps
        precondition(initial.layers.count == L)
        for s in sets { precondition(s.count == L && s[0] && s[L - 1], "a set must run the first and last layer") }
        for s in train + validation { precondition(s.tokens.count <= tape.maxTokens && !s.scored.isEmpty, "sequence out of range") }
        let start = Date()
        let applied = Set(sets.flatMap { set in (0..<L).filter { !set[$0] && initial.layers[$0] != nil } })
        let tuned = applied.subtracting(options.keptLayers).sorted()
        var params: [TrainableStandIn?] = initial.layers.map { $0.map(TrainableStandIn.init) }
        var report = Report()
        report.validation.append(evaluate(validation, sets: sets, standIns: params, eps: eps, promptDepth: options.promptDepth))
        var best = (score: Report.mean(report.validation[0]), params: params)
        // Adam state per tuned layer, over its flat parameter vector.
        var m = [Int: [Float]](), v = [Int: [Float]]()
        for l in tuned { m[l] = [Float](repeating: 0, count: params[l]!.parameterCount); v[l] = m[l] }
        // Gradients of every stand-in a set applies (the backward pass fills them all); only the
        // tuned layers' are used, and zeroed before each step.
        var grads = [TrainableStandIn?](repeating: nil, count: L)
        for l in applied { grads[l] = TrainableStandIn(zerosLike: params[l]!) }
        let beta1: Float = 0.9, beta2: Float = 0.999, adamEps: Float = 1e-8
        var step = 0
        let first = StandInTuning.firstSkipped(sets), totalSteps = options.epochs * train.count * sets.count
        var rng = SeededRNG(seed: options.seed)
        for _ in 0..<options.epochs {
            var order = Array(train.indices)
            for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
            var epochLoss = 0.0, epochSteps = 0
            for i in order {
                let s = train[i]
                prepare(s, first: first, standIns: params, eps: eps)
                let routedFrom = Self.routedFrom(s, options.promptDepth)
                for set in sets {
                    epochLoss += loss(s, first: first, set: set, standIns: params, eps: eps, routedFrom: routedFrom)
                    for l in applied { grads[l]!.zero() }
                    dense.backward(tape, n: s.tokens.count, from: first, mask: set, standIns: params, gradients: &grads, routedFrom: routedFrom)
                    step += 1; epochSteps += 1
                    let c1 = 1 - powf(beta1, Float(step)), c2 = 1 - powf(beta2, Float(step))
                    // Every tuned layer moves every step (its moments decay when this set runs it),
                    // as a standard Adam over all the parameters does.
                    for l in tuned {
                        let g = grads[l]!.flat
                        var p = params[l]!.flat
                        var ml = m[l]!, vl = v[l]!
                        for j in p.indices {
                            ml[j] = beta1 * ml[j] + (1 - beta1) * g[j]
                            vl[j] = beta2 * vl[j] + (1 - beta2) * g[j] * g[j]
                            p[j] -= options.learningRate * (ml[j] / c1) / ((vl[j] / c2).squareRoot() + adamEps)
                        }
                        m[l] = ml; v[l] = vl
                        params[l]!.setFlat(p[...])
                    }
                    progress?(step, totalSteps, epochLoss / Double(epochSteps))
                }
            }
            report.trainLoss.append(epochLoss / Double(max(epochSteps, 1)))
            let val = evaluate(validation, sets: sets, standIns: params, eps: eps, promptDepth: options.promptDepth)
            report.validation.append(val)
            if Report.mean(val) < best.score {
                best = (Report.mean(val), params)
                report.chosen = report.validation.count - 1
            }
        }
        report.seconds = Date().timeIntervalSince(start)
        let layers = (0..<L).map { l in best.params[l]?.layer }
        return (try StandIns(dim: initial.dim, eps: eps, layers: layers, notes: initial.notes), report)
    }
}

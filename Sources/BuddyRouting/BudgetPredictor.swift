import BuddyCore
import Foundation

/// Predicts, per prompt, how far a routed model will drift from the full model at each budget
/// of a grid. `AutoBudget` turns the prediction into a budget by one of two rules
/// (`AutoBudgetRule`): the share rule (full depth for the requests predicted to drift most among
/// the recent ones, the lowest choice for the rest; the shipped default) or the tolerance rule
/// (`choose`: the smallest of its `choices` whose predicted KL stays under a tolerance, full depth
/// when none does).
///
///   features f = [mean K0 (kvDim), mean V0 (kvDim), h0 of the prompt's last token (dim)]
///   z          = (f - mean) * scale                                   (featureDim)
///   log KL_b   = w_b · z + bias_b, for each grid budget b             (budgets.count)
///
/// Fitted by ridge regression (kernel form, n × n solve) on measured per-prompt curves:
/// for each training prompt the full model's greedy continuation is teacher-forced through
/// the routed model at every grid budget and the mean KL per token is recorded.
public struct BudgetPredictor: Sendable, Equatable {
    /// The default, chosen on the training prompts only: `buddy train predictor` compares
    /// --budget auto with a fixed budget of the same mean compute on its 40 chat prompts, each
    /// choice made by a predictor fitted without that prompt (`toleranceReport`), and prefers,
    /// among tolerances that keep the mean budget in the slider's recommended zone and at most
    /// `Budget.automaticCeiling`, the largest gain (`preferredTolerance`). Refitted to the
    /// routers with the 0.7 sets of two rounds (2026-12-05), only 0.25 stays there (mean 0.83,
    /// choices 0.75–0.85; −4.6 % against the fixed budget, +2.1 % against the best prompt-blind
    /// mix). Held out it has been level with a steered fixed budget at every refit (EVAL.md).
    /// This is the tolerance rule's default, used when a predictor has no share rule and no
    /// tolerance is given.
    public static let defaultTolerance = 0.25

    /// Where a mean of `k` routable layers falls among fixed budgets' points with ascending
    /// layer counts `ks`: the neighbouring indices and the weight of the upper one, for the
    /// linear interpolation that compares --budget auto with a fixed budget of the same mean
    /// compute (`buddy eval auto`, `buddy train predictor`). At or below the first point: the
    /// first alone; nil above the last.
    public static func bracket(_ ks: [Double], at k: Double) -> (lo: Int, hi: Int, weight: Double)? {
        guard let hi = ks.firstIndex(where: { $0 >= k }) else { return nil }
        let lo = max(0, hi - 1)
        return (lo, hi, ks[hi] > ks[lo] ? (k - ks[lo]) / (ks[hi] - ks[lo]) : 1)
    }

    /// The lowest mean KL that assigning whole prompts to the fixed points (ascending layers,
    /// at least one) achieves at mean `k` layers without looking at the prompts: the point
    /// where the points' lower convex hull crosses k (the first point's KL below it).
    public static func bestMix(_ points: [(k: Double, kl: Double)], atLayers k: Double) -> Double {
        let hull = lowerHull(points).map { points[$0] }
        guard let (lo, hi, w) = bracket(hull.map(\.k), at: k) else { return hull.last?.kl ?? 0 }
        return hull[lo].kl + w * (hull[hi].kl - hull[lo].kl)
    }

    /// The indices of the points (ascending layers) on their lower convex hull, in order.
    static func lowerHull(_ points: [(k: Double, kl: Double)]) -> [Int] {
        var hull: [Int] = []
        for (i, p) in points.enumerated() {
            // Drop the last hull point while it lies on or above the chord to p.
            while hull.count >= 2 {
                let a = points[hull[hull.count - 2]], b = points[hull[hull.count - 1]]
                if (b.kl - a.kl) * (p.k - a.k) >= (p.kl - a.kl) * (b.k - a.k) { hull.removeLast() } else { break }
            }
            hull.append(i)
        }
        return hull
    }

    /// Ascending budgets in (0, 1).
    public var budgets: [Double]
    /// The budgets `choose` may return besides full depth: ascending, a subset of `budgets`
    /// (files before version 7: every budget). `buddy train predictor --choices hull` keeps only
    /// the lower convex hull of the training prompts' mean curve within the slider's recommended
    /// zone (`hullChoices`), since a budget above that hull is beaten, at the same mean compute,
    /// by sending some prompts to its neighbours on it; the default keeps the whole grid.
    public var choices: [Double]
    public var featureDim: Int
    public var mean: [Float]          // [featureDim]
    public var scale: [Float]         // [featureDim]
    public var weights: [Float]       // [budgets.count × featureDim]
    public var bias: [Float]          // [budgets.count]
    /// The router whose curves were measured (its choices are what the KL refers to).
    public var router: String
    /// The share rule's default (`AutoBudgetRule.share`): the share of requests run at full
    /// depth, the rest at the lowest choice. nil in predictors fitted without
    /// `--full-depth-share` (and in files from before it), which choose by tolerance.
    public var fullDepthShare: Double?
    /// With `fullDepthShare`: where the share rule's window of recent predictions starts, the
    /// predicted KL at the lowest choice of the training chat prompts at evenly spaced quantiles,
    /// ordered from the median outwards so that the window, replacing its oldest entries first,
    /// loses the middle of the training spread before its ends (`AutoBudget`).
    public var recentSeed: [Double]

    public init(budgets: [Double], choices: [Double]? = nil, featureDim: Int, mean: [Float], scale: [Float], weights: [Float], bias: [Float],
                router: String, fullDepthShare: Double? = nil, recentSeed: [Double] = []) throws {
        self.budgets = budgets; self.choices = choices ?? budgets; self.featureDim = featureDim; self.mean = mean; self.scale = scale
        self.weights = weights; self.bias = bias; self.router = router
        self.fullDepthShare = fullDepthShare; self.recentSeed = recentSeed
        try validate()
    }

    func validate() throws {
        func bad(_ r: String) -> RoutingError { .badRouterFile(path: "budget predictor", reason: r) }
        guard !budgets.isEmpty, budgets.count <= 100, budgets.allSatisfy({ $0 > 0 && $0 < 1 }), zip(budgets, budgets.dropFirst()).allSatisfy({ $0 < $1 }) else {
            throw bad("budgets must be 1–100 ascending values in (0, 1)")
        }
        guard !choices.isEmpty, choices.allSatisfy({ budgets.contains($0) }), zip(choices, choices.dropFirst()).allSatisfy({ $0 < $1 }) else {
            throw bad("choices must be ascending budgets of the grid, at least one")
        }
        guard (1...1_000_000).contains(featureDim) else { throw bad("absurd feature dimension \(featureDim)") }
        for (name, a, n) in [("mean", mean, featureDim), ("scale", scale, featureDim), ("weights", weights, budgets.count * featureDim), ("bias", bias, budgets.count)] {
            guard a.count == n else { throw bad("\(name) has \(a.count) values, expected \(n)") }
            guard a.allSatisfy({ $0.isFinite }) else { throw bad("\(name) contains NaN or infinity") }
        }
        if let share = fullDepthShare {
            guard share > 0, share < 1 else { throw bad("full_depth_share must be in (0, 1)") }
            guard (1...AutoBudget.window).contains(recentSeed.count), recentSeed.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
                throw bad("recent_predictions must hold 1–\(AutoBudget.window) finite values of at least 0")
            }
        } else if !recentSeed.isEmpty {
            throw bad("recent_predictions without full_depth_share")
        }
    }

    /// This predictor with the share rule as its default: `share` of requests at full depth,
    /// the window seeded from the predictions at the lowest choice for `seedFeatures` (the
    /// training chat prompts'), `AutoBudget.window` evenly spaced quantiles of them.
    public func withShareRule(_ share: Double, seedFeatures: [[Float]]) throws -> BudgetPredictor {
        guard !seedFeatures.isEmpty else { throw RoutingError.badRouterFile(path: "budget predictor", reason: "the share rule needs training chat prompts") }
        let sorted = seedFeatures.map { f in f.withUnsafeBufferPointer { predictKL($0.baseAddress!)[lowestChoiceIndex] } }.sorted()
        let n = AutoBudget.window
        let quantiles = (0..<n).map { i in sorted[min(sorted.count - 1, Int((Double(i) + 0.5) / Double(n) * Double(sorted.count)))] }
        // From the median outwards: n/2, n/2 − 1, n/2 + 1, n/2 − 2, ...
        var order: [Int] = [], below = n / 2 - 1, above = n / 2
        while order.count < n {
            if above < n { order.append(above); above += 1 }
            if below >= 0 { order.append(below); below -= 1 }
        }
        var p = self
        p.fullDepthShare = share
        p.recentSeed = order.map { quantiles[$0] }
        try p.validate()
        return p
    }

    /// Where the lowest choice sits in `budgets` (`choices` is a subset of them).
    public var lowestChoiceIndex: Int { budgets.firstIndex(of: choices[0])! }

    /// Predicted mean KL per token at each grid budget, made non-increasing in the budget
    /// (running more layers never predicts more drift).
    public func predictKL(_ f: UnsafePointer<Float>) -> [Double] {
        var out = [Double](repeating: 0, count: budgets.count)
        for b in budgets.indices {
            var s = Double(bias[b])
            let w = b * featureDim
            for i in 0..<featureDim { s += Double(weights[w + i]) * Double((f[i] - mean[i]) * scale[i]) }
            out[b] = exp(s)
        }
        for b in stride(from: budgets.count - 2, through: 0, by: -1) { out[b] = max(out[b], out[b + 1]) }
        return out
    }

    /// The smallest of `choices` whose predicted KL is at most `tolerance`; 1 when none is.
    public func choose(_ f: UnsafePointer<Float>, tolerance: Double) -> Double {
        let kl = predictKL(f)
        return choices.first { kl[budgets.firstIndex(of: $0)!] <= tolerance } ?? 1
    }

    /// The budgets on the lower convex hull of a mean curve within the recommended zone: the
    /// points (routable layers, mean KL) of the grid budgets at or above `floor`, and full depth
    /// at KL 0, whose hull vertices below full depth are returned (the whole grid when no budget
    /// reaches the floor). `layers` turns a budget into its routable layer count.
    public static func hullChoices(budgets: [Double], meanKL: [Double], routable: Double, floor: Double = Budget.recommendedFloor,
                                   layers: (Double) -> Double) -> [Double] {
        let zone = budgets.indices.filter { budgets[$0] >= floor - 1e-9 }
        guard !zone.isEmpty else { return budgets }
        let points: [(k: Double, kl: Double)] = zone.map { (k: layers(budgets[$0]), kl: meanKL[$0]) } + [(k: routable, kl: 0)]
        return lowerHull(points).filter { $0 < zone.count }.map { budgets[zone[$0]] }
    }

    /// Ridge regression of log KL on standardised features, one output per grid budget.
    /// - features: [n][featureDim]; logKL: [n][budgets.count]
    public static func fit(features: [[Float]], logKL: [[Double]], budgets: [Double], choices: [Double]? = nil, lambda: Double,
                           router: String) throws -> BudgetPredictor {
        let n = features.count
        guard n >= 2, logKL.count == n else { throw RoutingError.badRouterFile(path: "budget predictor", reason: "need at least 2 measured prompts") }
        let d = features[0].count, nb = budgets.count
        let (mean, scale) = standardisation(features)
        // z: [n × d] standardised, scaled by 1/sqrt(d) so lambda is on a familiar scale.
        let norm = 1 / Double(d).squareRoot()
        let z = features.map { f in (0..<d).map { Double((f[$0] - mean[$0]) * scale[$0]) * norm } }
        // Kernel form: alpha = (Z Zᵀ + λI)⁻¹ (y - ȳ), w = Zᵀ alpha.
        var k = [Double](repeating: 0, count: n * n)
        for a in 0..<n { for b in a..<n {
            var s = 0.0
            for j in 0..<d { s += z[a][j] * z[b][j] }
            k[a * n + b] = s; k[b * n + a] = s
        } }
        for a in 0..<n { k[a * n + a] += lambda }
        var weights = [Float](repeating: 0, count: nb * d), bias = [Float](repeating: 0, count: nb)
        for b in 0..<nb {
            let ybar = logKL.reduce(0) { $0 + $1[b] } / Double(n)
            let alpha = try solve(k, n: n, rhs: logKL.map { $0[b] - ybar })
            bias[b] = Float(ybar)
            for j in 0..<d {
                var s = 0.0
                for a in 0..<n { s += alpha[a] * z[a][j] }
                // Fold the 1/sqrt(d) into the weights so prediction uses plain z.
                weights[b * d + j] = Float(s * norm)
            }
        }
        return try BudgetPredictor(budgets: budgets, choices: choices, featureDim: d, mean: mean, scale: scale, weights: weights, bias: bias,
                                   router: router)
    }

    /// Gaussian elimination with partial pivoting (the matrix is symmetric positive definite).
    static func solve(_ matrix: [Double], n: Int, rhs: [Double]) throws -> [Double] {
        var a = matrix, x = rhs
        for col in 0..<n {
            var p = col
            for r in (col + 1)..<max(col + 1, n) where abs(a[r * n + col]) > abs(a[p * n + col]) { p = r }
            guard abs(a[p * n + col]) > 1e-12 else { throw RoutingError.badRouterFile(path: "budget predictor", reason: "singular system; use a larger ridge") }
            if p != col {
                for c in 0..<n { a.swapAt(p * n + c, col * n + c) }
                x.swapAt(p, col)
            }
            let pivot = a[col * n + col]
            for r in (col + 1)..<max(col + 1, n) {
                let f = a[r * n + col] / pivot
                if f == 0 { continue }
                for c in col..<n { a[r * n + c] -= f * a[col * n + c] }
                x[r] -= f * x[col]
            }
        }
        for r in stride(from: n - 1, through: 0, by: -1) {
            var s = x[r]
            for c in (r + 1)..<max(r + 1, n) { s -= a[r * n + c] * x[c] }
            x[r] = s / a[r * n + r]
        }
        return x
    }
}

extension BudgetPredictor {
    /// Throws unless the predictor reads this model's features (pooled layer-0 K and V, and
    /// the hidden state after layer 0).
    public func checkFits(_ config: ModelConfig) throws {
        guard featureDim == 2 * config.kvDim + config.dim else {
            throw RoutingError.badRouterFile(path: "budget predictor", reason: "feature dimension \(featureDim) does not fit this model")
        }
    }

    /// The routing context `AutoBudget.chooseBudget` reads (several rules can share one): its
    /// features need only layer 0, so layer 0 runs over the new part of the prompt and the
    /// session then holds what it held before.
    public func features(for prompt: [Int32], in session: Session) throws -> [Float] {
        try checkFits(session.model.config)
        let probe = FeatureProbe(config: session.model.config)
        try session.runFirstLayer(over: prompt) { start, count in
            _ = probe.selectLayers(chunkStart: start, count: count, batch: session.batch, cache: session.cache)
        }
        return probe.features
    }
}

/// Captures the budget predictor's features while a prompt is evaluated at full depth
/// (a selector that runs every layer and records the routing context of the last chunk).
public final class FeatureProbe: ContextKeepingSelector {
    public private(set) var features: [Float]
    private var pooled: PooledContext
    private let dim: Int

    public init(config: ModelConfig) {
        dim = config.dim
        pooled = PooledContext(kvDim: config.kvDim)
        features = [Float](repeating: 0, count: 2 * config.kvDim + config.dim)
    }

    public func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] {
        [Bool](repeating: true, count: cache.layers)
    }

    public func cacheTruncated(to length: Int) {
        pooled.truncate(to: length)
    }

    public func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool] {
        pooled.truncate(to: chunkStart)
        pooled.update(cache: cache, through: chunkStart + count)
        features.withUnsafeMutableBufferPointer { f in
            RoutingInput.write(pooled: pooled, hiddenState: batch.x + (count - 1) * dim, dim: dim, into: f.baseAddress!)
        }
        return [Bool](repeating: true, count: cache.layers)
    }
}

/// One prompt's measured quality curve: its features and the mean KL per token from full
/// depth along the full model's greedy continuation, at each grid budget.
public struct BudgetCurve: Sendable, Codable, Equatable {
    public var id: String
    public var features: [Float]
    public var kl: [Double]
    public var tokens: Int
    public init(id: String, features: [Float], kl: [Double], tokens: Int) {
        self.id = id; self.features = features; self.kl = kl; self.tokens = tokens
    }
}

/// Measures budget curves with a router at each grid budget.
public struct BudgetCurveMeter {
    public let evaluator: ChatEvaluator
    public let budgets: [Double]
    public let makeRouter: (Double) throws -> BudgetedLayerSelector

    public init(evaluator: ChatEvaluator, budgets: [Double], makeRouter: @escaping (Double) throws -> BudgetedLayerSelector) {
        self.evaluator = evaluator; self.budgets = budgets; self.makeRouter = makeRouter
    }

    public func measure(id: String, prompt: [Int32], maxReply: Int) throws -> BudgetCurve {
        let session = evaluator.session
        let probe = FeatureProbe(config: session.model.config)
        session.reset()
        session.selector = probe
        try session.evaluate(prompt)
        let features = probe.features
        let ref = try evaluator.reference(prompt: prompt, maxTokens: maxReply)
        var kl: [Double] = []
        for b in budgets {
            session.selector = try makeRouter(b)
            kl.append(try evaluator.compare(ref).meanKL)
        }
        session.selector = nil
        return BudgetCurve(id: id, features: features, kl: kl, tokens: ref.reply.count)
    }
}

/// How `--budget auto` turns the predictor's curve into a budget.
public enum AutoBudgetRule: Sendable, Equatable, CustomStringConvertible {
    /// The smallest choice whose predicted KL is at most this many nats per token; full depth
    /// when none is (`BudgetPredictor.choose`).
    case tolerance(Double)
    /// Full depth for this share of requests, the lowest choice for the rest: a request runs at
    /// full depth when its predicted KL at the lowest choice is above that share's quantile
    /// among the last `AutoBudget.window` requests'. The quality curve is not convex near full
    /// depth (full depth drifts by nothing), so sending whole requests to its two ends beats a
    /// fixed budget of the same mean compute; the prediction decides which requests go
    /// (docs/TRAINING.md, "The share rule").
    case share(Double)

    public var description: String {
        switch self {
        case let .tolerance(t): return "tolerance \(t)"
        case let .share(s): return "full-depth share \(s)"
        }
    }

    /// The budgets below full depth this rule can choose with `predictor`.
    public func budgets(of predictor: BudgetPredictor) -> [Double] {
        if case .share = self { return [predictor.choices[0]] }
        return predictor.choices
    }

    /// The rule a command runs: a tolerance or share given on its command line, else the
    /// predictor's default (its share when it has one, else `BudgetPredictor.defaultTolerance`).
    public static func resolve(tolerance: Double?, share: Double?, predictor: BudgetPredictor) -> AutoBudgetRule {
        if let tolerance { return .tolerance(tolerance) }
        if let share = share ?? predictor.fullDepthShare { return .share(share) }
        return .tolerance(BudgetPredictor.defaultTolerance)
    }
}

/// Chooses automatic budgets one request after another, the one way every command (the chat,
/// `generate`, `eval auto`) picks one. Under the share rule it remembers the predictions of the
/// last `window` requests (a conversation's, or an evaluation's prompts in order), starting from
/// the training prompts' (`BudgetPredictor.recentSeed`).
public final class AutoBudget {
    /// Requests the share rule compares a new one with.
    public static let window = 32
    public let predictor: BudgetPredictor
    public let rule: AutoBudgetRule
    private var recent: [Double]
    private var oldest = 0

    public init(predictor: BudgetPredictor, rule: AutoBudgetRule) throws {
        if case let .share(s) = rule {
            guard s > 0, s < 1 else { throw RoutingError.badRouterFile(path: "budget predictor", reason: "the full-depth share must be in (0, 1)") }
            guard !predictor.recentSeed.isEmpty else {
                throw RoutingError.badRouterFile(path: "budget predictor",
                                                 reason: "this predictor has no recent predictions for the share rule; refit it with `buddy train predictor --full-depth-share`, or give --quality-tolerance")
            }
        }
        if case let .tolerance(t) = rule, !(t > 0) {
            throw RoutingError.badRouterFile(path: "budget predictor", reason: "the quality tolerance must be positive")
        }
        self.predictor = predictor
        self.rule = rule
        recent = predictor.recentSeed
        recent.reserveCapacity(Self.window)
    }

    /// The budget for a request with routing context `f`; under the share rule the request then
    /// joins the window.
    public func choose(_ f: UnsafePointer<Float>) -> Double {
        switch rule {
        case let .tolerance(t):
            return predictor.choose(f, tolerance: t)
        case .share:
            return choose(predictedAtLowestChoice: predictor.predictKL(f)[predictor.lowestChoiceIndex])
        }
    }

    /// The share rule's choice for a request whose predicted KL at the lowest choice is `x`,
    /// which then joins the window (a tolerance rule needs the whole predicted curve: `choose`).
    public func choose(predictedAtLowestChoice x: Double) -> Double {
        guard case let .share(s) = rule else { preconditionFailure("choose(predictedAtLowestChoice:) is the share rule's") }
        let runsFull = x > threshold(share: s)
        remember(x)
        return runsFull ? 1 : predictor.choices[0]
    }

    /// The prediction above which a request runs at full depth: the window's value with
    /// (1 − share)·(n + 1) values at or below it, so that a new request from the same spread
    /// lands above it with probability close to the share.
    func threshold(share: Double) -> Double {
        let sorted = recent.sorted()
        let rank = Int(((1 - share) * Double(sorted.count + 1)).rounded(.down))
        return sorted[min(max(rank, 1), sorted.count) - 1]
    }

    private func remember(_ x: Double) {
        if recent.count < Self.window { recent.append(x); return }
        recent[oldest] = x
        oldest = (oldest + 1) % Self.window
    }

    /// The budget for `prompt` before it runs in `session` (layer 0 only; the session keeps
    /// what it held). The caller then sets that budget and evaluates the prompt under it.
    public func chooseBudget(for prompt: [Int32], in session: Session) throws -> Double {
        try predictor.features(for: prompt, in: session).withUnsafeBufferPointer { choose($0.baseAddress!) }
    }
}

import BuddyCore

/// A fixed order of preference over the routable layers: every budget runs the first k of
/// one ranking, the same for every token. ShortGPT, SLEB, drop-last, random and the evenly
/// spread subset used for benchmarking are all rankings.
public final class StaticRanking: BudgetedLayerSelector, PromptSetSelector, @unchecked Sendable {
    public let name: String
    public let layers: Int
    /// Routable layers (1 ..< layers-1), most important first.
    public let ranking: [Int]
    public var budget: Double
    public var lastScores: [Float]? { nil }
    /// Per k, the set a prompt at the budget runs instead of the ranking's prefix (searched on
    /// training chat like the Decision Module's, so the baseline gets the same capability).
    public var promptSets: PromptSets

    public init(name: String, layers: Int, ranking: [Int], budget: Double = 1) throws {
        let routable = Set(1..<max(1, layers - 1))
        guard ranking.count == routable.count, Set(ranking) == routable else {
            throw RoutingError.invalidRanking("ranking must list each of the layers 1...\(layers - 2) exactly once")
        }
        self.name = name
        self.layers = layers
        self.ranking = ranking
        self.budget = budget
        promptSets = .none(routable: layers - 2)
        masksByCount = (0...ranking.count).map { LayerBudget.mask(layers: layers, chosen: ranking.prefix($0)) }
    }

    /// [k] the mask that keeps the first k of the ranking (made once: a decision allocates nothing)
    private let masksByCount: [[Bool]]

    /// The layers run at a budget (first and last included), in order.
    public func mask(budget: Double) -> [Bool] {
        masksByCount[LayerBudget.routableCount(budget: budget, layers: layers)]
    }

    public func promptMask() -> [Bool]? { promptSets.mask(budget: budget) }
    public func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] { mask(budget: budget) }
    public func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool] { mask(budget: budget) }
    public func selectLayers(rowsFrom chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [[Bool]] {
        [[Bool]](repeating: mask(budget: budget), count: count)
    }

    /// Drop the deepest routable layers first.
    public static func dropLast(layers: Int) -> StaticRanking {
        try! StaticRanking(name: "last", layers: layers, ranking: Array(1..<layers - 1))
    }

    /// A seeded random order.
    public static func random(layers: Int, seed: UInt64 = 0) -> StaticRanking {
        var rng = SeededRNG(seed: seed)
        return try! StaticRanking(name: "random", layers: layers, ranking: Array(1..<layers - 1).shuffled(using: &rng))
    }

    /// Keeps layers spread evenly through depth at every budget (for measuring how the
    /// executor's speed scales before a router is involved).
    public static func evenlySpread(layers: Int) -> StaticRanking {
        // Order by a bit-reversal-like refinement: midpoints of ever finer subdivisions.
        let routable = Array(1..<layers - 1)
        var order: [Int] = []
        var seen = Set<Int>()
        var parts = 1
        while order.count < routable.count {
            for i in 0..<parts {
                let idx = min(routable.count - 1, Int((Double(i) + 0.5) / Double(parts) * Double(routable.count)))
                if seen.insert(routable[idx]).inserted { order.append(routable[idx]) }
            }
            parts *= 2
            if parts > 4 * routable.count { for l in routable where seen.insert(l).inserted { order.append(l) } }
        }
        return try! StaticRanking(name: "even", layers: layers, ranking: order)
    }
}

public enum RoutingError: Error, CustomStringConvertible {
    case invalidRanking(String)
    case badRouterFile(path: String, reason: String)
    case wrongModel(path: String, fileFingerprint: String, modelFingerprint: String)
    case unsupportedVersion(path: String, found: Int, supported: Int)
    case retiredFormat(path: String, found: Int, what: String, remedy: String)
    case unknownRouter(String)
    case noBudgetPredictor

    public var description: String {
        switch self {
        case let .invalidRanking(r): return "invalid layer ranking: \(r)"
        case let .badRouterFile(path, reason): return "router file '\(path)' is unusable: \(reason)"
        case let .wrongModel(path, f, m):
            return "router file '\(path)' was made for another model (fingerprint \(f), this model is \(m)); calibrate or train one for this model"
        case let .unsupportedVersion(path, found, supported):
            return "router file '\(path)' has format version \(found); this buddy reads versions 1 to \(supported)"
        case let .retiredFormat(path, found, what, remedy):
            return "router file '\(path)' holds \(what) in format version \(found), which this buddy no longer reads; \(remedy)"
        case let .unknownRouter(n): return "unknown router '\(n)' (use a file path, or one of: buddy, shortgpt, sleb, last, random, even)"
        case .noBudgetPredictor: return "no routers/budget-predictor.json was found for this model"
        }
    }
}

/// Budget arithmetic shared by every router: the first and last layer always run; a budget
/// b in (0, 1] runs exactly k = round(b × routable) of the layers between (at least 1).
public enum LayerBudget {
    /// Layers 1 ..< layers-1.
    public static func routable(layers: Int) -> Int { max(0, layers - 2) }

    public static func routableCount(budget: Double, layers: Int) -> Int {
        let r = routable(layers: layers)
        guard r > 0 else { return 0 }
        return min(r, max(1, Int((budget * Double(r)).rounded(.toNearestOrAwayFromZero))))
    }

    /// The first layer where two run masks differ (nil: they are equal). A pass with `b` can
    /// restart there from the streams a pass with `a` kept (`routedForward`'s `fromLayer`).
    public static func firstDifference(_ a: [Bool], _ b: [Bool]) -> Int? {
        precondition(a.count == b.count, "masks of different lengths")
        return a.indices.first { a[$0] != b[$0] }
    }

    /// The run mask for a set of chosen routable layers (indices into 0..<layers).
    public static func mask(layers: Int, chosen: some Sequence<Int>) -> [Bool] {
        var m = [Bool](repeating: false, count: layers)
        m[0] = true
        m[layers - 1] = true
        for l in chosen { m[l] = true }
        return m
    }

    /// Picks the k highest-scoring routable layers; ties go to the shallower layer so the
    /// choice is deterministic. scores[i] belongs to layer i+1.
    public static func topK(_ scores: [Float], k: Int) -> [Int] {
        var m = [Bool](repeating: false, count: scores.count + 2)
        writeTopKMask(scores, k: k, into: &m)
        return (1...scores.count).filter { m[$0] }
    }

    /// The run mask of the k highest-scoring routable layers (first and last layer set),
    /// written in place into `mask` ([scores.count + 2]) without allocating: the router's
    /// per-token decision. Selection by repeated maximum; a strict comparison keeps the
    /// shallower layer on ties (k ≤ 30 picks over ≤ 30 scores: cheaper than a sort).
    public static func writeTopKMask(_ scores: [Float], k: Int, into mask: inout [Bool]) {
        let r = scores.count
        precondition(mask.count == r + 2, "mask has \(mask.count) entries for \(r) routable layers")
        for l in 0..<mask.count { mask[l] = false }
        mask[0] = true
        mask[r + 1] = true
        for _ in 0..<min(max(k, 0), r) {
            var best = -1
            for i in 0..<r where !mask[i + 1] {
                if best < 0 || scores[i] > scores[best] { best = i }
            }
            mask[best + 1] = true
        }
    }
}

/// A layer selector whose compute budget can change between tokens (the chat's slider).
public protocol BudgetedLayerSelector: LayerSelector {
    /// Short name for status lines ("buddy", "shortgpt", "last", ...).
    var name: String { get }
    /// Fraction of routable layers to run, in (0, 1]. Takes effect at the next decision.
    var budget: Double { get set }
    /// Scores of the routable layers at the last decision (index i is layer i+1); nil for
    /// routers without per-token scores.
    var lastScores: [Float]? { get }
    /// Where the layer set of the last decision came from ("search", "sleb", ...), for routers
    /// that choose among named sets; nil otherwise.
    var layerSetLabel: String? { get }
}

extension BudgetedLayerSelector {
    public var layerSetLabel: String? { nil }
}

import BuddyCore

/// The Decision Module's view of the context (as in the paper): the first layer's cached keys
/// and values mean-pooled over all positions so far (per KV head), the newest token's hidden
/// state after the first layer, and an encoding of the budget.
///
/// The pooled sums are kept incrementally, so a decode step costs O(1) in context length;
/// when the cache was rewound (a new prompt that shares only a prefix) they are rebuilt.
public struct PooledContext: Sendable {
    public let kvDim: Int
    /// [kvDim] Σ_t K0[t], Σ_t V0[t] over positions 0..<count, in double to keep long sums exact enough
    public private(set) var keySum: [Double]
    public private(set) var valueSum: [Double]
    public private(set) var count = 0

    public init(kvDim: Int) {
        self.kvDim = kvDim
        keySum = [Double](repeating: 0, count: kvDim)
        valueSum = keySum
    }

    /// Bring the sums to cover positions 0..<end of layer 0.
    public mutating func update(cache: KVCache, through end: Int) {
        if end < count { reset() }
        while count < end {
            let k = cache.key(0, count), v = cache.value(0, count)
            for i in 0..<kvDim { keySum[i] += Double(k[i]); valueSum[i] += Double(v[i]) }
            count += 1
        }
    }

    public mutating func reset() {
        for i in 0..<kvDim { keySum[i] = 0; valueSum[i] = 0 }
        count = 0
    }

    /// The same sums recomputed from scratch (tests check the incremental path against it).
    public static func recomputed(cache: KVCache, through end: Int) -> PooledContext {
        var p = PooledContext(kvDim: cache.kvDim)
        p.update(cache: cache, through: end)
        return p
    }

    /// Writes mean K, mean V into out[0..<2·kvDim].
    public func writeMeans(into out: UnsafeMutablePointer<Float>) {
        let inv = count > 0 ? 1 / Double(count) : 0
        for i in 0..<kvDim {
            out[i] = Float(keySum[i] * inv)
            out[kvDim + i] = Float(valueSum[i] * inv)
        }
    }
}

/// Features that encode the budget for the Decision Module.
public enum BudgetEncoding {
    public static let count = 4
    public static func write(_ b: Double, into out: UnsafeMutablePointer<Float>) {
        out[0] = Float(b); out[1] = Float(b * b); out[2] = Float(b * b * b); out[3] = Float(1 - b)
    }
}

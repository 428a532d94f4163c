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
        truncate(to: end)
        while count < end {
            let k = cache.key(0, count), v = cache.value(0, count)
            for i in 0..<kvDim { keySum[i] += Double(k[i]); valueSum[i] += Double(v[i]) }
            count += 1
        }
    }

    /// Positions from `length` on are gone or rewritten: forget the sums if they cover any of
    /// them (the next update rebuilds them from the cache).
    public mutating func truncate(to length: Int) {
        if length < count { reset() }
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

/// The Decision Module's context input, built in this one place for deciding, training and
/// the Budget Predictor alike: [mean K0, mean V0 (2·kvDim), h0 (dim)], i.e. the first layer's
/// cache mean-pooled over the context so far and the newest token's hidden state after the
/// first layer. The budget features, when a model wants them, follow (`BudgetEncoding`).
public enum RoutingInput {
    /// Writes the input for one position into out[0 ..< 2·kvDim (+ dim with a hidden state)].
    @inline(__always)
    public static func write(pooled: PooledContext, hiddenState: UnsafePointer<Float>?, dim: Int, into out: UnsafeMutablePointer<Float>) {
        pooled.writeMeans(into: out)
        if let hiddenState { (out + 2 * pooled.kvDim).update(from: hiddenState, count: dim) }
    }

    /// The inputs at `positions` (ascending) of a sequence whose layer 0 has just run as one
    /// batch from position 0 (row p of b.x is h0 at p, the cache holds K0/V0), each as a
    /// decode step at that position would see it. Without `withHiddenState` only the pooled
    /// part ([2·kvDim]).
    public static func rows(cache: KVCache, batch b: BatchState, positions: some Sequence<Int>, withHiddenState: Bool, dim: Int) -> [[Float]] {
        var pooled = PooledContext(kvDim: cache.kvDim)
        var row = [Float](repeating: 0, count: 2 * cache.kvDim + (withHiddenState ? dim : 0))
        var out: [[Float]] = []
        for pos in positions {
            pooled.update(cache: cache, through: pos + 1)
            row.withUnsafeMutableBufferPointer { write(pooled: pooled, hiddenState: withHiddenState ? b.x + pos * dim : nil, dim: dim, into: $0.baseAddress!) }
            out.append(row)
        }
        return out
    }
}

/// Features that encode the budget for the Decision Module.
public enum BudgetEncoding {
    public static let count = 4
    public static func write(_ b: Double, into out: UnsafeMutablePointer<Float>) {
        out[0] = Float(b); out[1] = Float(b * b); out[2] = Float(b * b * b); out[3] = Float(1 - b)
    }
}

/// Per column of `rows` ([n][d] routing inputs), the mean and the scale 1/std that standardise
/// it; a constant column gets scale 0 (it carries no information). The Decision Module and the
/// Budget Predictor store these and apply (x − mean) · scale.
public func standardisation(_ rows: [[Float]]) -> (mean: [Float], scale: [Float]) {
    let d = rows.first?.count ?? 0
    var mean = [Float](repeating: 0, count: d), scale = [Float](repeating: 1, count: d)
    for j in 0..<d {
        let (m, s) = columnStatistics(rows, j)
        mean[j] = Float(m)
        scale[j] = s > 1e-8 ? Float(1 / s) : 0
    }
    return (mean, scale)
}

/// `rows` standardised with a stored `mean` and `scale`: (x − mean) · scale per column.
public func standardised(_ rows: [[Float]], mean: [Float], scale: [Float]) -> [[Float]] {
    rows.map { x in x.indices.map { (x[$0] - mean[$0]) * scale[$0] } }
}

/// Mean and standard deviation of column d of rows.
public func columnStatistics(_ rows: [[Float]], _ d: Int) -> (mean: Double, std: Double) {
    var sum = 0.0, sq = 0.0
    for r in rows { let v = Double(r[d]); sum += v; sq += v * v }
    let n = Double(max(rows.count, 1))
    let mean = sum / n
    return (mean, max(0, sq / n - mean * mean).squareRoot())
}

import BuddyCore
import CBLAS
import Foundation

/// Sufficient statistics of one layer's regression problem: features x (the layer's input,
/// RMS-normalised) and targets y (what the stand-in should add to the residual stream).
/// Sums in double precision, so fits and validation errors come from these alone. Rows may
/// carry weights: every sum (and the count) is then weighted.
public struct RegressionStatistics: Sendable {
    public let dim: Int
    /// Σ weights (the number of rows when unweighted).
    public private(set) var count = 0.0
    public private(set) var rows = 0
    public private(set) var sumX: [Double]      // [dim]
    public private(set) var sumY: [Double]      // [dim]
    public private(set) var xx: [Double]        // [dim × dim] Σ x xᵀ
    public private(set) var xy: [Double]        // [dim × dim] Σ x yᵀ (row: feature, column: output)
    public private(set) var yy = 0.0            // Σ ‖y‖²

    public init(dim: Int) {
        self.dim = dim
        sumX = [Double](repeating: 0, count: dim)
        sumY = sumX
        xx = [Double](repeating: 0, count: dim * dim)
        xy = xx
    }

    /// Adds m rows: x and y are [m × dim], row-major; weights [m] (nil: all 1).
    public mutating func add(x: [Double], y: [Double], rows m: Int, weights: [Double]? = nil) {
        precondition(x.count >= m * dim && y.count >= m * dim && (weights?.count ?? m) >= m)
        guard m > 0 else { return }
        let d = Int32(dim)
        // Σ w x xᵀ and Σ w x yᵀ as products of √w-scaled rows.
        var xs = x, ys = y
        if let weights {
            for i in 0..<m {
                let s = weights[i].squareRoot()
                for j in 0..<dim { xs[i * dim + j] *= s; ys[i * dim + j] *= s }
            }
        }
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, Int32(m), 1, xs, d, xs, d, 1, &xx, d)
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, Int32(m), 1, xs, d, ys, d, 1, &xy, d)
        for i in 0..<m {
            let w = weights?[i] ?? 1
            for j in 0..<dim {
                sumX[j] += w * x[i * dim + j]
                let v = y[i * dim + j]
                sumY[j] += w * v
                yy += w * v * v
            }
            count += w
        }
        rows += m
    }

    public static func + (a: RegressionStatistics, b: RegressionStatistics) -> RegressionStatistics {
        precondition(a.dim == b.dim)
        var s = a
        s.count += b.count
        s.rows += b.rows
        for i in 0..<a.dim { s.sumX[i] += b.sumX[i]; s.sumY[i] += b.sumY[i] }
        for i in 0..<a.xx.count { s.xx[i] += b.xx[i]; s.xy[i] += b.xy[i] }
        s.yy += b.yy
        return s
    }

    /// Σ‖y − c − B·A·x‖² over the rows, from the sums alone. B must have orthonormal
    /// columns (as `fit` makes it), so that ‖B·v‖ = ‖v‖.
    public func squaredError(_ f: AffineFit) -> Double {
        let n = dim, r = f.rank
        var e = yy
        // − 2 Σ yᵀc + N‖c‖²
        for i in 0..<n { e += -2 * f.bias[i] * sumY[i] + count * f.bias[i] * f.bias[i] }
        guard r > 0 else { return e }
        // A·Σx  [r]
        var ax = [Double](repeating: 0, count: r)
        cblas_dgemv(CblasRowMajor, CblasNoTrans, Int32(r), Int32(n), 1, f.down, Int32(n), sumX, 1, 0, &ax, 1)
        // + 2 cᵀ B (A Σx)
        var bax = [Double](repeating: 0, count: n)
        cblas_dgemv(CblasRowMajor, CblasNoTrans, Int32(n), Int32(r), 1, f.up, Int32(r), ax, 1, 0, &bax, 1)
        for i in 0..<n { e += 2 * f.bias[i] * bax[i] }
        // − 2 tr(B A Σxyᵀ-ish) = − 2 Σ_ij (A·Sxy)[j, i] B[i, j]
        var axy = [Double](repeating: 0, count: r * n)
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(r), Int32(n), Int32(n), 1, f.down, Int32(n), xy, Int32(n), 0, &axy, Int32(n))
        var cross = 0.0
        for j in 0..<r { for i in 0..<n { cross += axy[j * n + i] * f.up[i * r + j] } }
        e -= 2 * cross
        // + tr(A Sxx Aᵀ)
        var axx = [Double](repeating: 0, count: r * n)
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(r), Int32(n), Int32(n), 1, f.down, Int32(n), xx, Int32(n), 0, &axx, Int32(n))
        for j in 0..<r { for i in 0..<n { e += axx[j * n + i] * f.down[j * n + i] } }
        return e
    }

    /// The bias-only fit (rank 0): c = ȳ, whatever the ridge; no solve needed.
    public var meanFit: AffineFit {
        AffineFit(rank: 0, bias: sumY.map { count > 0 ? $0 / count : 0 }, down: [], up: [], ridge: 0)
    }

    /// Σ‖y − ȳ‖²: the error of predicting the mean, for R².
    public var totalVariation: Double {
        guard count > 0 else { return 0 }
        var s = yy
        for i in 0..<dim { s -= sumY[i] * sumY[i] / count }
        return s
    }
}

/// y ≈ c + B·(A·x) with B's columns orthonormal; A: [rank × dim], B: [dim × rank].
public struct AffineFit: Sendable {
    public var rank: Int
    public var bias: [Double]
    public var down: [Double]
    public var up: [Double]
    public var ridge: Double

    public func standIn() -> StandIns.Layer {
        StandIns.Layer(rank: rank, bias: bias.map(Float.init), down: down.map(Float.init), up: up.map(Float.init))
    }
}

public enum StandInFitError: Error, CustomStringConvertible {
    case lapack(routine: String, info: Int32)
    case tooFewRows(Int)
    public var description: String {
        switch self {
        case let .lapack(r, i): return "\(r) failed (info \(i)): the calibration data may be degenerate"
        case let .tooFewRows(n): return "only \(n) calibration rows: use more calibration text"
        }
    }
}

/// Closed-form ridge regression with a rank constraint (reduced-rank regression).
public enum AffineFitter {
    /// The full-rank ridge solution and the eigenvectors of its fitted values' covariance,
    /// from which `truncate` makes the best rank-r fit for any r.
    public struct Solution: Sendable {
        public let dim: Int
        public let ridge: Double
        let meanX: [Double], meanY: [Double]
        /// Z = W*ᵀ [dim_in × dim_out]: (Cxx + λI)⁻¹ Cxy.
        let z: [Double]
        /// Eigenvectors of W* Cxx W*ᵀ, columns, largest eigenvalue first [dim × dim].
        let vectors: [Double]
        public let eigenvalues: [Double]

        /// The best rank-r fit: B = top-r eigenvectors, A = Bᵀ W*, c = ȳ − B A x̄.
        public func truncate(rank r: Int) -> AffineFit {
            let n = dim
            precondition(r >= 0 && r <= n)
            var up = [Double](repeating: 0, count: n * r)
            for i in 0..<n { for j in 0..<r { up[i * r + j] = vectors[i * n + j] } }
            // A = Bᵀ Zᵀ = (Z B)ᵀ: [r × n]
            var down = [Double](repeating: 0, count: r * n)
            if r > 0 {
                cblas_dgemm(CblasRowMajor, CblasTrans, CblasTrans, Int32(r), Int32(n), Int32(n), 1, up, Int32(r), z, Int32(n), 0, &down, Int32(n))
            }
            var bias = meanY
            if r > 0 {
                var ax = [Double](repeating: 0, count: r)
                cblas_dgemv(CblasRowMajor, CblasNoTrans, Int32(r), Int32(n), 1, down, Int32(n), meanX, 1, 0, &ax, 1)
                for i in 0..<n { for j in 0..<r { bias[i] -= up[i * r + j] * ax[j] } }
            }
            return AffineFit(rank: r, bias: bias, down: down, up: up, ridge: ridge)
        }
    }

    /// Ridge λ is relative: the penalty is λ·tr(Cxx)/dim, so one grid serves every layer.
    public static func solve(_ s: RegressionStatistics, ridge: Double) throws -> Solution {
        let n = s.dim
        guard s.rows > 1, s.count > 0 else { throw StandInFitError.tooFewRows(s.rows) }
        let N = s.count
        let mx = s.sumX.map { $0 / N }, my = s.sumY.map { $0 / N }
        var cxx = s.xx, cxy = s.xy
        for i in 0..<n { for j in 0..<n { cxx[i * n + j] -= N * mx[i] * mx[j]; cxy[i * n + j] -= N * mx[i] * my[j] } }
        let covariance = cxx
        var trace = 0.0
        for i in 0..<n { trace += cxx[i * n + i] }
        let penalty = max(ridge * trace / Double(n), 1e-12)
        for i in 0..<n { cxx[i * n + i] += penalty }
        // dposv works column-major; the matrix is symmetric and Cxy's transpose is solved for
        // as the right-hand sides, so solve on the transposed layout: Zᵀ columns = rows here.
        var a = cxx
        var b = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0..<n { b[j * n + i] = cxy[i * n + j] } }   // column-major Cxy
        var info: Int32 = 0, nn = Int32(n)
        let uplo: CChar = 85   // "U"
        withUnsafePointer(to: uplo) { u in dposv_(u, &nn, &nn, &a, &nn, &b, &nn, &info, 1) }
        guard info == 0 else { throw StandInFitError.lapack(routine: "dposv (Cholesky solve)", info: info) }
        var z = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0..<n { z[i * n + j] = b[j * n + i] } }   // back to row-major
        // M = Zᵀ Cxx Z: covariance of the fitted values.
        var cz = [Double](repeating: 0, count: n * n)
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nn, nn, nn, 1, covariance, nn, z, nn, 0, &cz, nn)
        var m = [Double](repeating: 0, count: n * n)
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nn, nn, nn, 1, z, nn, cz, nn, 0, &m, nn)
        // Symmetric eigendecomposition (symmetric: row- and column-major are the same).
        var w = [Double](repeating: 0, count: n)
        var lwork: Int32 = -1, liwork: Int32 = -1
        var wq = [Double](repeating: 0, count: 1), iwq = [Int32](repeating: 0, count: 1)
        let jobz: CChar = 86   // "V"
        withUnsafePointer(to: jobz) { j in withUnsafePointer(to: uplo) { u in
            dsyevd_(j, u, &nn, &m, &nn, &w, &wq, &lwork, &iwq, &liwork, &info, 1, 1)
        } }
        lwork = Int32(wq[0]); liwork = iwq[0]
        var work = [Double](repeating: 0, count: Int(lwork)), iwork = [Int32](repeating: 0, count: Int(liwork))
        withUnsafePointer(to: jobz) { j in withUnsafePointer(to: uplo) { u in
            dsyevd_(j, u, &nn, &m, &nn, &w, &work, &lwork, &iwork, &liwork, &info, 1, 1)
        } }
        guard info == 0 else { throw StandInFitError.lapack(routine: "dsyevd (eigendecomposition)", info: info) }
        // Column-major eigenvectors in ascending order -> row-major [i, j] = component i of the
        // j-th largest.
        var vectors = [Double](repeating: 0, count: n * n)
        for j in 0..<n { for i in 0..<n { vectors[i * n + j] = m[(n - 1 - j) * n + i] } }
        return Solution(dim: n, ridge: ridge, meanX: mx, meanY: my, z: z, vectors: vectors, eigenvalues: w.reversed())
    }

    /// Picks ridge and rank by the validation error; ties within `tolerance` (of R²) go to
    /// the smaller rank, which is cheaper to run. Returns the choice and its validation R².
    public static func select(train: RegressionStatistics, validation: RegressionStatistics,
                              ridges: [Double], ranks: [Int], tolerance: Double = 0.002) throws
        -> (ridge: Double, rank: Int, validationR2: Double, table: [(ridge: Double, rank: Int, r2: Double)]) {
        let total = validation.totalVariation
        var table: [(ridge: Double, rank: Int, r2: Double)] = []
        for ridge in ridges {
            let sol = try solve(train, ridge: ridge)
            for r in ranks where r <= train.dim {
                let err = validation.squaredError(sol.truncate(rank: r))
                table.append((ridge, r, total > 0 ? 1 - err / total : 0))
            }
        }
        let best = table.map(\.r2).max() ?? 0
        // The smallest rank within tolerance of the best (then the best ridge at that rank).
        let ok = table.filter { best - $0.r2 <= tolerance }
        let rank = ok.map(\.rank).min() ?? 0
        let pick = table.filter { $0.rank == rank }.max { $0.r2 < $1.r2 }!
        return (pick.ridge, pick.rank, pick.r2, table)
    }
}

/// Fits a stand-in for every routable layer from the model's own forward passes.
///
/// Layer by layer, every calibration sequence is carried through the full model and through
/// each *scenario*: a static layer set the slider may run (true = the layer runs). At layer
/// l the regression gets one row per token from the full pass (input: the full model's
/// residual before l) and one from every scenario that skips l (input: the residual that
/// scenario really has there, stand-ins of earlier skipped layers applied). The target is
/// always the full model's residual after l minus the input, so a stand-in both does the
/// layer's work and pulls back drift from earlier skips. With no scenarios this is the plain
/// full-depth fit of the layer's own update.
///
/// Ridge and rank are chosen per layer on the validation sequences, then the stand-in is
/// refitted on train and validation together before the scenarios move past the layer.
public final class StandInCalibration {
    public struct LayerReport: Sendable {
        public let layer: Int
        public let rank: Int
        public let ridge: Double
        /// R² of the chosen fit on the validation rows (before the final refit).
        public let validationR2: Double
        /// R² of a bias-only stand-in on the same rows, for comparison.
        public let biasOnlyR2: Double
        public let trainRows: Int
        public let validationRows: Int
    }

    public let model: LanguageModel
    let batch: BatchState
    let cache: KVCache

    public init(model: LanguageModel, threads: Int = 2, maxTokens: Int = 512) {
        self.model = model
        let c = model.config
        let pool = ThreadPool.shared(threads: threads)
        batch = BatchState(config: c, maxTokens: maxTokens, capacity: maxTokens, pool: pool)
        cache = KVCache(layers: c.layers, capacity: maxTokens, kvDim: c.kvDim)
    }

    /// The residual stream that enters layer 0 for `tokens` [n × dim]: the model's own
    /// embedding step (Gemma scales the rows by √dim), so the fit sees what inference sees.
    public func embedded(_ tokens: [Int32]) -> [Float] {
        let n = tokens.count, D = model.config.dim
        model.transformer.prefillEmbed(tokens[...], start: 0, batch, cache)
        return [Float](UnsafeBufferPointer(start: batch.x, count: n * D))
    }

    /// Layer l over a sequence's residual stream `x` [n × dim] (in place), as prefill computes it.
    public func runLayer(_ l: Int, _ x: inout [Float], n: Int) {
        let D = model.config.dim
        x.withUnsafeBufferPointer { batch.x.update(from: $0.baseAddress!, count: n * D) }
        cache.truncate(to: 0)
        model.transformer.prefillLayers(l..<(l + 1), n: n, start: 0, batch, cache)
        x.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: batch.x, count: n * D) }
    }

    /// - scenarios: layer masks (count = layers; first and last must run).
    /// - progress: (layer done, layers) after each layer.
    public func fit(train: [[Int32]], validation: [[Int32]], scenarios: [[Bool]] = [],
                    ridges: [Double] = [1e-3, 1e-2, 1e-1], ranks: [Int] = [0, 16, 32, 64, 128],
                    firstRow: Int = 1, rowStride: Int = 1, relativeError: Bool = true,
                    progress: ((Int, Int) -> Void)? = nil) throws -> (standIns: StandIns, report: [LayerReport]) {
        let c = model.config, L = c.layers, D = c.dim
        for s in scenarios { precondition(s.count == L && s[0] && s[L - 1], "a scenario must run the first and last layer") }
        let sequences = train + validation
        for s in sequences { precondition(s.count > firstRow && s.count <= batch.maxTokens, "sequence length out of range") }
        // Residual streams: [sequence][0 = full, 1... = scenarios], each [n × D].
        var states: [[[Float]]] = sequences.map { [[Float]](repeating: embedded($0), count: 1 + scenarios.count) }
        var layers = [StandIns.Layer?](repeating: nil, count: L)
        var report: [LayerReport] = []
        let eps = c.rmsNormEps

        /// Regression rows from `input` towards `target`: every rowStride-th row from firstRow
        /// (neighbouring tokens are alike; the statistics cost grows with the rows).
        /// With relativeError each row weighs 1/mean(input²): later layers see the residual
        /// stream RMS-normalised, so an error matters in proportion to the stream's scale, and a
        /// few tokens with huge activations must not dominate the fit.
        func rows(input: [Float], target: [Float], n: Int) -> (x: [Double], y: [Double], m: Int, w: [Double]?) {
            let m = (n - firstRow + rowStride - 1) / rowStride
            var xs = [Double](repeating: 0, count: m * D), ys = xs
            var ws = [Double](repeating: 1, count: m)
            for i in 0..<m {
                let r = (firstRow + i * rowStride) * D
                var ss: Float = 0
                for j in 0..<D { ss += input[r + j] * input[r + j] }
                ws[i] = 1 / (Double(ss) / Double(D) + Double(eps))
                let scale = 1 / (ss / Float(D) + eps).squareRoot()
                for j in 0..<D {
                    xs[i * D + j] = Double(input[r + j] * scale)
                    ys[i * D + j] = Double(target[r + j] - input[r + j])
                }
            }
            return (xs, ys, m, relativeError ? ws : nil)
        }

        for l in 0..<L {
            let routable = l > 0 && l < L - 1
            var trainStats = RegressionStatistics(dim: routable ? D : 1), valStats = trainStats
            for (si, seq) in sequences.enumerated() {
                let n = seq.count
                let input = states[si][0]
                runLayer(l, &states[si][0], n: n)
                guard routable else {
                    for s in scenarios.indices { runLayer(l, &states[si][s + 1], n: n) }
                    continue
                }
                let full = states[si][0]
                func add(_ r: (x: [Double], y: [Double], m: Int, w: [Double]?)) {
                    if si < train.count { trainStats.add(x: r.x, y: r.y, rows: r.m, weights: r.w) } else { valStats.add(x: r.x, y: r.y, rows: r.m, weights: r.w) }
                }
                add(rows(input: input, target: full, n: n))
                for (s, mask) in scenarios.enumerated() {
                    if mask[l] { runLayer(l, &states[si][s + 1], n: n) } else { add(rows(input: states[si][s + 1], target: full, n: n)) }
                }
            }
            if routable {
                let choice = try AffineFitter.select(train: trainStats, validation: valStats, ridges: ridges, ranks: ranks)
                let biasOnly = valStats.totalVariation > 0 ? 1 - valStats.squaredError(trainStats.meanFit) / valStats.totalVariation : 0
                let final = try AffineFitter.solve(trainStats + valStats, ridge: choice.ridge).truncate(rank: choice.rank)
                layers[l] = final.standIn()
                report.append(LayerReport(layer: l, rank: choice.rank, ridge: choice.ridge, validationR2: choice.validationR2,
                                          biasOnlyR2: biasOnly, trainRows: trainStats.rows, validationRows: valStats.rows))
                // Scenarios that skip l now carry its stand-in forward.
                let single = try StandIns(dim: D, eps: eps, layers: (0..<L).map { $0 == l ? layers[l] : nil })
                let normed = UnsafeMutablePointer<Float>.allocate(capacity: D), projected = UnsafeMutablePointer<Float>.allocate(capacity: D)
                defer { normed.deallocate(); projected.deallocate() }
                for si in sequences.indices {
                    for (s, mask) in scenarios.enumerated() where !mask[l] {
                        states[si][s + 1].withUnsafeMutableBufferPointer { p in
                            for i in 0..<sequences[si].count { single.apply(layer: l, p.baseAddress! + i * D, normed: normed, projected: projected) }
                        }
                    }
                }
            }
            progress?(l + 1, L)
        }
        return (try StandIns(dim: D, eps: eps, layers: layers), report)
    }
}

import CBLAS
import CKernels

/// A weight matrix left in its on-disk block format inside the memory-mapped file.
/// `rows` outputs, each a row of `cols` inputs (ggml's ne1 × ne0).
public struct QuantMatrix: @unchecked Sendable {
    public let name: String
    public let type: GGMLType
    public let rows: Int
    public let cols: Int
    public let rowBytes: Int
    public let data: UnsafeRawPointer

    public init(name: String, type: GGMLType, rows: Int, cols: Int, data: UnsafeRawPointer) {
        let layout = type.layout!
        self.name = name
        self.type = type
        self.rows = rows
        self.cols = cols
        self.rowBytes = cols / layout.elements * layout.bytes
        self.data = data
    }

    /// Whether dot products quantise the input to 8 bits (as llama.cpp does for these types):
    /// Q8_0-style blocks of 32 for the 32-weight types, Q8_K super-blocks for the K-quants.
    public var usesQ8Input: Bool {
        switch type {
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K: return true
        default: return false
        }
    }

    @inline(__always) public func row(_ r: Int) -> UnsafeRawPointer { data + r * rowBytes }

    /// One output: row r · x. `x` is the float input, `xq` the same input quantised
    /// (only read for the Q4/Q8 types).
    @inline(__always)
    public func dot(row r: Int, _ x: UnsafePointer<Float>, _ xq: Q8Activations, scratch: UnsafeMutablePointer<Float>) -> Float {
        let p = row(r)
        switch type {
        case .q4_1, .q8_0, .q4_0, .q5_0, .q5_1, .q4_K, .q5_K, .q6_K: return dotQuantized(type, p, xq, cols: cols)
        case .f32: return dotF32(p.assumingMemoryBound(to: Float.self), x, count: cols)
        case .f16, .bf16:
            var y: Float = 0
            bk_matvec_half(Int32(type.rawValue), p, 0, 0, 1, Int32(cols), x, &y)
            return y
        default:
            // Types without a dedicated kernel: dequantise the row, then a float dot.
            dequantizeRowRef(type, p, scratch, count: cols)
            return dotF32(scratch, x, count: cols)
        }
    }

    /// The reference twin: dequantised weights, fp32 input, scalar arithmetic.
    public func dotReference(row r: Int, _ x: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>) -> Float {
        dequantizeRowRef(type, row(r), scratch, count: cols)
        var s: Float = 0
        for i in 0..<cols { s += scratch[i] * x[i] }
        return s
    }

    /// Dequantise rows [start, start+count) into dst ([count × cols], row-major).
    public func dequantizeRows(_ start: Int, _ count: Int, into dst: UnsafeMutablePointer<Float>) {
        for r in 0..<count { dequantizeRow(type, row(start + r), dst + r * cols, count: cols) }
    }
}

/// Matrix-vector products on the decode path. Rows are split into contiguous ranges, one
/// per thread; each thread needs its own dequantisation scratch row for the generic path.
public final class MatVec: ParallelTasks, @unchecked Sendable {
    public let pool: ThreadPool
    /// [tasksPerThread × threads × maxCols] scratch rows, one per task
    private let scratch: UnsafeMutablePointer<Float>
    private let maxCols: Int

    public init(pool: ThreadPool, maxCols: Int) {
        self.pool = pool
        self.maxCols = maxCols
        scratch = .allocate(capacity: MatVec.tasksPerThread * pool.threads * maxCols)
        single = [QuantMatrix(name: "", type: .f32, rows: 0, cols: 0, data: UnsafeRawPointer(scratch))]
        singleOutput = [scratch]
    }
    deinit { scratch.deallocate() }

    /// Large products are cut into a few tasks per thread, handed out as threads free up, so
    /// a thread that was descheduled or started late does not hold the others back.
    @inline(__always) func taskCount(rows: Int) -> Int { rows >= 1024 ? MatVec.tasksPerThread * pool.threads : pool.threads }
    static let tasksPerThread = 4

    /// y[0..<m.rows] = m · x. `xq` must hold x quantised when m.usesQ8Input.
    public func run(_ m: QuantMatrix, _ x: UnsafePointer<Float>, _ xq: Q8Activations, _ y: UnsafeMutablePointer<Float>) {
        // The single matrix goes through the multi-matrix loop's fields (no array is built:
        // `single` and `singleOutput` are reused).
        single[0] = m
        singleOutput[0] = y
        run(single, x, xq, singleOutput)
    }

    /// Several matrices that share an input, in one parallel pass (Q/K/V, gate/up).
    public func run(_ ms: [QuantMatrix], _ x: UnsafePointer<Float>, _ xq: Q8Activations, _ ys: [UnsafeMutablePointer<Float>]) {
        let total = ms.reduce(0) { $0 + $1.rows }
        let tasks = taskCount(rows: total)
        loop = Loop(matrices: ms, outputs: ys, x: x, xq: xq, total: total, perTask: (total + tasks - 1) / tasks)
        pool.parallelFor(tasks, self)
        loop = nil   // drop the arrays, so `single` is uniquely held again
    }

    /// The running product's parameters, read by every task (set only between loops).
    private struct Loop {
        var matrices: [QuantMatrix]
        var outputs: [UnsafeMutablePointer<Float>]
        var x: UnsafePointer<Float>
        var xq: Q8Activations
        var total: Int
        var perTask: Int
    }
    private var loop: Loop?
    private var single: [QuantMatrix] = []
    private var singleOutput: [UnsafeMutablePointer<Float>] = []

    /// Task t: its contiguous range of the stacked rows of all the loop's matrices.
    public func runTask(_ t: Int) {
        guard let p = loop else { return }
        let s = scratch + t * maxCols
        var lo = t * p.perTask
        let hi = min(p.total, lo + p.perTask)
        var base = 0
        for (i, m) in p.matrices.enumerated() {
            let end = base + m.rows
            let stop = min(hi, end)
            if lo < stop {
                rowRange(m, lo - base, stop - base, p.x, p.xq, p.outputs[i] + (lo - base), s)
                lo = stop
            }
            base = end
        }
    }

    /// y[0..<(hi-lo)] = rows lo..<hi of m · x
    @inline(__always)
    private func rowRange(_ m: QuantMatrix, _ lo: Int, _ hi: Int, _ x: UnsafePointer<Float>, _ xq: Q8Activations,
                          _ y: UnsafeMutablePointer<Float>, _ s: UnsafeMutablePointer<Float>) {
        if m.type.isKQuant {
            bk_matvec_qk(Int32(m.type.rawValue), m.data, m.rowBytes, Int32(lo), Int32(hi), Int32(m.cols), xq.kqs, xq.kd, xq.kbsums, y)
        } else if m.usesQ8Input {
            bk_matvec_q(Int32(m.type.rawValue), m.data, m.rowBytes, Int32(lo), Int32(hi), Int32(m.cols), xq.qs, xq.d, xq.sums, xq.ds, y)
        } else if m.type == .f16 || m.type == .bf16 {
            bk_matvec_half(Int32(m.type.rawValue), m.data, m.rowBytes, Int32(lo), Int32(hi), Int32(m.cols), x, y)
        } else {
            for r in lo..<hi { y[r - lo] = m.dot(row: r, x, xq, scratch: s) }
        }
    }

    /// Scalar fp32 reference: y = dequant(m) · x.
    public func runReference(_ m: QuantMatrix, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        for r in 0..<m.rows { y[r] = m.dotReference(row: r, x, scratch: scratch) }
    }
}

/// Y[n × m.rows] = X[n × m.cols] · dequant(m)ᵀ through OpenBLAS sgemm, dequantising the
/// weights in slabs of rows so the scratch stays small even for the 49k-row output head.
public func gemmDequantized(_ m: QuantMatrix, _ x: UnsafePointer<Float>, n: Int, _ y: UnsafeMutablePointer<Float>,
                            ldy: Int, slab: UnsafeMutablePointer<Float>, slabRows: Int, pool: ThreadPool) {
    var start = 0
    while start < m.rows {
        let count = min(slabRows, m.rows - start)
        // Dequantise the slab in parallel: it is a large share of prefill time otherwise.
        let tasks = pool.threads
        let per = (count + tasks - 1) / tasks
        pool.parallelFor(tasks) { t in
            let lo = t * per, hi = min(count, lo + per)
            if lo < hi { m.dequantizeRows(start + lo, hi - lo, into: slab + lo * m.cols) }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(count), Int32(m.cols),
                    1, x, Int32(m.cols), slab, Int32(m.cols), 0, y + start, Int32(ldy))
        start += count
    }
}

/// Rows of activations quantised to Q8_K for the batched K-quant product: [rows × cols] int8
/// values, [rows × cols/256] scales, [rows × cols/16] sums of 16.
public final class Q8KBatch: @unchecked Sendable {
    public let qs: UnsafeMutablePointer<Int8>
    public let d: UnsafeMutablePointer<Float>
    public let bsums: UnsafeMutablePointer<Int16>

    public init(rows: Int, cols: Int) {
        qs = .allocate(capacity: rows * cols)
        d = .allocate(capacity: rows * cols / 256)
        bsums = .allocate(capacity: rows * cols / 16)
    }
    deinit { qs.deallocate(); d.deallocate(); bsums.deallocate() }
}

/// Y[n × m.rows] = X[n × m.cols] · mᵀ for a matrix with an 8-bit kernel (Q4_0 … Q8_0 against
/// Q8 rows, the K-quants against Q8_K rows), with exactly the per-(row, token) arithmetic of
/// the decode matvec, so a prompt batch and token-by-token decoding give identical projections.
/// Two parallel loops as `ParallelTasks`, so nothing is allocated: first each thread quantises
/// its share of the n activation rows, then each multiplies its own tokens by every weight row
/// (or, for short chunks, its share of the weight rows by all n tokens).
public final class BatchedProduct: ParallelTasks, @unchecked Sendable {
    private let pool: ThreadPool
    /// [rows × cols] activation rows as Q8 blocks (scales, integer sums, scale × sum) …
    private let aq: UnsafeMutablePointer<Int8>, ad: UnsafeMutablePointer<Float>
    private let asums: UnsafeMutablePointer<Int32>, ads: UnsafeMutablePointer<Float>
    /// … and as Q8_K super-blocks, for K-quant weights.
    private let kq: Q8KBatch
    private var quantizing = true, byTokens = false
    private var m: QuantMatrix?
    private var x: UnsafePointer<Float>?, y: UnsafeMutablePointer<Float>?
    private var n = 0, ldy = 0, rowsPerTask = 0, tokensPerTask = 0

    public init(rows: Int, cols: Int, pool: ThreadPool) {
        self.pool = pool
        aq = .allocate(capacity: rows * cols)
        ad = .allocate(capacity: rows * cols / 32)
        asums = .allocate(capacity: rows * cols / 32)
        ads = .allocate(capacity: rows * cols / 32)
        kq = Q8KBatch(rows: rows, cols: cols)
    }
    deinit { aq.deallocate(); ad.deallocate(); asums.deallocate(); ads.deallocate() }

    /// Y = X·mᵀ; m.usesQ8Input or m.type.isKQuant; n ≤ rows and m.cols ≤ cols of the init.
    public func run(_ m: QuantMatrix, _ x: UnsafePointer<Float>, n: Int, _ y: UnsafeMutablePointer<Float>, ldy: Int) {
        let tasks = pool.threads
        self.m = m; self.x = x; self.y = y; self.n = n; self.ldy = ldy
        // With at least two 4-token tiles per thread, each thread takes its own tokens, all the
        // rows: the activations it quantises and the outputs it writes stay in its core's cache.
        // Splitting the rows instead made every core read the other's quantised activations and
        // write into the other's output lines, and cost about a fifth of the product's time on
        // 2 cores. Fewer tokens (short chunks) split the rows. Each (row, token) is computed the
        // same way either way.
        byTokens = tasks > 1 && n >= 8 * tasks
        tokensPerTask = byTokens ? ((n + tasks - 1) / tasks + 3) / 4 * 4 : (n + tasks - 1) / tasks
        rowsPerTask = byTokens ? m.rows : (m.rows + tasks - 1) / tasks
        quantizing = true
        pool.parallelFor(tasks, self)
        quantizing = false
        pool.parallelFor(tasks, self)
        self.m = nil; self.x = nil; self.y = nil
    }

    public func runTask(_ t: Int) {
        guard let m, let x, let y else { return }
        let cols = m.cols
        if quantizing {
            for i in min(n, t * tokensPerTask)..<min(n, (t + 1) * tokensPerTask) {
                if m.type.isKQuant {
                    let sb = cols / 256
                    bk_quantize_q8k(x + i * cols, Int32(cols), kq.qs + i * cols, kq.d + i * sb, kq.bsums + i * 16 * sb)
                } else {
                    let blocks = cols / 32
                    bk_quantize_q8(x + i * cols, Int32(cols), aq + i * cols, ad + i * blocks, asums + i * blocks, ads + i * blocks)
                }
            }
            return
        }
        // This task's tokens and rows: its own tokens and every row, or every token and its rows.
        let t0 = byTokens ? min(n, t * tokensPerTask) : 0, t1 = byTokens ? min(n, t0 + tokensPerTask) : n
        let lo = byTokens ? 0 : min(m.rows, t * rowsPerTask), hi = min(m.rows, lo + rowsPerTask)
        guard t0 < t1, lo < hi else { return }
        if m.type.isKQuant {
            let sb = cols / 256
            bk_gemm_qk(Int32(m.type.rawValue), m.data, m.rowBytes, Int32(lo), Int32(hi), Int32(cols), Int32(t1 - t0),
                       kq.qs + t0 * cols, kq.d + t0 * sb, kq.bsums + t0 * 16 * sb, y + t0 * ldy + lo, Int32(ldy))
        } else {
            let blocks = cols / 32
            bk_gemm_q(Int32(m.type.rawValue), m.data, m.rowBytes, Int32(lo), Int32(hi), Int32(cols), Int32(t1 - t0),
                      aq + t0 * cols, ad + t0 * blocks, asums + t0 * blocks, ads + t0 * blocks, y + t0 * ldy + lo, Int32(ldy))
        }
    }
}

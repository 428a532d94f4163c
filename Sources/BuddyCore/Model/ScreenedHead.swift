import CKernels
import Foundation
import Synchronization

/// A cheaper output head for tokens that run few layers. The default model's head is a 30 MB
/// Q8_0 matrix that every decode step reads whole: about a fifth of a step at budget 0.5,
/// however few layers run. The screened head scores every vocabulary row with a 4-bit copy
/// (16 MB, in a layout made for one fast product), then recomputes the `candidates` rows that
/// score highest with the file's own weights and the exact head's kernel:
///
///     logits    = screen · x        every row      (the copy's rounding, like a Q4_0 head)
///     logits[r] = head[r] · x       the top rows   (bit for bit the exact head's value)
///
/// The tokens a sampler picks from get their exact logits; only the tail of the distribution
/// carries the copy's rounding. A token that runs at most `layerShare` of the layers reads it
/// (`usesScreen`): budgets up to about 0.65 for the default model. Full depth never does.
public final class ScreenedHead: @unchecked Sendable {
    /// The file's head, [rows × cols]; the candidates are recomputed with it.
    public let exact: QuantMatrix
    /// Rows recomputed exactly per token (`candidates(for:)`).
    public let candidates: Int
    public let rows: Int, cols: Int
    /// [rows/8 groups × cols/64 pairs × pairBytes], the layout bk_screen_q4 reads (kernels.c).
    let screen: UnsafeMutableRawPointer
    static let pairBytes = 288
    /// The screen's bytes (tests hand them to bk_screen_q4).
    public var screenBase: UnsafeRawPointer { UnsafeRawPointer(screen) }

    /// Rows recomputed exactly: on WikiText-2 chunks 204–219 (the selection range), 16 / 64 /
    /// 256 candidates cost +2.6 / +1.8 / +1.1 % perplexity at full depth and +3.4 / +2.5 / +1.7 %
    /// at 0.5 against the exact head (a Q4_0 copy alone: +6.1 / +7.2 %).
    public static let defaultCandidates = 256
    /// The rows recomputed for `head`: `wanted`, or every row of a head that has fewer.
    public static func candidates(for head: QuantMatrix, wanted: Int = defaultCandidates) -> Int { min(wanted, head.rows) }
    /// A token that runs at most this share of the model's layers reads the screened head.
    public static let layerShare = 2.0 / 3.0

    /// Whether a token that ran `layersRun` of `layers` layers reads the screened head.
    @inline(__always)
    public static func usesScreen(layersRun: Int, of layers: Int) -> Bool { Double(layersRun) <= layerShare * Double(layers) + 1e-9 }

    /// Whether `head` can be screened: its kernel takes 8-bit activations in blocks of 32 (the
    /// candidates are recomputed with the activations the screen read), and the layout needs
    /// rows in eights and columns in sixty-fours.
    public static func supports(_ head: QuantMatrix) -> Bool {
        head.usesQ8Input && !head.type.isKQuant && head.cols % 64 == 0 && head.rows % 8 == 0
    }

    /// Quantises `head` to the 4-bit screen with ggml's Q4_0 rounding per 32-column block (the
    /// block's largest-magnitude weight maps to −8); about a tenth of a second for the default model.
    public init(head: QuantMatrix, candidates: Int = defaultCandidates, pool: ThreadPool) {
        precondition(Self.supports(head), "the \(head.type) head cannot be screened")
        precondition(candidates > 0)
        exact = head
        self.candidates = Self.candidates(for: head, wanted: candidates)
        rows = head.rows; cols = head.cols
        let groupBytes = cols / 64 * Self.pairBytes
        screen = .allocate(byteCount: rows / 8 * groupBytes, alignment: 64)
        let groups = rows / 8, cols = self.cols, out = screen, threads = pool.threads
        pool.parallelFor(threads) { t in
            let row = UnsafeMutablePointer<Float>.allocate(capacity: cols)
            defer { row.deallocate() }
            for g in stride(from: t, to: groups, by: threads) {
                for j in 0..<8 {
                    head.dequantizeRows(8 * g + j, 1, into: row)
                    ScreenedHead.pack(row, cols, rowInGroup: j, out + g * groupBytes)
                }
            }
        }
    }
    deinit { screen.deallocate() }

    /// Row j of a group of 8 into the group's bytes: per 32-column block d = peak / −8 (peak:
    /// the weight of largest magnitude), nibble = min(15, trunc(x/d + 8.5)) (ggml's Q4_0 rounding).
    static func pack(_ x: UnsafePointer<Float>, _ n: Int, rowInGroup j: Int, _ group: UnsafeMutableRawPointer) {
        for b in 0..<n / 32 {
            let v = x + 32 * b, pair = group + (b / 2) * pairBytes, high = b % 2 == 1
            var amax: Float = 0, peak: Float = 0
            for i in 0..<32 where abs(v[i]) > amax { amax = abs(v[i]); peak = v[i] }
            let d = peak / -8
            let id: Float = d != 0 ? 1 / d : 0
            pair.storeBytes(of: Float16(d).bitPattern.littleEndian, toByteOffset: 2 * (8 * (b % 2) + j), as: UInt16.self)
            let bytes = pair + 32 + 32 * j
            for i in 0..<32 {
                // A file's weights are untrusted: a non-finite one gives the nibble for zero
                // instead of trapping (its exact row still reads what the file holds).
                let t = v[i] * id + 8.5
                let nibble: UInt8 = t.isFinite ? UInt8(min(15, max(0, Int(t)))) : 8
                let old = bytes.load(fromByteOffset: i, as: UInt8.self)
                bytes.storeBytes(of: high ? (old & 0x0F) | nibble << 4 : (old & 0xF0) | nibble, toByteOffset: i, as: UInt8.self)
            }
        }
    }

    /// y[0 ..< 8·(g1 − g0)] = screen rows 8·g0 ..< 8·g1 · x, x quantised in xq (vector kernel).
    @inline(__always)
    func screenRows(groups g0: Int, _ g1: Int, _ xq: Q8Activations, _ y: UnsafeMutablePointer<Float>) {
        bk_screen_q4(screen, Int32(g0), Int32(g1), Int32(cols), xq.qs, xq.d, xq.sums, y)
    }

    /// The scalar twin of the screen product for every row: per row, blocks in order,
    /// acc = fma(scale · d_a, Σ (nibble − 8)·a, acc).
    public func screenRef(_ xq: Q8Activations, _ y: UnsafeMutablePointer<Float>) {
        let pairs = cols / 64
        for g in 0..<rows / 8 {
            let group = UnsafeRawPointer(screen) + g * pairs * Self.pairBytes
            for j in 0..<8 {
                var acc: Float = 0
                for b in 0..<cols / 32 {
                    let pair = group + (b / 2) * Self.pairBytes
                    var isum: Int32 = 0
                    for i in 0..<32 {
                        let byte = pair.load(fromByteOffset: 32 + 32 * j + i, as: UInt8.self)
                        isum += Int32(b % 2 == 1 ? byte >> 4 : byte & 15) * Int32(xq.qs[32 * b + i])
                    }
                    isum -= 8 * xq.sums[b]
                    let scale = Float(Float16(bitPattern: UInt16(littleEndian: pair.loadUnaligned(fromByteOffset: 2 * (8 * (b % 2) + j), as: UInt16.self))))
                    acc = acc.addingProduct(scale * xq.d[b], Float(isum))
                }
                y[8 * g + j] = acc
            }
        }
    }

    /// The scalar twin of bk_top_rows: the indices of the `count` largest of x[0..<n] into top
    /// (in the heap's order; ties to the lower index), by a min-heap over top's first `count` entries.
    public static func largest(_ x: UnsafePointer<Float>, _ n: Int, count: Int, into top: UnsafeMutablePointer<Int32>) {
        precondition(count > 0 && count <= n)
        @inline(__always) func below(_ a: Int32, _ b: Int32) -> Bool { x[Int(a)] < x[Int(b)] || (x[Int(a)] == x[Int(b)] && a > b) }
        @inline(__always) func siftDown(_ start: Int) {
            var i = start
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < count && below(top[l], top[m]) { m = l }
                if r < count && below(top[r], top[m]) { m = r }
                if m == i { return }
                let t = top[i]; top[i] = top[m]; top[m] = t
                i = m
            }
        }
        for i in 0..<count { top[i] = Int32(i) }
        for i in stride(from: count / 2 - 1, through: 0, by: -1) { siftDown(i) }
        var floor = x[Int(top[0])]
        for i in count..<n where x[i] >= floor && below(top[0], Int32(i)) {
            top[0] = Int32(i)
            siftDown(0)
            floor = x[Int(top[0])]
        }
    }

    /// logits[r] = exact head row r · x for the rows r in top[0..<count]; xq holds x quantised.
    @inline(__always)
    func rescore(_ top: UnsafePointer<Int32>, count: Int, _ xq: Q8Activations, _ logits: UnsafeMutablePointer<Float>) {
        for j in 0..<count {
            let r = Int(top[j])
            logits[r] = dotQuantized(exact.type, exact.row(r), xq, cols: exact.cols)
        }
    }
}

/// One token's screened logits (a reusable object owned by a decode or batch state, so a decode
/// step allocates nothing): the screen as a parallel loop over row groups, the best
/// `candidates` rows chosen on the calling thread (bk_top_rows), then those rows recomputed
/// exactly as a second parallel loop.
public final class ScreenedLogits: ParallelTasks, @unchecked Sendable {
    public let pool: ThreadPool
    /// The screened head, or where to make it: a model's screen (16 MB for the default model,
    /// 94 MB for Gemma 3 270M's 262k-row head) is made by the first token that reads it, so a
    /// chat that never goes below 0.7 never pays for it.
    private var made: ScreenedHead?
    private let transformer: Transformer?
    public var head: ScreenedHead {
        if let made { return made }
        let h = transformer!.screenedHead(makingOn: pool)!
        made = h
        return h
    }
    /// [candidates] the rows recomputed for the current token.
    public let top: UnsafeMutablePointer<Int32>
    private var xq: Q8Activations?
    private var logits: UnsafeMutablePointer<Float>?
    private var groupsPerTask = 0
    private var rescoring = false

    public init(head: ScreenedHead, pool: ThreadPool) {
        made = head; transformer = nil; self.pool = pool
        top = .allocate(capacity: head.candidates)
    }

    /// For `transformer`'s head, made on first use; nil when that head cannot be screened.
    public init?(transformer: Transformer, pool: ThreadPool) {
        guard ScreenedHead.supports(transformer.output) else { return nil }
        made = nil; self.transformer = transformer; self.pool = pool
        top = .allocate(capacity: ScreenedHead.candidates(for: transformer.output))
    }
    deinit { top.deallocate() }

    /// logits [rows] for the input quantised in xq.
    public func run(_ xq: Q8Activations, _ logits: UnsafeMutablePointer<Float>) {
        let head = self.head
        self.xq = xq; self.logits = logits
        let groups = head.rows / 8, tasks = 4 * pool.threads
        groupsPerTask = (groups + tasks - 1) / tasks
        rescoring = false
        pool.parallelFor(tasks, self)
        bk_top_rows(logits, Int32(head.rows), Int32(head.candidates), top)
        rescoring = true
        pool.parallelFor(pool.threads, self)
        self.xq = nil; self.logits = nil
    }

    public func runTask(_ t: Int) {
        guard let xq, let logits, let head = made else { return }
        if rescoring {
            let n = head.candidates, per = (n + pool.threads - 1) / pool.threads
            let lo = t * per, hi = min(n, lo + per)
            if lo < hi { head.rescore(top + lo, count: hi - lo, xq, logits) }
            return
        }
        let g0 = t * groupsPerTask, g1 = min(head.rows / 8, g0 + groupsPerTask)
        if g0 < g1 { head.screenRows(groups: g0, g1, xq, logits + 8 * g0) }
    }
}

extension Transformer {
    /// The model's screened head, made on first use (nil when its head type cannot be screened),
    /// by the caller's pool: the one the caller already runs on, so a single-threaded session
    /// on a lane of a shared pool (`ThreadPool.forEachItem`) never starts a job on the pool it
    /// runs inside (which would wait on itself for ever).
    public func screenedHead(makingOn pool: ThreadPool) -> ScreenedHead? {
        screenedHeadStore.withLock { stored in
            if let stored { return stored }
            guard ScreenedHead.supports(output) else { return nil }
            let made = ScreenedHead(head: output, pool: pool)
            stored = made
            return made
        }
    }
}

/// Which output head a token that runs few layers reads (`--head`).
public enum HeadChoice: String, Sendable, CaseIterable {
    /// The screened head for tokens that run at most two thirds of the layers, the exact head
    /// otherwise: the product's default (the chat, `generate`, `bench` and every `eval`).
    case screened
    /// Always the exact head: what training measures with, and the figures before 2026-12-07.
    case exact
    /// The product's default.
    public static let standard = HeadChoice.screened

    /// What a decode and a batch state that read `transformer`'s head under this choice hold
    /// (one object for both: they run one at a time on `pool`); nil reads the exact head.
    public func screen(for transformer: Transformer, pool: ThreadPool) -> ScreenedLogits? {
        self == .screened ? ScreenedLogits(transformer: transformer, pool: pool) : nil
    }
}

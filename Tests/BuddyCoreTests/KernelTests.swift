import BuddyCore
import BuddyTestSupport
import CKernels
import XCTest

/// Every fast kernel against its scalar twin, at odd lengths, on both the AVX2 and the
/// portable C paths.
final class KernelTests: XCTestCase {
    override func tearDown() { bk_force_portable(0); bk_force_no_vnni(0) }

    /// Runs `body` on every kernel path this machine has: AVX-512 VNNI (where present),
    /// AVX2 and the portable C code.
    func bothPaths(_ body: (String) throws -> Void) rethrows {
        for (portable, noVNNI) in [(false, false), (false, true), (true, false)] {
            bk_force_portable(portable ? 1 : 0)
            bk_force_no_vnni(noVNNI ? 1 : 0)
            if !portable && !noVNNI && bk_has_vnni() == 0 { continue }   // no VNNI here: the next pass is AVX2
            try body(portable ? "portable" : bk_has_vnni() != 0 ? "vnni" : (bk_has_avx2() != 0 ? "avx2" : "native"))
        }
        bk_force_portable(0)
        bk_force_no_vnni(0)
    }

    func randomBlocks(_ type: GGMLType, blocks: Int, _ r: inout TestRandom) -> [UInt8] { randomQuantBlocks(type, blocks: blocks, &r) }

    func testKernelPathSetsTheDispatchItNames() throws {
        try KernelPath.portable.apply()
        XCTAssertEqual(bk_has_avx2(), 0)
        XCTAssertEqual(bk_has_vnni(), 0)
        XCTAssertEqual(KernelPath.active, "portable C")
        try KernelPath.auto.apply()
        let hasAVX2 = bk_has_avx2() != 0, hasVNNI = bk_has_vnni() != 0
        XCTAssertEqual(KernelPath.active, hasVNNI ? "AVX-512 VNNI (256-bit vectors)" : hasAVX2 ? "AVX2" : "portable C")
        if hasAVX2 {
            try KernelPath.avx2.apply()
            XCTAssertEqual(bk_has_avx2(), 1)
            XCTAssertEqual(bk_has_vnni(), 0, "the AVX2 path never takes the VNNI kernels")
            XCTAssertEqual(KernelPath.active, "AVX2")
        } else {
            XCTAssertThrowsError(try KernelPath.avx2.apply()) { error in
                XCTAssertTrue("\(error)".contains("no AVX2"), "\(error)")
            }
        }
        try KernelPath.auto.apply()
        XCTAssertEqual(bk_has_vnni() != 0, hasVNNI)
    }

    func testBlockLayoutsArePinned() {
        XCTAssertEqual(GGMLType.q4_0.layout!.bytes, 18)
        XCTAssertEqual(GGMLType.q4_1.layout!.bytes, 20)
        XCTAssertEqual(GGMLType.q8_0.layout!.bytes, 34)
        XCTAssertEqual(GGMLType.q5_0.layout!.bytes, 22)
        XCTAssertEqual(GGMLType.q5_1.layout!.bytes, 24)
        XCTAssertEqual(GGMLType.q5_K.layout!.bytes, 176)
        XCTAssertEqual(GGMLType.q5_0.layout!.elements, 32)
        XCTAssertEqual(GGMLType.q5_K.layout!.elements, 256)
        XCTAssertEqual(QK.q5_0Bytes, 2 + 4 + 16)
        XCTAssertEqual(QK.q5_1Bytes, 2 + 2 + 4 + 16)
        XCTAssertEqual(QK.q5_KBytes, 2 + 2 + 12 + 32 + 128)
        XCTAssertEqual(GGMLType.q4_K.layout!.bytes, 144)
        XCTAssertEqual(GGMLType.q6_K.layout!.bytes, 210)
        XCTAssertEqual(GGMLType.q4_1.layout!.elements, 32)
    }

    func testHandComputedQ4_1Block() {
        // d = 0.5, m = -1: weight j = 0.5 * q_j - 1. Low nibbles 0..15, high nibbles 15..0.
        var block: [UInt8] = []
        withUnsafeBytes(of: Float16(0.5).bitPattern) { block += $0 }
        withUnsafeBytes(of: Float16(-1).bitPattern) { block += $0 }
        for j in 0..<16 { block.append(UInt8(j) | UInt8(15 - j) << 4) }
        var out = [Float](repeating: 0, count: 32)
        block.withUnsafeBytes { dequantizeRowRef(.q4_1, $0.baseAddress!, &out, count: 32) }
        XCTAssertEqual(out[0], -1); XCTAssertEqual(out[15], 6.5); XCTAssertEqual(out[16], 6.5); XCTAssertEqual(out[31], -1)
        var fast = [Float](repeating: 0, count: 32)
        block.withUnsafeBytes { dequantizeRow(.q4_1, $0.baseAddress!, &fast, count: 32) }
        XCTAssertEqual(fast, out)
    }

    func testHandComputedQ5Blocks() {
        // Nibbles 0..15 low, 15..0 high; qh = 0xF0F0_0001 sets the fifth bit of weights 0,
        // 20-23 and 28-31.
        let qh: UInt32 = 0xF0F0_0001
        var nibbles: [UInt8] = []
        for j in 0..<16 { nibbles.append(UInt8(j) | UInt8(15 - j) << 4) }
        var want = [Float](repeating: 0, count: 32)
        for k in 0..<32 {
            let q = (k < 16 ? k : 31 - k) + (qh >> UInt32(k) & 1 == 1 ? 16 : 0)
            want[k] = Float(q)
        }
        XCTAssertEqual(Array(want[0..<2]), [16, 1]); XCTAssertEqual(want[20], 27); XCTAssertEqual(want[19], 12)
        for (type, header) in [(GGMLType.q5_0, [Float16(0.5)]), (.q5_1, [Float16(0.5), Float16(-1)])] {
            var block: [UInt8] = []
            for h in header { withUnsafeBytes(of: h.bitPattern) { block += $0 } }
            withUnsafeBytes(of: qh.littleEndian) { block += $0 }
            block += nibbles
            XCTAssertEqual(block.count, type.layout!.bytes)
            let expected = want.map { type == .q5_0 ? 0.5 * ($0 - 16) : 0.5 * $0 - 1 }
            var ref = [Float](repeating: .nan, count: 32), fast = ref
            block.withUnsafeBytes {
                dequantizeRowRef(type, $0.baseAddress!, &ref, count: 32)
                dequantizeRow(type, $0.baseAddress!, &fast, count: 32)
            }
            XCTAssertEqual(ref, expected, "\(type)")
            XCTAssertEqual(fast, expected, "\(type)")
        }
    }

    func testHalfConversionMatchesSwiftFloat16() {
        var r = TestRandom(3)
        for bits in stride(from: 0, to: 65536, by: 1) {
            let h = UInt16(bits)
            let want = Float(Float16(bitPattern: h))
            let got = bk_half_to_float(h)
            if want.isNaN { XCTAssertTrue(got.isNaN) } else { XCTAssertEqual(got, want, "bits \(h)") }
        }
        let specials: [Float] = [0, -0, 1, -1, 65504, 65520, 1e-8, 6e-8, 3e-5, .infinity, -.infinity, 0.1, 2049, 2051]
        for f in specials + r.floats(2000, -70000, 70000) + r.floats(2000, -1e-4, 1e-4) {
            XCTAssertEqual(bk_float_to_half(f), Float16(f).bitPattern, "value \(f)")
        }
    }

    func testQuantizeActivationsMatchesReference() {
        var r = TestRandom(11)
        for n in [32, 96, 32 * 17, 1536] {
            let x = r.floats(n, -3, 3)
            bothPaths { path in
                var fast = Q8Activations(capacity: n), ref = Q8Activations(capacity: n)
                defer { fast.deallocate(); ref.deallocate() }
                x.withUnsafeBufferPointer { fast.quantize($0.baseAddress!, count: n); ref.quantizeRef($0.baseAddress!, count: n) }
                XCTAssertEqual(Array(UnsafeBufferPointer(start: fast.qs, count: n)), Array(UnsafeBufferPointer(start: ref.qs, count: n)), path)
                XCTAssertEqual(Array(UnsafeBufferPointer(start: fast.d, count: n / 32)), Array(UnsafeBufferPointer(start: ref.d, count: n / 32)), path)
                XCTAssertEqual(Array(UnsafeBufferPointer(start: fast.sums, count: n / 32)), Array(UnsafeBufferPointer(start: ref.sums, count: n / 32)), path)
                XCTAssertEqual(Array(UnsafeBufferPointer(start: fast.ds, count: n / 32)), Array(UnsafeBufferPointer(start: ref.ds, count: n / 32)), path)
            }
        }
        // An all-zero block quantises to zeros with a zero scale (no division by zero).
        var z = Q8Activations(capacity: 32)
        defer { z.deallocate() }
        let zeros = [Float](repeating: 0, count: 32)
        zeros.withUnsafeBufferPointer { z.quantize($0.baseAddress!, count: 32) }
        XCTAssertEqual(z.d[0], 0); XCTAssertEqual(z.sums[0], 0)
    }

    func testQuantizedDotsMatchReferenceAtOddBlockCounts() throws {
        var r = TestRandom(5)
        let refs: [(GGMLType, (UnsafeRawPointer, Q8Activations, Int) -> Float)] = [
            (.q4_0, dotQ4_0Ref), (.q4_1, dotQ4_1Ref), (.q8_0, dotQ8_0Ref), (.q5_0, dotQ5_0Ref), (.q5_1, dotQ5_1Ref),
            (.q4_K, dotQ4_KRef), (.q5_K, dotQ5_KRef), (.q6_K, dotQ6_KRef),
        ]
        for (type, ref) in refs {
            for blocks in type.isKQuant ? [1, 2, 3, 5] : [1, 3, 7, 17, 33, 48] {
                let n = type.layout!.elements * blocks
                let row = randomBlocks(type, blocks: blocks, &r)
                let x = r.floats(n, -2, 2)
                var a = Q8Activations(capacity: n)
                defer { a.deallocate() }
                x.withUnsafeBufferPointer { a.quantizeRef($0.baseAddress!, count: n) }
                bothPaths { path in
                    row.withUnsafeBytes { p in
                        let want = ref(p.baseAddress!, a, blocks)
                        let got = dotQuantized(type, p.baseAddress!, a, cols: n)
                        // Same integer sums; for the 32-blocks only the float accumulation order
                        // differs, the K-quants combine each super-block in one order everywhere.
                        let tolerance: Float = type.isKQuant ? 0 : 1e-4 * max(1, abs(want))
                        XCTAssertEqual(got, want, accuracy: tolerance, "\(type) \(blocks) blocks \(path)")
                    }
                }
                // And the quantised dot approximates the exact fp32 dot of dequantised weights.
                var w = [Float](repeating: 0, count: n)
                row.withUnsafeBytes { dequantizeRowRef(type, $0.baseAddress!, &w, count: n) }
                let exact = zip(w, x).reduce(Float(0)) { $0 + $1.0 * $1.1 }
                let approx = row.withUnsafeBytes { dotQuantized(type, $0.baseAddress!, a, cols: n) }
                let scale = zip(w, x).reduce(Float(0)) { $0 + abs($1.0 * $1.1) }
                XCTAssertGreaterThan(scale, 0)
                XCTAssertEqual(approx, exact, accuracy: 0.02 * scale + 1e-5, "\(type) vs fp32")
            }
        }
    }

    func testQ8KActivationsMatchReference() throws {
        var r = TestRandom(31)
        for n in [256, 512, 1536] {
            var x = r.floats(n, -3, 3)
            // The first of two values of largest magnitude sets the scale's sign: -4 -> -127, 4 -> 127.
            x[5] = -4; x[9] = 4
            if n >= 512 { for j in 256..<512 { x[j] = 0 } }   // an all-zero super-block
            bothPaths { path in
                var fast = Q8Activations(capacity: n), ref = Q8Activations(capacity: n)
                defer { fast.deallocate(); ref.deallocate() }
                x.withUnsafeBufferPointer { fast.quantize($0.baseAddress!, count: n); ref.quantizeRef($0.baseAddress!, count: n) }
                XCTAssertTrue(fast.hasQ8K)
                XCTAssertEqual(Array(UnsafeBufferPointer(start: fast.kqs, count: n)), Array(UnsafeBufferPointer(start: ref.kqs, count: n)), path)
                XCTAssertEqual(Array(UnsafeBufferPointer(start: fast.kd, count: n / 256)), Array(UnsafeBufferPointer(start: ref.kd, count: n / 256)), path)
                XCTAssertEqual(Array(UnsafeBufferPointer(start: fast.kbsums, count: n / 16)), Array(UnsafeBufferPointer(start: ref.kbsums, count: n / 16)), path)
                XCTAssertEqual(fast.kqs[5], -127); XCTAssertEqual(fast.kqs[9], 127)
                XCTAssertEqual(fast.kd[0], 4 / 127, accuracy: 1e-7)
                if n >= 512 { XCTAssertEqual(fast.kd[1], 0); XCTAssertEqual(fast.kbsums[16], 0) }
                // The values reconstruct x to within half a step.
                for i in 0..<n { XCTAssertEqual(Float(fast.kqs[i]) * fast.kd[i / 256], x[i], accuracy: abs(fast.kd[i / 256]) * 0.5 + 1e-7) }
                let s0 = (0..<16).reduce(0) { $0 + Int(fast.kqs[$1]) }
                XCTAssertEqual(Int(fast.kbsums[0]), s0)
            }
        }
    }

    func testFastDequantizeMatchesReference() throws {
        var r = TestRandom(8)
        for type in [GGMLType.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K] {
            for blocks in [1, 5, 19] {
                let count = blocks * type.layout!.elements
                let row = randomBlocks(type, blocks: blocks, &r)
                var a = [Float](repeating: 0, count: count), b = a
                bothPaths { path in
                    row.withUnsafeBytes {
                        dequantizeRowRef(type, $0.baseAddress!, &a, count: count)
                        dequantizeRow(type, $0.baseAddress!, &b, count: count)
                    }
                    XCTAssertEqual(a, b, "\(type) \(path)")
                }
            }
        }
    }

    func testFloatKernelsMatchReferenceAtOddLengths() throws {
        var r = TestRandom(13)
        for n in [1, 7, 8, 15, 16, 17, 33, 64, 100, 577] {
            let x = r.floats(n), y = r.floats(n)
            bothPaths { path in
                XCTAssertEqual(dotF32(x, y, count: n), dotF32Ref(x, y, count: n), accuracy: 1e-5 * Float(n), "dot \(n) \(path)")
                var y1 = y, y2 = y
                axpyF32(0.37, x, &y1, count: n)
                axpyF32Ref(0.37, x, &y2, count: n)
                for i in 0..<n { XCTAssertEqual(y1[i], y2[i], accuracy: 1e-6, "axpy \(n) \(path)") }
                var h = x
                bk_round_to_half(&h, Int32(n))
                for i in 0..<n { XCTAssertEqual(h[i], Float(Float16(x[i])), "round \(n) \(path)") }
            }
        }
    }

    /// F16 and BF16 weight rows (what an F16 GGUF holds everywhere) through the decode
    /// matvec, against the scalar reference of dequantised weights, at odd lengths.
    func testHalfPrecisionMatVecMatchesReference() throws {
        var r = TestRandom(44)
        for type in [GGMLType.f16, .bf16] {
            for cols in [1, 15, 16, 17, 33, 576] {
                let rows = 5
                let w = r.floats(rows * cols, -1, 1)
                let bits: [UInt16] = w.map { type == .f16 ? Float16($0).bitPattern : UInt16($0.bitPattern >> 16) }
                let x = r.floats(cols, -2, 2)
                bothPaths { path in
                    bits.withUnsafeBytes { raw in
                        let m = QuantMatrix(name: "w", type: type, rows: rows, cols: cols, data: raw.baseAddress!)
                        let a = Q8Activations(capacity: 576)
                        defer { a.deallocate() }
                        let mv = MatVec(pool: ThreadPool.shared(threads: 1), maxCols: cols)
                        var y = [Float](repeating: .nan, count: rows), scratch = [Float](repeating: 0, count: cols)
                        x.withUnsafeBufferPointer { mv.run(m, $0.baseAddress!, a, &y) }
                        for i in 0..<rows {
                            let want = x.withUnsafeBufferPointer { m.dotReference(row: i, $0.baseAddress!, scratch: &scratch) }
                            // Exact widening on both sides: only the summation order differs.
                            XCTAssertEqual(y[i], want, accuracy: 1e-5 * Float(cols), "\(type) cols \(cols) row \(i) \(path)")
                            // And the widened weight is the stored one (F16: round to nearest; BF16: truncation).
                            let w0: Float = type == .f16 ? Float(Float16(w[i * cols])) : Float(bitPattern: UInt32(bits[i * cols]) << 16)
                            var one = [Float](repeating: 0, count: cols); one[0] = 1
                            let picked = one.withUnsafeBufferPointer { m.dot(row: i, $0.baseAddress!, a, scratch: &scratch) }
                            XCTAssertEqual(picked, w0, "\(type) element 0 row \(i) \(path)")
                        }
                    }
                }
            }
        }
    }

    func testMatVecAcrossThreadsMatchesSingleRows() {
        var r = TestRandom(21)
        let rows = 37, cols = 96
        let data = randomBlocks(.q4_1, blocks: rows * cols / 32, &r)
        let x = r.floats(cols)
        data.withUnsafeBytes { raw in
            let m = QuantMatrix(name: "w", type: .q4_1, rows: rows, cols: cols, data: raw.baseAddress!)
            var a = Q8Activations(capacity: cols)
            defer { a.deallocate() }
            x.withUnsafeBufferPointer { a.quantize($0.baseAddress!, count: cols) }
            for threads in [1, 2, 3] {
                let mv = MatVec(pool: ThreadPool.shared(threads: threads), maxCols: cols)
                var y = [Float](repeating: .nan, count: rows)
                x.withUnsafeBufferPointer { mv.run(m, $0.baseAddress!, a, &y) }
                for i in 0..<rows {
                    XCTAssertEqual(y[i], dotQ4_1Ref(m.row(i), a, blocks: cols / 32), accuracy: 1e-4, "row \(i) threads \(threads)")
                }
            }
        }
    }

    /// The batched product gives exactly the matvec's numbers for every token (the prompt path
    /// must be bit-identical to decoding token by token), including the tokens left over
    /// after groups of four.
    func testGemmIsBitIdenticalToMatVecPerToken() throws {
        var r = TestRandom(23)
        let rows = 37, cols = 96, blocks = cols / 32   // 37 rows: several row blocks of the prompt kernels
        for type in [GGMLType.q4_0, .q4_1, .q5_0, .q5_1, .q8_0] {
            let data = randomBlocks(type, blocks: rows * blocks, &r)
            let rowBytes = blocks * type.layout!.bytes
            for n in [1, 4, 6, 9] {
                let x = r.floats(n * cols, -2, 2)
                var simdResults: [[Float]] = []
                defer { if simdResults.count == 2 { XCTAssertEqual(simdResults[0], simdResults[1], "\(type) n \(n): VNNI equals AVX2") } }
                bothPaths { path in
                    let qs = UnsafeMutablePointer<Int8>.allocate(capacity: n * cols)
                    let d = UnsafeMutablePointer<Float>.allocate(capacity: n * blocks), ds = UnsafeMutablePointer<Float>.allocate(capacity: n * blocks)
                    let sums = UnsafeMutablePointer<Int32>.allocate(capacity: n * blocks)
                    defer { qs.deallocate(); d.deallocate(); ds.deallocate(); sums.deallocate() }
                    x.withUnsafeBufferPointer { xp in
                        for t in 0..<n {
                            bk_quantize_q8(xp.baseAddress! + t * cols, Int32(cols), qs + t * cols, d + t * blocks, sums + t * blocks, ds + t * blocks)
                        }
                    }
                    var batch = [Float](repeating: .nan, count: n * rows), single = batch
                    data.withUnsafeBytes { w in
                        bk_gemm_q(Int32(type.rawValue), w.baseAddress!, rowBytes, 0, Int32(rows), Int32(cols), Int32(n), qs, d, sums, ds, &batch, Int32(rows))
                        single.withUnsafeMutableBufferPointer { y in
                            for t in 0..<n {
                                bk_matvec_q(Int32(type.rawValue), w.baseAddress!, rowBytes, 0, Int32(rows), Int32(cols),
                                            qs + t * cols, d + t * blocks, sums + t * blocks, ds + t * blocks, y.baseAddress! + t * rows)
                            }
                        }
                    }
                    XCTAssertEqual(batch, single, "\(type) n \(n) \(path)")
                    XCTAssertFalse(batch.contains { $0.isNaN }, "\(type) n \(n) \(path)")
                    if path != "portable" { simdResults.append(batch) }
                }
            }
        }
    }

    /// `BatchedProduct` on two threads equals the matvec for every token: the K-quants, and the
    /// 32-weight types at lengths where the threads split the tokens (16 and more, one not a
    /// multiple of four) as well as the rows.
    func testKQuantGemmIsBitIdenticalToMatVecPerToken() throws {
        var r = TestRandom(29)
        let rows = 5, cols = 512
        for type in [GGMLType.q4_K, .q5_K, .q6_K, .q4_1, .q8_0] {
            let data = randomBlocks(type, blocks: rows * cols / type.layout!.elements, &r)
            for n in [1, 3, 6, 16, 21, 40] {
                let x = r.floats(n * cols, -2, 2)
                bothPaths { path in
                    let product = BatchedProduct(rows: n, cols: cols, pool: ThreadPool.shared(threads: 2))
                    var y = [Float](repeating: .nan, count: n * rows)
                    data.withUnsafeBytes { raw in
                        let m = QuantMatrix(name: "w", type: type, rows: rows, cols: cols, data: raw.baseAddress!)
                        x.withUnsafeBufferPointer { product.run(m, $0.baseAddress!, n: n, &y, ldy: rows) }
                        for t in 0..<n {
                            var a = Q8Activations(capacity: cols)
                            defer { a.deallocate() }
                            x.withUnsafeBufferPointer { a.quantize($0.baseAddress! + t * cols, count: cols) }
                            for i in 0..<rows { XCTAssertEqual(y[t * rows + i], dotQuantized(type, m.row(i), a, cols: cols), "\(type) n \(n) token \(t) row \(i) \(path)") }
                        }
                    }
                }
            }
        }
    }

    func testThreadPoolRunsEveryTaskOnce() {
        let pool = ThreadPool.shared(threads: 2)
        for count in [0, 1, 2, 5, 64] {
            var hits = [Int](repeating: 0, count: count)
            hits.withUnsafeMutableBufferPointer { h in
                let base = h.baseAddress
                pool.parallelFor(count) { i in base![i] += 1 }
            }
            XCTAssertEqual(hits, [Int](repeating: 1, count: count))
        }
    }
}

/// Our scalar dequantisation against the `gguf` Python package's, for every block type we read
/// (fixture from scripts/make_quant_fixtures.py).
final class DequantizeFixtureTests: XCTestCase {
    func testDequantizationMatchesGGUFReference() throws {
        let j = try TestSupport.fixture("quant_blocks.json")
        let cases = j["cases"] as! [[String: Any]]
        let types: [String: GGMLType] = ["Q4_0": .q4_0, "Q4_1": .q4_1, "Q8_0": .q8_0, "Q4_K": .q4_K, "Q6_K": .q6_K,
                                       "Q5_0": .q5_0, "Q5_1": .q5_1, "Q5_K": .q5_K]
        XCTAssertEqual(Set(cases.map { $0["type"] as! String }), Set(types.keys))
        for c in cases {
            let type = types[c["type"] as! String]!
            let hex = c["hex"] as! String
            var bytes: [UInt8] = []
            var i = hex.startIndex
            while i < hex.endIndex {
                let next = hex.index(i, offsetBy: 2)
                bytes.append(UInt8(hex[i..<next], radix: 16)!)
                i = next
            }
            let want = (c["values"] as! [Double]).map(Float.init)
            var got = [Float](repeating: .nan, count: want.count)
            bytes.withUnsafeBytes { dequantizeRowRef(type, $0.baseAddress!, &got, count: want.count) }
            for k in 0..<want.count { XCTAssertEqual(got[k], want[k], accuracy: 1e-6 * max(1, abs(want[k])), "\(type) element \(k)") }
            var fast = [Float](repeating: .nan, count: want.count)
            bytes.withUnsafeBytes { dequantizeRow(type, $0.baseAddress!, &fast, count: want.count) }
            XCTAssertEqual(fast, got, "\(type): fast and reference dequantisation")
        }
    }
}

final class AttentionKernelTests: XCTestCase {
    /// The steering's entropy kernel against its double-precision twin: a vocabulary-sized row
    /// of logits with a realistic spread, a peaked row, a flat one, and odd lengths (tails).
    func testEntropyKernelMatchesReference() {
        var rng = SeededRNG(seed: 21)
        var rows: [[Float]] = []
        for n in [1, 7, 8, 13, 4099, 49_152] {
            rows.append((0..<n).map { _ in 12 * rng.nextUnitFloat() - 4 })
        }
        var peaked = [Float](repeating: -3, count: 49_152); peaked[777] = 25
        rows.append(peaked)
        rows.append([Float](repeating: 0.25, count: 1001))
        // Logits far below the maximum (beyond exp's float range) contribute nothing.
        var wide = (0..<4096).map { _ in 200 * rng.nextUnitFloat() - 150 }; wide[5] = 60
        rows.append(wide)
        for portable in [false, true] {
            bk_force_portable(portable ? 1 : 0)
            for row in rows {
                let fast = bk_entropy(row, Int32(row.count)), ref = bk_entropy_ref(row, Int32(row.count))
                XCTAssertEqual(fast, ref, accuracy: 1e-6 * max(1, ref), "portable \(portable), n = \(row.count)")
            }
        }
        bk_force_portable(0)
        XCTAssertEqual(bk_entropy_ref([0, 0, 0, 0], 4), log(4.0), accuracy: 1e-12)
    }

    /// The fused attention kernel against its scalar twin, with holes (masked positions), at
    /// odd lengths, with and without half-precision weights.
    func testAttentionMatchesReference() throws {
        let file = try TinyModel.writer(arch: "llama", seed: 4).parse()
        let t = try Transformer(file: file)
        let c = t.config
        var r = TestRandom(77)
        for n in [1, 2, 7, 33] {
            let cache = KVCache(layers: c.layers, capacity: 40, kvDim: c.kvDim)
            for p in 0..<n {
                cache.key(1, p).update(from: r.floats(c.kvDim, -2, 2), count: c.kvDim)
                cache.value(1, p).update(from: r.floats(c.kvDim, -2, 2), count: c.kvDim)
                cache.setPresent(1, p, p % 3 != 1 || p == n - 1)
            }
            let q = r.floats(c.headDim, -2, 2)
            for half in [false, true] {
                for kvHead in 0..<c.kvHeads {
                    var s1 = [Float](repeating: 0, count: 40), s2 = s1
                    var o1 = [Float](repeating: 0, count: c.headDim), o2 = o1
                    t.attendHeadRef(q: q, kvHead: kvHead, layer: 1, pos: n - 1, cache: cache, scores: &s1, out: &o1, halfWeights: half)
                    // attendHead is internal; reach it through the public decode path's kernel entry
                    bk_attend(q, cache.key(1, 0) + kvHead * c.headDim, cache.value(1, 0) + kvHead * c.headDim, c.kvDim,
                              cache.present + 1 * cache.capacity, Int32(n), Int32(c.headDim), 1 / Float(c.headDim).squareRoot(),
                              half ? 1 : 0, &s2, &o2)
                    for i in 0..<c.headDim { XCTAssertEqual(o1[i], o2[i], accuracy: 1e-5, "n \(n) half \(half) head \(kvHead)") }
                }
            }
        }
    }
}

extension AttentionKernelTests {
    /// Head sizes 64 and 128 take the register-accumulator path; 24 the generic one.
    func testAttentionKernelAgainstScalarAtRealHeadSizes() {
        var r = TestRandom(91)
        for hd in [24, 64, 128] {
            for n in [1, 3, 4, 5, 37] {
                let stride = 3 * hd + 8
                let keys = r.floats(n * stride, -1, 1), values = r.floats(n * stride, -1, 1)
                var present = (0..<n).map { UInt8($0 % 4 == 2 ? 0 : 1) }
                present[n - 1] = 1
                let q = r.floats(hd, -2, 2)
                let scale = 1 / Float(hd).squareRoot()
                // scalar softmax attention
                var s = [Double](repeating: -.infinity, count: n)
                for t in 0..<n where present[t] != 0 { s[t] = (0..<hd).reduce(0.0) { $0 + Double(q[$1] * keys[t * stride + hd + $1]) } * Double(scale) }
                let m = s.max()!
                let e = s.map { $0 == -.infinity ? 0 : exp($0 - m) }
                let z = e.reduce(0, +)
                let want = (0..<hd).map { i in (0..<n).reduce(0.0) { $0 + e[$1] / z * Double(values[$1 * stride + hd + i]) } }
                var scores = [Float](repeating: 0, count: n), out = [Float](repeating: .nan, count: hd)
                keys.withUnsafeBufferPointer { k in values.withUnsafeBufferPointer { v in
                    bk_attend(q, k.baseAddress! + hd, v.baseAddress! + hd, stride, present, Int32(n), Int32(hd), scale, 0, &scores, &out)
                } }
                for i in 0..<hd { XCTAssertEqual(Double(out[i]), want[i], accuracy: 1e-5, "hd \(hd) n \(n) lane \(i)") }
            }
        }
    }
}

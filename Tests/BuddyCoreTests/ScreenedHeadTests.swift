import BuddyCore
import BuddyTestSupport
import CKernels
import Foundation
import XCTest

/// The screened output head: its kernel against the scalar twin and the portable path, its
/// candidate choice, the exact rows it recomputes, and where the forward pass reads it.
final class ScreenedHeadTests: XCTestCase {
    /// A random Q8_0 head [rows × cols] in memory (scales as halves, weights in −127...127).
    final class Q8Head {
        let bytes: UnsafeMutableRawPointer
        let matrix: QuantMatrix
        init(rows: Int, cols: Int, seed: UInt64) {
            var r = TestRandom(seed)
            let rowBytes = cols / 32 * 34
            bytes = .allocate(byteCount: rows * rowBytes, alignment: 64)
            for row in 0..<rows {
                for b in 0..<cols / 32 {
                    let p = bytes + row * rowBytes + b * 34
                    p.storeBytes(of: Float16(r.float(0.001, 0.02)).bitPattern, as: UInt16.self)
                    for i in 0..<32 { p.storeBytes(of: Int8(r.float(-127, 127)), toByteOffset: 2 + i, as: Int8.self) }
                }
            }
            matrix = QuantMatrix(name: "output.weight", type: .q8_0, rows: rows, cols: cols, data: bytes)
        }
        deinit { bytes.deallocate() }
    }

    private func quantized(_ x: [Float]) -> Q8Activations {
        var xq = Q8Activations(capacity: x.count)
        x.withUnsafeBufferPointer { xq.quantize($0.baseAddress!, count: x.count) }
        return xq
    }

    /// The vector kernel, the portable C path and the Swift twin give the same screen values;
    /// they approximate the exact head to 4-bit accuracy.
    func testScreenKernelEqualsTwinAndPortablePath() throws {
        let rows = 48, cols = 192
        let head = Q8Head(rows: rows, cols: cols, seed: 7)
        let screened = ScreenedHead(head: head.matrix, candidates: 5, pool: ThreadPool.shared(threads: 2))
        var r = TestRandom(8)
        let x = r.floats(cols, -2, 2)
        let xq = quantized(x)
        defer { xq.deallocate() }
        var fast = [Float](repeating: 0, count: rows), portable = fast, twin = fast, exact = fast
        bk_screen_q4(ScreenedHeadTests.screenBytes(screened), 0, Int32(rows / 8), Int32(cols), xq.qs, xq.d, xq.sums, &fast)
        bk_force_portable(1)
        bk_screen_q4(ScreenedHeadTests.screenBytes(screened), 0, Int32(rows / 8), Int32(cols), xq.qs, xq.d, xq.sums, &portable)
        bk_force_portable(0)
        screened.screenRef(xq, &twin)
        XCTAssertEqual(fast, twin)
        XCTAssertEqual(portable, twin)
        for row in 0..<rows { exact[row] = dotQuantized(.q8_0, head.matrix.row(row), xq, cols: cols) }
        let scale = exact.map(abs).max()!
        for row in 0..<rows { XCTAssertEqual(twin[row], exact[row], accuracy: 0.1 * scale, "row \(row)") }
        XCTAssertNotEqual(twin, exact)   // it is a 4-bit copy, not the head
    }

    static func screenBytes(_ h: ScreenedHead) -> UnsafeRawPointer { h.screenBase }

    /// A head whose file holds non-finite scales (an untrusted GGUF) is screened without a trap;
    /// the rows without them keep finite screen values.
    func testNonFiniteWeightsDoNotTrap() throws {
        let rows = 16, cols = 64
        let head = Q8Head(rows: rows, cols: cols, seed: 12)
        head.bytes.storeBytes(of: UInt16(0x7E00), as: UInt16.self)                          // row 0, block 0: NaN
        (head.bytes + cols / 32 * 34 + 34).storeBytes(of: UInt16(0x7C00), as: UInt16.self)  // row 1, block 1: +inf
        let screened = ScreenedHead(head: head.matrix, candidates: 4, pool: ThreadPool.shared(threads: 2))
        var r = TestRandom(13)
        let xq = quantized(r.floats(cols))
        defer { xq.deallocate() }
        var y = [Float](repeating: 0, count: rows)
        screened.screenRef(xq, &y)
        for row in 2..<rows { XCTAssertTrue(y[row].isFinite, "row \(row)") }
    }

    /// bk_top_rows and its twin give the same array, and it holds the largest values, ties to
    /// the lower index.
    func testTopRowsMatchTwinAndSorting() {
        var r = TestRandom(9)
        for (n, count) in [(1000, 16), (300, 300), (64, 1), (5000, 256)] {
            // Few distinct values, so there are many ties.
            let x = (0..<n).map { _ in Float(Int(r.float(0, 40))) }
            var fast = [Int32](repeating: -1, count: count), twin = fast
            bk_top_rows(x, Int32(n), Int32(count), &fast)
            x.withUnsafeBufferPointer { ScreenedHead.largest($0.baseAddress!, n, count: count, into: &twin) }
            XCTAssertEqual(fast, twin)
            let expected = Set((0..<n).sorted { x[$0] > x[$1] || (x[$0] == x[$1] && $0 < $1) }.prefix(count).map(Int32.init))
            XCTAssertEqual(Set(fast), expected, "n \(n) count \(count)")
        }
    }

    /// Screened logits: the candidates' rows carry exactly the exact head's values (the same
    /// kernel as the full head's product), every other row the screen's.
    func testCandidatesGetTheExactHeadsValues() throws {
        let rows = 256, cols = 128, candidates = 12
        let head = Q8Head(rows: rows, cols: cols, seed: 10)
        let pool = ThreadPool.shared(threads: 2)
        let screened = ScreenedHead(head: head.matrix, candidates: candidates, pool: pool)
        var r = TestRandom(11)
        let x = r.floats(cols, -2, 2)
        let xq = quantized(x)
        defer { xq.deallocate() }
        var screen = [Float](repeating: 0, count: rows), exact = screen, logits = screen
        screened.screenRef(xq, &screen)
        let matvec = MatVec(pool: pool, maxCols: cols)
        x.withUnsafeBufferPointer { matvec.run(head.matrix, $0.baseAddress!, xq, &exact) }
        logits.withUnsafeMutableBufferPointer { ScreenedLogits(head: screened, pool: pool).run(xq, $0.baseAddress!) }
        var top = [Int32](repeating: 0, count: candidates)
        ScreenedHead.largest(screen, rows, count: candidates, into: &top)
        let chosen = Set(top.map(Int.init))
        for row in 0..<rows { XCTAssertEqual(logits[row], chosen.contains(row) ? exact[row] : screen[row], "row \(row)") }
    }

    /// A head with fewer rows than the default candidates (a small vocabulary) is screened with
    /// every row a candidate, so its logits are the exact head's.
    func testASmallVocabularyRecomputesEveryRow() throws {
        let rows = 64, cols = 64
        let head = Q8Head(rows: rows, cols: cols, seed: 14)
        let pool = ThreadPool.shared(threads: 2)
        let screened = ScreenedHead(head: head.matrix, pool: pool)
        XCTAssertEqual(screened.candidates, rows)
        var r = TestRandom(15)
        let x = r.floats(cols, -2, 2)
        let xq = quantized(x)
        defer { xq.deallocate() }
        var exact = [Float](repeating: 0, count: rows), logits = exact
        x.withUnsafeBufferPointer { MatVec(pool: pool, maxCols: cols).run(head.matrix, $0.baseAddress!, xq, &exact) }
        logits.withUnsafeMutableBufferPointer { ScreenedLogits(head: screened, pool: pool).run(xq, $0.baseAddress!) }
        XCTAssertEqual(logits, exact)
    }

    /// On the real model: full depth reads the exact head whatever --head says; a token that
    /// runs at most two thirds of the layers reads the screened one, whose candidates match
    /// the exact head bit for bit; a prompt as one batch gives the token-by-token logits (to the
    /// batch path's rounding, as without the screen: StandInTests).
    func testForwardPassReadsTheScreenOnlyForShallowTokens() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, V = m.config.vocabSize
        let tokens = m.tokenizer.encode("The capital of France is Paris, and the capital of Italy is", parseSpecial: false)
        let n = tokens.count
        let pool = ThreadPool.shared(threads: 2)
        let screen = ScreenedLogits(head: try XCTUnwrap(m.transformer.screenedHead(makingOn: pool)), pool: pool)
        let shallow = (0..<L).map { $0 % 2 == 0 || $0 == L - 1 }              // 16 of 30 layers
        let deep = (0..<L).map { ![3, 9, 14, 20, 25].contains($0) }          // 25 of 30
        XCTAssertTrue(ScreenedHead.usesScreen(layersRun: shallow.filter { $0 }.count, of: L))
        XCTAssertFalse(ScreenedHead.usesScreen(layersRun: deep.filter { $0 }.count, of: L))
        XCTAssertTrue(ScreenedHead.usesScreen(layersRun: 20, of: 30))
        XCTAssertFalse(ScreenedHead.usesScreen(layersRun: 21, of: 30))
        func decode(_ runs: [Bool], screened: Bool) -> [[Float]] {
            let s = DecodeState(config: m.config, capacity: 64, pool: pool)
            s.screen = screened ? screen : nil
            let cache = KVCache(layers: L, capacity: 64, kvDim: m.config.kvDim)
            return tokens.enumerated().map { pos, tok in
                m.transformer.forward(token: tok, pos: pos, s, cache, runs: { runs[$0] }, policy: .fill)
                return Array(UnsafeBufferPointer(start: s.logits, count: V))
            }
        }
        let all = [Bool](repeating: true, count: L)
        XCTAssertEqual(decode(all, screened: true), decode(all, screened: false))
        XCTAssertEqual(decode(deep, screened: true), decode(deep, screened: false))
        let exact = decode(shallow, screened: false), cheap = decode(shallow, screened: true)
        for pos in 0..<n {
            XCTAssertNotEqual(cheap[pos], exact[pos])
            // The greedy token is among the candidates and carries the exact value.
            let best = (0..<V).max { cheap[pos][$0] < cheap[pos][$1] }!
            XCTAssertEqual(cheap[pos][best], exact[pos][best], "position \(pos)")
        }
        let lastCandidates = (0..<screen.head.candidates).map { Int(screen.top[$0]) }
        for r in lastCandidates { XCTAssertEqual(cheap[n - 1][r], exact[n - 1][r]) }
        // The same rows as one batch, per-row masks: the token-by-token logits where it matters
        // (the batch path's streams differ from decoding's in the last bits, so a row near the
        // 256th candidate may fall on the other side; the best 32 are far inside).
        let b = BatchState(config: m.config, maxTokens: n, capacity: 64, pool: pool)
        b.screen = screen
        let cache = KVCache(layers: L, capacity: 64, kvDim: m.config.kvDim, deferDim: m.config.dim)
        let rowMasks = (0..<n).map { $0 % 3 == 0 ? deep : shallow }
        m.transformer.routedForward(tokens[...], start: 0, b, cache, routing: .rows(rowMasks), policy: .fill)
        let batched = UnsafeMutablePointer<Float>.allocate(capacity: n * V)
        defer { batched.deallocate() }
        m.transformer.batchLogitsAll(n: n, b, batched)
        let s = DecodeState(config: m.config, capacity: 64, pool: pool)
        s.screen = screen
        let cache2 = KVCache(layers: L, capacity: 64, kvDim: m.config.kvDim, deferDim: m.config.dim)
        for (pos, tok) in tokens.enumerated() {
            m.transformer.routedForward(token: tok, pos: pos, s, cache2, routing: .fixed(rowMasks[pos]), policy: .fill)
            var best32 = [Int32](repeating: 0, count: 32)
            ScreenedHead.largest(s.logits, V, count: 32, into: &best32)
            for r in best32.map(Int.init) { XCTAssertEqual(batched[pos * V + r], s.logits[r], accuracy: 0.02, "row \(pos) token \(r)") }
            XCTAssertEqual(Sampler.argmax(batched + pos * V, count: V), Sampler.argmax(s.logits, count: V))
        }
    }
}

import BuddyCore
import BuddyTestSupport
import Foundation
import XCTest

/// The `fill` policy may compute a skipped layer's K/V when the token skips it or, in a cache
/// made with `deferDim`, only when a later token attends over that layer. The two schedules
/// must give the same numbers: the deferred one is what generation and evaluation use.
final class DeferredFillTests: XCTestCase {
    /// Per position, the layers run: layer 5 is skipped by the first ten tokens and run after,
    /// layers 7 and 12 by every odd token, layer 20 by every token, the rest always run.
    static func masks(layers L: Int, count n: Int) -> [[Bool]] {
        (0..<n).map { p in
            (0..<L).map { l in !((l == 5 && p < 10) || ((l == 7 || l == 12) && p % 2 == 1) || l == 20) }
        }
    }

    /// Logits of every position decoded token by token with `masks`; `deferDim` 0 computes K/V at once.
    static func decode(_ t: Transformer, _ tokens: [Int32], masks: [[Bool]], standIns: StandIns?, deferDim: Int,
                       cache existing: KVCache? = nil, from start: Int = 0, catchUp: BatchState? = nil) -> [[Float]] {
        let c = t.config
        let s = DecodeState(config: c, capacity: 64, pool: ThreadPool.shared(threads: 2))
        s.standIns = standIns
        s.catchUpBatch = catchUp
        let cache = existing ?? KVCache(layers: c.layers, capacity: 64, kvDim: c.kvDim, deferDim: deferDim)
        return tokens.enumerated().map { i, tok in
            let pos = start + i
            t.routedForward(token: tok, pos: pos, s, cache, routing: .fixed(masks[pos]), policy: .fill)
            return Array(UnsafeBufferPointer(start: s.logits, count: c.vocabSize))
        }
    }

    /// Layers 3, 9 and 14 skipped, every other layer run.
    static func skipping(layers L: Int) -> [Bool] { (0..<L).map { ![3, 9, 14].contains($0) } }

    /// A batch and a cache (deferring `fill` when deferDim > 0) after `tokens` ran as one prompt
    /// chunk at positions 0..<count with `skipping(layers:)`.
    static func promptSkippingLayers(_ t: Transformer, _ tokens: ArraySlice<Int32>, standIns: StandIns, deferDim: Int) -> (BatchState, KVCache) {
        let c = t.config
        let b = BatchState(config: c, maxTokens: tokens.count, capacity: 64, pool: ThreadPool.shared(threads: 2))
        b.standIns = standIns
        let cache = KVCache(layers: c.layers, capacity: 64, kvDim: c.kvDim, deferDim: deferDim)
        t.routedForward(tokens, start: 0, b, cache, routing: .fixed(skipping(layers: c.layers)), policy: .fill)
        return (b, cache)
    }

    func testDecodeWithDeferredFillEqualsImmediateFill() throws {
        let m = try TestSupport.model()
        let tokens = m.tokenizer.encode("The committee met again on Tuesday to discuss the budget for the new library and the park", parseSpecial: false)
        let masks = Self.masks(layers: m.config.layers, count: tokens.count)
        let standIns = StandInTests.random(config: m.config, seed: 7)
        let deferred = Self.decode(m.transformer, tokens, masks: masks, standIns: standIns, deferDim: m.config.dim)
        let immediate = Self.decode(m.transformer, tokens, masks: masks, standIns: standIns, deferDim: 0)
        XCTAssertEqual(deferred, immediate)
        // Layer 20 is never run: its K/V are never computed, and the result still matches.
        XCTAssertGreaterThan(tokens.count, 12)
    }

    /// A chunk that skips layers leaves them deferred; the next chunk computes them with the
    /// batch kernels, as the immediate schedule's batch did. Then decoding continues.
    func testBatchAndDecodeAcrossDeferredLayersEqualImmediateFill() throws {
        let m = try TestSupport.model()
        let c = m.config, L = c.layers, V = c.vocabSize
        let tokens = m.tokenizer.encode("In the spring of that year the river rose higher than anyone in the village could remember, and", parseSpecial: false)
        let n1 = 8, n2 = 8
        XCTAssertGreaterThan(tokens.count, n1 + n2 + 2)
        let skipping = Self.skipping(layers: L), all = [Bool](repeating: true, count: L)
        let standIns = StandInTests.random(config: c, seed: 9)
        func run(deferDim: Int) -> [Float] {
            let (b, cache) = Self.promptSkippingLayers(m.transformer, tokens[0..<n1], standIns: standIns, deferDim: deferDim)
            var out = [Float](repeating: 0, count: (n1 + n2) * V)
            out.withUnsafeMutableBufferPointer { o in
                m.transformer.batchLogitsAll(n: n1, b, o.baseAddress!)
                // Rows mix: even rows run every layer, odd rows skip 3, 9 and 14 again.
                let rowRuns = (0..<n2).map { $0 % 2 == 0 ? all : skipping }
                b.standIns = standIns
                m.transformer.routedForward(tokens[n1..<n1 + n2], start: n1, b, cache,
                                            routing: .perRow(FixedRows(rowRuns)), policy: .fill)
                m.transformer.batchLogitsAll(n: n2, b, o.baseAddress! + n1 * V)
            }
            // Decode the rest, skipping the same layers on every other token.
            let rest = Array(tokens[(n1 + n2)...])
            let masks = [[Bool]](repeating: all, count: n1 + n2) + rest.indices.map { $0 % 2 == 0 ? skipping : all }
            return out + Self.decode(m.transformer, rest, masks: masks, standIns: standIns, deferDim: deferDim, cache: cache, from: n1 + n2).joined()
        }
        XCTAssertEqual(run(deferDim: c.dim), run(deferDim: 0))
    }

    /// A prompt chunk that skips layers for all its positions, then decoding that runs them: the
    /// first decoded token catches the chunk's K/V up as one batch (a session's decode state
    /// has its batch for that), and everything equals filling them at once.
    func testDecodeCatchesUpAPromptsDeferredLayersInOneBatch() throws {
        let m = try TestSupport.model()
        let c = m.config, L = c.layers
        let tokens = m.tokenizer.encode("The old lighthouse keeper climbed the stairs every evening at dusk, lit the lamp, and wrote in his log what ships had passed", parseSpecial: false)
        let n = 16   // at least Transformer.batchedCatchUp (8) deferred positions per layer
        XCTAssertGreaterThan(tokens.count, n + 4)
        let skipping = Self.skipping(layers: L), all = [Bool](repeating: true, count: L)
        let standIns = StandInTests.random(config: c, seed: 11)
        func run(deferDim: Int) -> [Float] {
            let (b, cache) = Self.promptSkippingLayers(m.transformer, tokens[0..<n], standIns: standIns, deferDim: deferDim)
            let rest = Array(tokens[n...])
            let masks = [[Bool]](repeating: skipping, count: n) + rest.indices.map { $0 % 3 == 2 ? skipping : all }
            return Self.decode(m.transformer, rest, masks: masks, standIns: standIns, deferDim: deferDim,
                               cache: cache, from: n, catchUp: b).joined().map { $0 }
        }
        XCTAssertEqual(run(deferDim: c.dim), run(deferDim: 0))
    }

    /// Rewinding forgets deferred slots: a second conversation at full depth in the same cache
    /// equals one in a fresh cache.
    func testTruncateForgetsDeferredSlots() throws {
        let m = try TestSupport.model()
        let c = m.config
        let tokens = m.tokenizer.encode("A short line of text to decode twice over", parseSpecial: false)
        let cache = KVCache(layers: c.layers, capacity: 64, kvDim: c.kvDim, deferDim: c.dim)
        let skipping = [[Bool]](repeating: (0..<c.layers).map { ![4, 5, 6].contains($0) }, count: tokens.count)
        _ = Self.decode(m.transformer, tokens, masks: skipping, standIns: nil, deferDim: c.dim, cache: cache)
        cache.truncate(to: 0)
        let full = [[Bool]](repeating: m.transformer.fullDepthMask, count: tokens.count)
        let again = Self.decode(m.transformer, tokens, masks: full, standIns: nil, deferDim: c.dim, cache: cache)
        XCTAssertEqual(again, Self.decode(m.transformer, tokens, masks: full, standIns: nil, deferDim: 0))
    }

    /// Gemma 3's keys (per-head norm, the layer's RoPE base) follow the same two schedules.
    func testGemmaDeferredFillEqualsImmediateFill() throws {
        let t = try Transformer(file: TinyGemma3.writer(seed: 5).parse())
        let tokens: [Int32] = [2, 17, 42, 5, 79, 0, 11, 64, 33, 8, 21, 3]
        let L = t.config.layers
        let masks = (0..<tokens.count).map { p in (0..<L).map { l in l == 0 || l == L - 1 || (p % 3 != 1) || p > 8 } }
        XCTAssertTrue(masks.contains { !$0.allSatisfy { $0 } })
        XCTAssertEqual(Self.decode(t, tokens, masks: masks, standIns: nil, deferDim: t.config.dim),
                       Self.decode(t, tokens, masks: masks, standIns: nil, deferDim: 0))
    }
}

/// A per-row selector with fixed decisions.
private final class FixedRows: RowwiseLayerSelector {
    let rows: [[Bool]]
    init(_ rows: [[Bool]]) { self.rows = rows }
    func selectLayers(rowsFrom chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [[Bool]] { Array(rows.prefix(count)) }
    func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] { rows[0] }
    func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool] { rows[0] }
}

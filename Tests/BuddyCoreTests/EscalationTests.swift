import BuddyCore
import BuddyTestSupport
import Foundation
import XCTest

/// A decode step that an `EscalatingSelector` has run again at full depth: every layer
/// rewrites its K/V slot at the step's position, so nothing the routed pass stored or
/// deferred there survives, and the step costs both passes.
final class EscalationTests: XCTestCase {
    /// Routes each position with a fixed mask and asks for the step again where `again` says.
    private final class Escalating: EscalatingSelector {
        let masks: [[Bool]]
        let again: (Int) -> Bool
        private(set) var asked = 0
        private var position = 0
        init(masks: [[Bool]], again: @escaping (Int) -> Bool) { self.masks = masks; self.again = again }
        func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] {
            self.position = position
            return masks[position]
        }
        func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool] { masks[chunkStart] }
        func escalates(logits: UnsafePointer<Float>, count: Int) -> Bool { asked += 1; return again(position) }
    }

    /// Every step run again: the logits are full depth's bit for bit (the cache holds only
    /// full-depth K/V), under deferred fill with stand-ins, and each step counts both passes.
    func testEveryStepRunAgainEqualsFullDepth() throws {
        let m = try TestSupport.model()
        let c = m.config, L = c.layers
        let tokens = m.tokenizer.encode("The committee met again on Tuesday to discuss the budget for the new library", parseSpecial: false)
        let masks = DeferredFillTests.masks(layers: L, count: tokens.count)
        func decode(_ selector: LayerSelector?) throws -> (logits: [[Float]], layers: Int, session: Session) {
            let s = Session(model: m, capacity: 64, threads: 2, batchSize: 16)
            s.standIns = StandInTests.random(config: c, seed: 3)
            s.promptDepth = .full
            s.selector = selector
            try s.evaluate([tokens[0]])
            var out: [[Float]] = []
            for tok in tokens.dropFirst() {
                try s.step(tok)
                out.append(Array(UnsafeBufferPointer(start: s.decode.logits, count: c.vocabSize)))
                if selector != nil {
                    XCTAssertEqual(s.lastMask, m.transformer.fullDepthMask, "the step ran every layer in the end")
                    XCTAssertEqual(s.lastRerunLayers, Session.count(masks[s.tokens.count - 1]))
                }
            }
            return (out, s.layerTokenCount, s)
        }
        let escalating = Escalating(masks: masks, again: { _ in true })
        let rerun = try decode(escalating)
        let full = try decode(nil)
        XCTAssertEqual(rerun.logits, full.logits)
        XCTAssertEqual(escalating.asked, tokens.count - 1)
        let routed = (1..<tokens.count).reduce(0) { $0 + Session.count(masks[$1]) }
        XCTAssertEqual(rerun.layers - full.layers, routed, "each step costs its routed pass as well")
        XCTAssertEqual(rerun.session.lastRerunLayers, Session.count(masks[tokens.count - 1]))
        try rerun.session.evaluate(Array(tokens.prefix(3)))
        XCTAssertEqual(rerun.session.lastRerunLayers, 0, "a prompt ran once")
    }

    /// Every third step run again, the others skipping layers: deferring `fill`'s K/V gives the
    /// same logits as computing them at once, so a slot deferred by a routed pass and rewritten
    /// by its second pass is never filled again from the stale input. A step that runs every
    /// layer is not asked.
    func testSomeStepsRunAgainWithDeferredFillEqualImmediateFill() throws {
        let m = try TestSupport.model()
        let c = m.config, L = c.layers
        let tokens = m.tokenizer.encode("In the spring of that year the river rose higher than anyone in the village could remember", parseSpecial: false)
        var masks = DeferredFillTests.masks(layers: L, count: tokens.count)
        masks[4] = m.transformer.fullDepthMask
        func decode(deferDim: Int) -> (logits: [[Float]], asked: Int) {
            let s = DecodeState(config: c, capacity: 64, pool: ThreadPool.shared(threads: 2))
            s.standIns = StandInTests.random(config: c, seed: 5)
            let cache = KVCache(layers: L, capacity: 64, kvDim: c.kvDim, deferDim: deferDim)
            let selector = Escalating(masks: masks, again: { $0 % 3 == 1 })
            let logits = tokens.enumerated().map { pos, tok in
                let ran = m.transformer.routedForward(token: tok, pos: pos, s, cache, routing: .perChunk(selector), policy: .fill)
                XCTAssertEqual(s.rerunFromLayers, pos % 3 == 1 && pos != 4 ? Session.count(masks[pos]) : 0)
                XCTAssertEqual(ran, pos % 3 == 1 ? m.transformer.fullDepthMask : masks[pos])
                return Array(UnsafeBufferPointer(start: s.logits, count: c.vocabSize))
            }
            return (logits, selector.asked)
        }
        let deferred = decode(deferDim: c.dim), immediate = decode(deferDim: 0)
        XCTAssertEqual(deferred.logits, immediate.logits)
        XCTAssertEqual(deferred.asked, tokens.count - 1, "every step but the one at full depth is asked")
    }

    /// The gap between the two best logits, by hand.
    func testTopTwoMarginByHand() {
        let logits: [Float] = [1.5, -2, 4.25, 3.75, 4.0, 0]
        XCTAssertEqual(LogProbabilities.topTwoMargin(logits, count: logits.count), 0.25)
        let tie: [Float] = [2, 7, 7, 1]
        XCTAssertEqual(LogProbabilities.topTwoMargin(tie, count: tie.count), 0)
        let first: [Float] = [9, 1, 2]
        XCTAssertEqual(LogProbabilities.topTwoMargin(first, count: first.count), 7)
    }
}

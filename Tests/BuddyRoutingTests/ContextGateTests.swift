import BuddyCore
import BuddyRouting
import BuddyTestSupport
import Foundation
import XCTest

/// Hides that a selector can decide per row, so evaluations must step token by token.
private final class StepOnly: LayerSelector {
    let inner: LayerSelector
    var decisions: [Int: [Bool]] = [:]
    init(_ inner: LayerSelector) { self.inner = inner }
    func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] {
        let m = inner.selectLayers(position: position, state: state, cache: cache)
        decisions[position] = m
        return m
    }
    func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool] {
        inner.selectLayers(chunkStart: chunkStart, count: count, batch: batch, cache: cache)
    }
}

/// Records the per-row decisions a rowwise selector hands out.
private final class RowRecorder: RowwiseLayerSelector {
    let inner: DecisionModule
    var decisions: [Int: [Bool]] = [:]
    init(_ inner: DecisionModule) { self.inner = inner }
    func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] {
        inner.selectLayers(position: position, state: state, cache: cache)
    }
    func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool] {
        inner.selectLayers(chunkStart: chunkStart, count: count, batch: batch, cache: cache)
    }
    func selectLayers(rowsFrom chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [[Bool]] {
        let rows = inner.selectLayers(rowsFrom: chunkStart, count: count, batch: batch, cache: cache)
        for (i, r) in rows.enumerated() { decisions[chunkStart + i] = r }
        return rows
    }
}

final class ContextGateTests: XCTestCase {
    /// A module whose learned part makes the set change from token to token.
    func perTokenModule(_ m: LanguageModel, seed: UInt64) throws -> DecisionModule {
        let L = m.config.layers
        let base = try DecisionModule(prior: StaticRanking.evenlySpread(layers: L), dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8, seed: seed)
        var w = base.weights
        var rng = SeededRNG(seed: seed &+ 7)
        w.w2 = w.w2.map { _ in (rng.nextUnitFloat() * 2 - 1) * 2 }
        w.inputScale = w.inputScale.map { _ in 0.05 }
        return try DecisionModule(layers: L, dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8, weights: w)
    }

    /// Teacher-forcing a chunk as one batch with one decision per row gives the decisions and
    /// (to the batch path's rounding) the scores of decoding it token by token, under every KV
    /// policy, although the set changes from row to row.
    func testRowwiseBatchMatchesTokenByTokenRouting() throws {
        let m = try TestSupport.model()
        let text = "The committee met on Tuesday to discuss the budget. Several members argued that the new proposal would cut services, while others said the savings were needed. After three hours the vote was postponed to the next week, and the chair thanked everyone for coming."
        var ids = m.tokenizer.encode(text, parseSpecial: false)
        while ids.count < 96 { ids += ids }
        let chunk = Array(ids.prefix(96))
        for policy in [KVPolicy.mask, .zero, .fill] {
            let evaluator = PerplexityEvaluator(model: m, contextSize: 96, threads: 2)
            let batchedModule = try perTokenModule(m, seed: 3), steppedModule = try perTokenModule(m, seed: 3)
            batchedModule.budget = 0.6; steppedModule.budget = 0.6
            let recorder = RowRecorder(batchedModule), stepper = StepOnly(steppedModule)
            let batched = evaluator.scoreChunkRouted(chunk[...], selector: recorder, policy: policy)
            let stepped = evaluator.scoreChunkRouted(chunk[...], selector: stepper, policy: policy)
            XCTAssertEqual(batched.count, stepped.count)
            XCTAssertEqual(recorder.decisions, stepper.decisions, "per-row decisions equal the decode steps' (\(policy))")
            XCTAssertGreaterThan(Set(stepper.decisions.values).count, 5, "the set really changes from token to token")
            let perToken = abs(batched.nll - stepped.nll) / Double(batched.count)
            XCTAssertLessThan(perToken, 0.01, "mean NLL per token differs by \(perToken) (\(policy))")
        }
        // A chat turn teacher-forced in one batch through a session equals stepping it.
        let session = Session(model: m, capacity: 128, threads: 2, batchSize: 64)
        let module = try perTokenModule(m, seed: 9)
        module.budget = 0.75
        session.selector = module
        let prompt = Array(chunk.prefix(40)), reply = Array(chunk[40..<70])
        try session.evaluate(prompt)
        try session.evaluate(prompt + reply, decideEveryToken: true)
        let batchLast = Array(UnsafeBufferPointer(start: session.decode.logits, count: m.config.vocabSize))
        let batchLayers = session.lastLayers
        session.reset(); module.resetContext()
        try session.evaluate(prompt)
        for t in reply { try session.step(t) }
        XCTAssertEqual(session.lastLayers, batchLayers)
        XCTAssertEqual(Sampler.argmax(session.decode.logits, count: m.config.vocabSize), Sampler.argmax(batchLast, count: batchLast.count))
    }

    /// The gate picks its table by the pooled context; round trip in format 3; a bad gate is
    /// refused naming the field; a gated module is never taken for a fixed set.
    func testGatePicksTablesAndRoundTrips() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, routable = L - 2
        let ranking = StaticRanking.random(layers: L, seed: 2)
        let base = try DecisionModule(prior: ranking, dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8, seed: 1)
        let proseSet = (1...routable).filter { $0 % 4 != 1 }, chatSet = (1...routable).filter { $0 % 4 != 2 }
        let k = proseSet.count
        XCTAssertEqual(chatSet.count, k)
        var w = base.weights
        w.priorByCount = DecisionModule.priorTable(sets: [k: proseSet], fallback: w.prior, routable: routable)
        let chatTable = DecisionModule.priorTable(sets: [k: chatSet], fallback: w.prior, routable: routable)
        let session = Session(model: m, capacity: 64, threads: 2, batchSize: 16)
        let prompt = m.tokenizer.encode("A gate decides which table", parseSpecial: false)
        for (bias, want) in [(Float(1), chatSet), (Float(-1), proseSet)] {
            var g = w
            g.gate = DecisionModule.ContextGate(weights: [Float](repeating: 0, count: base.inputDim), bias: bias, priorByCount: chatTable)
            let dm = try DecisionModule(layers: L, dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8, weights: g)
            dm.budget = Double(k) / Double(routable)
            XCTAssertNil(dm.fixedMask(budget: dm.budget), "a gated module decides per context")
            session.selector = dm
            session.reset()
            try session.evaluate(prompt)
            XCTAssertEqual(session.lastLayers, [0] + want + [L - 1], "bias \(bias)")
            XCTAssertEqual(dm.lastGateOn, bias > 0)
        }

        // A gate that looks at the pooled context: on for one text, off for another.
        let other = m.tokenizer.encode("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n", parseSpecial: true)
        let scratch = PerplexityEvaluator(model: m, contextSize: 64, threads: 2)
        let a = ContextGateTraining.pooledInputs(model: m, tokens: prompt, first: 0, stride: 1, scratch: scratch)
        let b = ContextGateTraining.pooledInputs(model: m, tokens: other, first: 0, stride: 1, scratch: scratch)
        let fit = ContextGateTraining.fitGate(module: base, positives: b, negatives: a)
        XCTAssertEqual(fit.trainAccuracy, 1, accuracy: 1e-9, "two short contexts are separable")
        XCTAssertEqual(fit.gate.weights[(2 * m.config.kvDim)...].allSatisfy { $0 == 0 }, true, "h0 and the budget get no weight")
        w.gate = DecisionModule.ContextGate(weights: fit.gate.weights, bias: fit.gate.bias, priorByCount: chatTable)
        let dm = try DecisionModule(layers: L, dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8, weights: w)
        dm.budget = Double(k) / Double(routable)
        session.selector = dm
        for (tokens, want) in [(prompt, proseSet), (other, chatSet)] {
            session.reset(); dm.resetContext()
            try session.evaluate(tokens)
            XCTAssertEqual(session.lastLayers, [0] + want + [L - 1])
        }

        let saved = try SavedModuleCopy(dm, model: m, tag: "gate")
        defer { saved.remove() }
        XCTAssertEqual(try XCTUnwrap(RouterFile.load(path: saved.path, model: m) as? DecisionModule).weights, dm.weights)
        let rewrite = saved.edited
        for (edit, message) in [
            ({ (j: inout [String: Any]) in j["context_gate"] = "on" }, "context_gate is not an object"),
            ({ (j: inout [String: Any]) in var g = j["context_gate"] as! [String: Any]; g["weights"] = [1, 2]; j["context_gate"] = g }, "context_gate.weights has 2 values"),
            ({ (j: inout [String: Any]) in var g = j["context_gate"] as! [String: Any]; g["bias"] = nil; j["context_gate"] = g }, "missing context_gate.bias"),
            ({ (j: inout [String: Any]) in var g = j["context_gate"] as! [String: Any]; g["prior_by_count"] = nil; j["context_gate"] = g }, "context_gate: missing prior_by_count"),
        ] {
            XCTAssertThrowsError(try RouterFile.load(path: try rewrite(edit), model: m)) { e in
                XCTAssertTrue("\(e)".contains(message), "\(e)")
            }
        }
    }
}

import BuddyCore
import BuddyRouting
import BuddyTestSupport
import Foundation
import XCTest

/// Records the layer sets a module decides per position, per row in one batch or step by step.
private final class Decisions: RowwiseLayerSelector {
    let inner: DecisionModule
    var sets: [Int: [Int]] = [:]
    init(_ inner: DecisionModule) { self.inner = inner }
    func record(_ p: Int, _ m: [Bool]) { sets[p] = m.indices.filter { m[$0] } }
    func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] {
        let m = inner.selectLayers(position: position, state: state, cache: cache)
        record(position, m)
        return m
    }
    func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool] {
        inner.selectLayers(chunkStart: chunkStart, count: count, batch: batch, cache: cache)
    }
    func selectLayers(rowsFrom chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [[Bool]] {
        let rows = inner.selectLayers(rowsFrom: chunkStart, count: count, batch: batch, cache: cache)
        for (i, r) in rows.enumerated() { record(chunkStart + i, r) }
        return rows
    }
}

/// Hides the per-row path, so the evaluation steps token by token.
private final class StepsOnly: LayerSelector {
    let inner: Decisions
    init(_ inner: Decisions) { self.inner = inner }
    func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] { inner.selectLayers(position: position, state: state, cache: cache) }
    func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool] {
        inner.selectLayers(chunkStart: chunkStart, count: count, batch: batch, cache: cache)
    }
}

final class TokenSwitchTests: XCTestCase {
    /// A gated module (gate off) whose prose set for k layers is `base`, with one switch to `alternative`.
    func switchedModule(_ m: LanguageModel, base: [Int], alternative: [Int], weights: [Float]?, bias: Float,
                        conversation: Bool = false) throws -> DecisionModule {
        let L = m.config.layers, routable = L - 2, k = base.count
        let plain = try DecisionModule(prior: StaticRanking.evenlySpread(layers: L), dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8, seed: 4)
        var w = plain.weights
        w.priorByCount = DecisionModule.priorTable(sets: [k: base], fallback: w.prior, routable: routable)
        w.gate = DecisionModule.ContextGate(weights: [Float](repeating: 0, count: plain.inputDim), bias: -1, priorByCount: w.priorByCount!)
        w.tokenSwitches = [DecisionModule.TokenSwitch(kept: k, conversation: conversation, alternative: alternative,
                                                      weights: weights ?? [Float](repeating: 0, count: plain.inputDim), bias: bias)]
        let dm = try DecisionModule(layers: L, dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8, weights: w)
        dm.budget = Double(k) / Double(routable)
        return dm
    }

    /// A switch that always fires runs its alternative, one that never fires the table's set;
    /// a switch on h0 changes the set from token to token, and teacher-forcing in one batch
    /// makes the same per-token decisions as decoding.
    func testSwitchPicksAlternativePerToken() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, routable = L - 2
        let base = (1...routable).filter { $0 != 5 && $0 != 17 }, alternative = (1...routable).filter { $0 != 24 && $0 != 26 }
        let ids = m.tokenizer.encode("The river rose after three days of rain, and the town council met at night to plan what to do next.", parseSpecial: false)
        let session = Session(model: m, capacity: 64, threads: 2, batchSize: 32)
        for (bias, want) in [(Float(1), alternative), (Float(-1), base)] {
            let dm = try switchedModule(m, base: base, alternative: alternative, weights: nil, bias: bias)
            XCTAssertNil(dm.fixedMask(budget: dm.budget), "a switched module decides per token")
            session.selector = dm
            session.reset()
            try session.evaluate(ids)
            XCTAssertEqual(session.lastLayers, [0] + want + [L - 1], "bias \(bias)")
            XCTAssertEqual(dm.layerSetLabel, bias > 0 ? "prose sets, token switch" : "prose sets")
        }
        // A switch on the token's h0: the set changes from token to token, both sets occur and
        // nothing else, and one batch with a decision per row decides as decoding does.
        var rng = SeededRNG(seed: 11)
        let d = m.config.dim, kvDim = m.config.kvDim
        var weights = [Float](repeating: 0, count: 2 * kvDim + d + BudgetEncoding.count)
        for i in (2 * kvDim)..<(2 * kvDim + d) { weights[i] = (rng.nextUnitFloat() * 2 - 1) * 0.5 }
        let chunk = Array(ids.prefix(16) + ids.prefix(16) + ids.prefix(16))
        let evaluator = PerplexityEvaluator(model: m, contextSize: chunk.count, threads: 2)
        let stepper = Decisions(try switchedModule(m, base: base, alternative: alternative, weights: weights, bias: 0))
        let batcher = Decisions(try switchedModule(m, base: base, alternative: alternative, weights: weights, bias: 0))
        let stepped = evaluator.scoreChunkRouted(chunk[...], selector: StepsOnly(stepper), policy: .mask)
        let batched = evaluator.scoreChunkRouted(chunk[...], selector: batcher, policy: .mask)
        XCTAssertEqual(Set(stepper.sets.values), [[0] + base + [L - 1], [0] + alternative + [L - 1]], "both sets and only they run")
        XCTAssertEqual(batcher.sets, stepper.sets, "per-row decisions equal the decode steps'")
        XCTAssertEqual(batched.nll / Double(batched.count), stepped.nll / Double(stepped.count), accuracy: 0.01)
    }

    /// Routed validation KL equals the static objective when every token runs the same set,
    /// whichever set the switch picks, under every KV policy.
    func testRoutedKLMatchesStaticSetsWhenNothingMixes() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, routable = L - 2
        let base = (1...routable).filter { $0 != 5 && $0 != 17 }, alternative = (1...routable).filter { $0 != 24 && $0 != 26 }
        let ids = m.tokenizer.encode("The river rose after three days of rain, and the town council met at night to plan what to do next.", parseSpecial: false)
        let search = LayerSetSearch(model: m, sequences: [SearchSequence(tokens: ids, scored: 4..<(ids.count - 1))], threads: 2)
        func mask(_ set: [Int]) -> [Bool] { LayerBudget.mask(layers: L, chosen: set) }
        let staticBase = search.objective(mask(base)), staticAlternative = search.objective(mask(alternative))
        XCTAssertGreaterThan(abs(staticBase - staticAlternative), 1e-3, "the two sets differ")
        for policy in KVPolicy.allCases {
            for (bias, want) in [(Float(-1), staticBase), (Float(1), staticAlternative)] {
                let dm = try switchedModule(m, base: base, alternative: alternative, weights: nil, bias: bias)
                XCTAssertEqual(search.routedKL(dm, policy: policy), want, accuracy: 1e-4, "bias \(bias), \(policy)")
            }
        }
        // Per-token positions agree with the mean.
        let perPosition = search.positionKL(mask(base))
        XCTAssertEqual(perPosition.reduce(0, +) / Double(perPosition.count), staticBase, accuracy: 1e-9)
    }

    /// The fit sends a token to the alternative where that set was cheaper, by the input alone.
    func testFitLearnsWhichSetServesEachToken() {
        var rng = SeededRNG(seed: 5)
        let inputs = (0..<400).map { _ in (0..<3).map { _ in rng.nextUnitFloat() * 2 - 1 } }
        // Hand-built costs: the alternative is 0.5 cheaper where x0 > 0 and 0.5 dearer elsewhere,
        // so either set alone costs about 1.25 and the per-token oracle exactly 1.0.
        let base = inputs.map { $0[0] > 0 ? 1.5 : 1.0 }, alternative = inputs.map { $0[0] > 0 ? 1.0 : 1.5 }
        let fit = TokenSwitchTraining.fit(inputs: inputs, base: base, alternative: alternative)
        let switched = TokenSwitchTraining.switchedCost(fit, inputs: inputs, base: base, alternative: alternative)
        XCTAssertEqual(switched.cost, 1.0, accuracy: 0.01, "the oracle's cost")
        XCTAssertEqual(switched.share, Double(inputs.filter { $0[0] > 0 }.count) / 400, accuracy: 0.01)
        XCTAssertGreaterThan(abs(fit.weights[0]), 10 * max(abs(fit.weights[1]), abs(fit.weights[2])), "x0 carries the decision")
        // An alternative that is dearer everywhere is never taken.
        let worse = TokenSwitchTraining.fit(inputs: inputs, base: base, alternative: base.map { $0 + 0.1 })
        let never = TokenSwitchTraining.switchedCost(worse, inputs: inputs, base: base, alternative: base.map { $0 + 0.1 })
        XCTAssertEqual(never.share, 0)
        XCTAssertEqual(never.cost, base.reduce(0, +) / 400, accuracy: 1e-9)
    }

    /// Format 4 round trip; a malformed switch is refused naming the field.
    func testSwitchesRoundTripAndBadOnesAreRefused() throws {
        let m = try TestSupport.model()
        let routable = m.config.layers - 2
        let base = Array(1...(routable - 2)), alternative = Array(3...routable)
        let dm = try switchedModule(m, base: base, alternative: alternative, weights: nil, bias: 0.25)
        let saved = try SavedModuleCopy(dm, model: m, tag: "switch")
        defer { saved.remove() }
        XCTAssertEqual(try XCTUnwrap(RouterFile.load(path: saved.path, model: m) as? DecisionModule).weights, dm.weights)
        func editSwitch(_ edit: @escaping (inout [String: Any]) -> Void) -> (inout [String: Any]) -> Void {
            { j in var list = j["token_switches"] as! [[String: Any]]; edit(&list[0]); j["token_switches"] = list }
        }
        for (edit, message) in [
            ({ (j: inout [String: Any]) in j["token_switches"] = ["kept": 3] }, "token_switches is not a list"),
            (editSwitch { $0["alternative"] = [1, 2, 3] }, "token_switches[0].alternative must be \(routable - 2) distinct routable layers"),
            (editSwitch { $0["alternative"] = Array(alternative.reversed()) }, "in ascending order"),
            (editSwitch { $0["kept"] = routable + 1 }, "token_switches[0].kept \(routable + 1) is outside"),
            (editSwitch { $0["bias"] = nil }, "missing token_switches[0].bias"),
            (editSwitch { $0["table"] = "poetry" }, "token_switches[0].table must be"),
            (editSwitch { $0["weights"] = [1] }, "token_switches[0].weights has 1 values"),
            ({ (j: inout [String: Any]) in let l = j["token_switches"] as! [[String: Any]]; j["token_switches"] = l + l }, "token_switches[1] repeats a switch"),
            ({ (j: inout [String: Any]) in
                var l = j["token_switches"] as! [[String: Any]]; l[0]["table"] = "conversation"; j["token_switches"] = l; j["context_gate"] = nil
             }, "refines the conversation table of a module without a context gate"),
        ] {
            XCTAssertThrowsError(try RouterFile.load(path: try saved.edited(edit), model: m)) { e in
                XCTAssertTrue("\(e)".contains(message), "\(e)")
            }
        }
    }
}

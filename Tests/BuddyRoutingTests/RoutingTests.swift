import BuddyCore
import BuddyRouting
import BuddyTestSupport
import Foundation
import XCTest

final class RoutingTests: XCTestCase {
    let budgets = stride(from: 1, through: 20, by: 1).map { Double($0) * 0.05 }

    /// Files for a model come from routers/<model file stem>/ before routers/ itself, so a
    /// second model's files ship beside the default model's; a model with its own directory
    /// never takes the default model's files from routers/ itself.
    func testRoutersOfAModelComeFromItsOwnSubdirectoryFirst() throws {
        let fm = FileManager.default
        let dir = fm.temporaryDirectory.appendingPathComponent("buddy-locate-\(UUID().uuidString)")
        defer { try? fm.removeItem(at: dir) }
        try fm.createDirectory(at: dir.appendingPathComponent("models"), withIntermediateDirectories: true)
        try fm.createDirectory(at: dir.appendingPathComponent("routers"), withIntermediateDirectories: true)
        let modelLink = dir.appendingPathComponent("models/other-model.gguf")
        try fm.createSymbolicLink(atPath: modelLink.path, withDestinationPath: try TestSupport.requireModelPath())
        let m = try LanguageModel(path: modelLink.path)
        let shared = dir.appendingPathComponent("routers/sleb-ranking.json").path
        let own = dir.appendingPathComponent("routers/other-model/sleb-ranking.json").path
        XCTAssertTrue(fm.createFile(atPath: shared, contents: Data("{}".utf8)))
        XCTAssertEqual(Routers.locate("sleb", model: m), shared)
        try fm.createDirectory(at: dir.appendingPathComponent("routers/other-model"), withIntermediateDirectories: true)
        XCTAssertNil(Routers.locate("sleb", model: m), "its own directory has no SLEB ranking: none, not the default model's")
        XCTAssertTrue(fm.createFile(atPath: own, contents: Data("{}".utf8)))
        XCTAssertEqual(Routers.locate("sleb", model: m), own)
        XCTAssertEqual(Routers.locate("/explicit/path.json", model: m), "/explicit/path.json")
    }

    func testBudgetArithmetic() {
        XCTAssertEqual(LayerBudget.routableCount(budget: 1, layers: 30), 28)
        XCTAssertEqual(LayerBudget.routableCount(budget: 0.5, layers: 30), 14)
        XCTAssertEqual(LayerBudget.routableCount(budget: 0.05, layers: 30), 1)   // round(1.4)
        XCTAssertEqual(LayerBudget.routableCount(budget: 0.01, layers: 30), 1)   // at least one
        XCTAssertEqual(LayerBudget.routableCount(budget: 0.75, layers: 30), 21)
        XCTAssertEqual(LayerBudget.topK([0.1, 0.9, 0.5, 0.9], k: 2), [2, 4])
        XCTAssertEqual(LayerBudget.topK([0.3, 0.3, 0.3], k: 2), [1, 2], "ties go to the shallower layer")
    }

    func routers(_ m: LanguageModel) throws -> [BudgetedLayerSelector] {
        let L = m.config.layers
        var rs: [BudgetedLayerSelector] = [StaticRanking.dropLast(layers: L), StaticRanking.random(layers: L, seed: 3), StaticRanking.evenlySpread(layers: L)]
        // A module whose random scorers make decisions vary per token.
        rs.append(try TestModules.withScorers(model: m, seed: 5))
        return rs
    }

    /// Exactly k routable layers (plus first and last) run for every token, for every router,
    /// policy and budget 0.05 ... 1.0.
    func testExactlyKLayersRunForEveryToken() throws {
        let m = try TestSupport.model()
        let L = m.config.layers
        let session = Session(model: m, capacity: 64, threads: 2, batchSize: 8)
        let prompt = m.tokenizer.encode("The cat sat on the mat and looked at", parseSpecial: false)
        for router in try routers(m) {
            for policy in KVPolicy.allCases {
                for b in budgets {
                    router.budget = b
                    session.selector = router
                    session.policy = policy
                    session.reset()
                    (router as? DecisionModule)?.resetContext()
                    let k = LayerBudget.routableCount(budget: b, layers: L)
                    try session.evaluate(prompt)
                    XCTAssertEqual(session.lastLayers.count, k + 2)
                    var tok = Sampler.argmax(session.decode.logits, count: m.config.vocabSize)
                    for _ in 0..<3 {
                        try session.step(tok)
                        let layers = session.lastLayers
                        XCTAssertEqual(layers.count, k + 2, "\(router.name) \(policy) budget \(b)")
                        XCTAssertEqual(layers.first, 0)
                        XCTAssertEqual(layers.last, L - 1)
                        tok = Sampler.argmax(session.decode.logits, count: m.config.vocabSize)
                    }
                }
            }
        }
    }

    /// Budget 1.0 reproduces the full model bit for bit, through any router.
    func testBudgetOneIsTheFullModelBitForBit() throws {
        let m = try TestSupport.model()
        let prompt = m.tokenizer.encode("In the beginning the Universe was created.", parseSpecial: false)
        func run(_ selector: BudgetedLayerSelector?) throws -> [Float] {
            let s = Session(model: m, capacity: 64, threads: 2, batchSize: 4)
            s.selector = selector
            try s.evaluate(prompt)
            var out = Array(UnsafeBufferPointer(start: s.decode.logits, count: m.config.vocabSize))
            try s.step(Sampler.argmax(s.decode.logits, count: m.config.vocabSize))
            out += Array(UnsafeBufferPointer(start: s.decode.logits, count: m.config.vocabSize))
            return out
        }
        let full = try run(nil)
        for r in try routers(m) {
            r.budget = 1
            XCTAssertEqual(try run(r), full, r.name)
        }
    }

    /// The incremental pooled context equals one recomputed from scratch, also after a rewind.
    func testIncrementalPooledContextEqualsRecomputed() throws {
        let m = try TestSupport.model()
        let dm = try DecisionModule(ranking: StaticRanking.dropLast(layers: m.config.layers), dim: m.config.dim, kvDim: m.config.kvDim)
        dm.budget = 0.5
        let s = Session(model: m, capacity: 64, threads: 2, batchSize: 5)
        s.selector = dm
        let a = m.tokenizer.encode("One two three four five six seven eight nine ten eleven twelve", parseSpecial: false)
        try s.evaluate(a)
        for _ in 0..<4 { try s.step(Sampler.argmax(s.decode.logits, count: m.config.vocabSize)) }
        // The router pooled incrementally through the last decided position.
        let fresh = PooledContext.recomputed(cache: s.cache, through: s.tokens.count)
        var inc = dm.pooled
        XCTAssertEqual(inc.count, fresh.count)
        for i in 0..<m.config.kvDim {
            XCTAssertEqual(inc.keySum[i], fresh.keySum[i], accuracy: 1e-9)
            XCTAssertEqual(inc.valueSum[i], fresh.valueSum[i], accuracy: 1e-9)
        }
        // After a rewind (shorter context) the sums are rebuilt, not carried over.
        inc.update(cache: s.cache, through: 3)
        let three = PooledContext.recomputed(cache: s.cache, through: 3)
        XCTAssertEqual(inc.count, 3)
        XCTAssertEqual(inc.keySum, three.keySum)
    }

    /// A new conversation pools only its own context: after a short exchange, a longer prompt
    /// (at full depth, as the chat runs it, so the module does not see it) is followed by reply
    /// steps whose pooled sums are those of the new conversation alone, whatever came before;
    /// and a prompt that rewrites the cache's tail (a reused prefix, a different ending) pools
    /// the rewritten positions, not the old ones.
    func testANewConversationPoolsOnlyItsOwnContext() throws {
        let m = try TestSupport.model()
        let dm = try DecisionModule(ranking: StaticRanking.dropLast(layers: m.config.layers), dim: m.config.dim, kvDim: m.config.kvDim)
        dm.budget = 0.5
        let s = Session(model: m, capacity: 128, threads: 2, batchSize: 16)
        s.selector = dm
        s.promptDepth = .full
        func pooledIsTheSessions(_ when: String) {
            let fresh = PooledContext.recomputed(cache: s.cache, through: s.tokens.count)
            XCTAssertEqual(dm.pooled.count, fresh.count, when)
            XCTAssertTrue(dm.pooled.keySum == fresh.keySum && dm.pooled.valueSum == fresh.valueSum, when)
        }
        let short = m.tokenizer.encode("Hi there.", parseSpecial: false)
        try s.evaluate(short)
        for _ in 0..<2 { try s.step(Sampler.argmax(s.decode.logits, count: m.config.vocabSize)) }
        pooledIsTheSessions("first conversation")

        s.reset()
        let long = m.tokenizer.encode("The river ran past the old mill, and the miller's daughter counted the boats that went by each morning before school.", parseSpecial: false)
        XCTAssertGreaterThan(long.count, short.count + 2)
        try s.evaluate(long)
        try s.step(Sampler.argmax(s.decode.logits, count: m.config.vocabSize))
        pooledIsTheSessions("a longer second conversation")

        // Same opening, another ending, longer than what the sums covered.
        let other = Array(long.prefix(4)) + m.tokenizer.encode(" a quiet street where nobody had walked for years, under a grey and patient sky that did not change at all, not once, not even in spring.", parseSpecial: false)
        XCTAssertGreaterThan(other.count, long.count + 1)
        try s.evaluate(other)
        try s.evaluate(other + [Sampler.argmax(s.decode.logits, count: m.config.vocabSize)], as: .reply(oneDecisionPerToken: true))
        pooledIsTheSessions("a prompt that rewrote the tail")

        // Steered (the chat's default), the module inside hears of a new conversation too.
        s.selector = BudgetSteering(dm)
        s.reset()
        try s.evaluate(short)
        for _ in 0..<2 { try s.step(Sampler.argmax(s.decode.logits, count: m.config.vocabSize)) }
        s.reset()
        try s.evaluate(long)
        try s.step(Sampler.argmax(s.decode.logits, count: m.config.vocabSize))
        pooledIsTheSessions("steered, a longer second conversation")
    }

    /// A Decision Module with one set per budget, taken from a static ranking, runs exactly that
    /// ranking's choice, in prefill and decode.
    func testModuleWithOneSetPerBudgetRunsThoseSets() throws {
        let m = try TestSupport.model()
        let L = m.config.layers
        let prior = StaticRanking.random(layers: L, seed: 17)
        let dm = try DecisionModule(ranking: prior, dim: m.config.dim, kvDim: m.config.kvDim)
        let s = Session(model: m, capacity: 64, threads: 2, batchSize: 8)
        s.selector = dm
        let prompt = m.tokenizer.encode("A module that starts from a prior", parseSpecial: false)
        for b in budgets {
            dm.budget = b
            s.reset(); dm.resetContext()
            try s.evaluate(prompt)
            let want = prior.mask(budget: b).indices.filter { prior.mask(budget: b)[$0] }
            XCTAssertEqual(s.lastLayers, want, "prefill at \(b)")
            try s.step(Sampler.argmax(s.decode.logits, count: m.config.vocabSize))
            XCTAssertEqual(s.lastLayers, want, "decode at \(b)")
        }
    }

    func testRouterFilesRoundTripAndRefuseOtherModelsAndVersions() throws {
        let m = try TestSupport.model()
        let dir = try TestSupport.scratchDirectory("router")
        defer { try? FileManager.default.removeItem(at: dir) }
        let L = m.config.layers
        let dm = try TestModules.withScorers(model: m, seed: 4)
        let path = dir.appendingPathComponent("r.json").path
        try RouterFile.save(dm, model: m, notes: "test", to: path)
        let back = try XCTUnwrap(RouterFile.load(path: path, model: m) as? DecisionModule)
        XCTAssertEqual(back.weights, dm.weights)
        let rankPath = dir.appendingPathComponent("k.json").path
        try RouterFile.save(StaticRanking.dropLast(layers: L), model: m, notes: "t", to: rankPath)
        XCTAssertEqual((try RouterFile.load(path: rankPath, model: m) as? StaticRanking)?.ranking, Array(1..<L - 1))

        func rewrite(_ edit: (inout [String: Any]) -> Void) throws -> String {
            var j = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
            edit(&j)
            let p = dir.appendingPathComponent("edit-\(UUID().uuidString).json").path
            try JSONSerialization.data(withJSONObject: j).write(to: URL(fileURLWithPath: p))
            return p
        }
        func refuses(_ p: String, _ contains: String, line: UInt = #line) {
            XCTAssertThrowsError(try RouterFile.load(path: p, model: m), line: line) { e in
                XCTAssertTrue("\(e)".contains(contains), "\(e)", line: line)
            }
        }
        refuses(try rewrite { $0["model_fingerprint"] = "0000-1" }, "made for another model")
        refuses(try rewrite { $0["version"] = 99 }, "format version 99")
        // A Decision Module of the retired formats (1-4) is named as such.
        refuses(try rewrite { $0["version"] = 4; $0["hidden"] = 32; $0["w1"] = [0.5] }, "retired form (an MLP over tables of layer sets, a context gate, token switches) in format version 4, which this buddy no longer reads; train a new one with `buddy train router`")
        func editChoice(_ i: Int, _ edit: @escaping (inout [String: Any]) -> Void) throws -> String {
            try rewrite { j in
                var list = j["choices"] as! [[String: Any]]
                edit(&list[i])
                j["choices"] = list
            }
        }
        refuses(try rewrite { j in j["choices"] = Array((j["choices"] as! [Any]).dropLast()) }, "choices has 27 entries")
        refuses(try editChoice(13) { $0["weights"] = [1, 2, 3] }, "choices[13].weights has 3 values")
        refuses(try editChoice(13) { c in var b = c["bias"] as! [Double]; b[0] = 1e39; c["bias"] = b }, "NaN or infinity")
        refuses(try editChoice(13) { c in var s = c["sets"] as! [[Int]]; s[1][0] = 29; c["sets"] = s }, "choices[13].sets[1] must be 14 distinct routable layers")
        refuses(try editChoice(13) { c in var s = c["sets"] as! [[Int]]; s[1].reverse(); c["sets"] = s }, "in ascending order")
        refuses(try editChoice(5) { $0["kept"] = 7 }, "choices[5].kept is 7, expected 6")
        refuses(try editChoice(0) { $0["weights"] = [0.5] }, "a single set needs none")
        refuses(try editChoice(20) { $0["names"] = ["x"] }, "choices[20].names has 1 entries for 3 sets")
        refuses(try rewrite { $0["choices"] = "many" }, "missing choices")
        let truncated = dir.appendingPathComponent("t.json").path
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: truncated))
        refuses(truncated, "not a JSON object")
        refuses(dir.appendingPathComponent("missing.json").path, "cannot read")
    }
}

final class SetChoiceFitTests: XCTestCase {
    /// Synthetic costs with a known best set per input: candidate j is cheap where input j is
    /// the largest of the first three. The fitted scorer must find that rule on new inputs and
    /// beat every single set; the module built from it must pick what the fit's own picks say.
    func testScorerLearnsWhichSetIsCheapestWhereAndTheModulePicksTheSame() throws {
        var rng = SeededRNG(seed: 7)
        let d = 12, m = 3
        func sample(_ n: Int) -> (inputs: [[Float]], costs: [[Double]]) {
            let xs = (0..<n).map { _ in (0..<d).map { _ in rng.nextUnitFloat() * 2 - 1 } }
            let cs = xs.map { x -> [Double] in
                let best = (0..<m).max { x[$0] < x[$1] }!
                return (0..<m).map { $0 == best ? 0.1 : 1.0 + 0.1 * Double($0) }
            }
            return (xs, cs)
        }
        let train = sample(600), test = sample(300)
        let scorer = SetChoiceFit.fit(inputs: train.inputs, costs: train.costs, l2: 1e-4, steps: 400, learningRate: 0.05)
        let picks = SetChoiceFit.picks(scorer, inputs: test.inputs)
        let cost = SetChoiceFit.meanCost(picks: picks, costs: test.costs)
        let singles = (0..<m).map { j in SetChoiceFit.meanCost(picks: [Int](repeating: j, count: 300), costs: test.costs) }
        XCTAssertLessThan(cost, 0.25, "the rule costs 0.1, a single set about 0.8")
        XCTAssertLessThan(cost, singles.min()! * 0.5)

        // The same scorer in a module (5 layers, 3 routable: dim 4 + 2·kvDim 4 = 12 inputs),
        // with normalisation x·2 + 1 undone by mean and scale, picks as the fit does.
        let sets = [[1], [2], [3]]
        let module = try DecisionModule(layers: 5, dim: 4, kvDim: 4, weights: .init(
            inputMean: [Float](repeating: 0.5, count: d), inputScale: [Float](repeating: 2, count: d), choices: [
                .init(kept: 1, sets: sets, names: ["a", "b", "c"], weights: scorer.weights, bias: scorer.bias),
                .init(kept: 2, sets: [[1, 2]], names: ["a"]), .init(kept: 3, sets: [[1, 2, 3]], names: ["all"])]))
        let raw = test.inputs.map { z in z.map { $0 / 2 + 0.5 } }
        XCTAssertEqual(raw.map { module.pick(input: $0, budget: 1.0 / 3) }, picks)
        XCTAssertNil(module.fixedMask(budget: 1.0 / 3), "a budget with a scorer decides per token")
        XCTAssertEqual(module.fixedMask(budget: 2.0 / 3), [true, true, true, false, true])
    }

    /// Costs that do not depend on the input: the scorer picks the cheapest set everywhere.
    func testWithoutSignalTheScorerPicksTheCheapestSet() {
        var rng = SeededRNG(seed: 3)
        let inputs = (0..<200).map { _ in (0..<6).map { _ in rng.nextUnitFloat() * 2 - 1 } }
        let costs = inputs.map { _ in [0.9, 0.4, 0.7] }
        let scorer = SetChoiceFit.fit(inputs: inputs, costs: costs, l2: 0.1)
        XCTAssertEqual(Set(SetChoiceFit.picks(scorer, inputs: inputs)), [1])
    }

    /// Two near-equal sets, the second cheaper at every input but least so where input 0 is
    /// low: without balance the scorer runs the second for every input; with it both stay in
    /// use, the first where it loses least.
    func testBalanceKeepsBothSetsInUse() {
        var rng = SeededRNG(seed: 11)
        let inputs = (0..<400).map { _ in (0..<8).map { _ in rng.nextUnitFloat() * 2 - 1 } }
        let costs = inputs.map { x in [0.41 + 0.01 * Double(x[0]), 0.40] }
        let plain = SetChoiceFit.picks(SetChoiceFit.fit(inputs: inputs, costs: costs, l2: 0.01), inputs: inputs)
        XCTAssertEqual(Set(plain), [1])
        let balanced = SetChoiceFit.picks(SetChoiceFit.fit(inputs: inputs, costs: costs, l2: 0.01, balance: 1), inputs: inputs)
        let share = Double(balanced.filter { $0 == 0 }.count) / Double(inputs.count)
        XCTAssertGreaterThan(share, 0.3, "the dearer set runs for a real share of the inputs")
        XCTAssertLessThan(share, 0.7)
        let firstSetInputs = zip(inputs, balanced).filter { $0.1 == 0 }.map { $0.0[0] }
        XCTAssertLessThan(firstSetInputs.reduce(0, +) / Float(firstSetInputs.count), -0.3, "the first set runs where it loses least")
        // Where the input does say which set is cheaper, balance keeps that rule.
        let informative = inputs.map { x in x[0] > 0 ? [0.1, 1.0] : [1.0, 0.1] }
        let ruled = SetChoiceFit.picks(SetChoiceFit.fit(inputs: inputs, costs: informative, l2: 1e-4, balance: 1, steps: 400, learningRate: 0.05), inputs: inputs)
        XCTAssertLessThan(SetChoiceFit.meanCost(picks: ruled, costs: informative), 0.2)
    }

    func testColumnStatistics() {
        let (mu, sd) = columnStatistics([[1, 5], [3, 5]], 0)
        XCTAssertEqual(mu, 2); XCTAssertEqual(sd, 1)
        XCTAssertEqual(columnStatistics([[1, 5], [3, 5]], 1).std, 0)
    }
}

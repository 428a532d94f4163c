import BuddyCore
import BuddyRouting
import BuddyTestSupport
import Foundation
import XCTest

final class RoutingTests: XCTestCase {
    let budgets = stride(from: 1, through: 20, by: 1).map { Double($0) * 0.05 }

    /// Files for a model come from routers/<model file stem>/ before routers/ itself, so a
    /// second model's files ship beside the default model's.
    func testRoutersOfAModelComeFromItsOwnSubdirectoryFirst() throws {
        let fm = FileManager.default
        let dir = fm.temporaryDirectory.appendingPathComponent("buddy-locate-\(UUID().uuidString)")
        defer { try? fm.removeItem(at: dir) }
        try fm.createDirectory(at: dir.appendingPathComponent("models"), withIntermediateDirectories: true)
        try fm.createDirectory(at: dir.appendingPathComponent("routers/other-model"), withIntermediateDirectories: true)
        let modelLink = dir.appendingPathComponent("models/other-model.gguf")
        try fm.createSymbolicLink(atPath: modelLink.path, withDestinationPath: try TestSupport.requireModelPath())
        let m = try LanguageModel(path: modelLink.path)
        let shared = dir.appendingPathComponent("routers/sleb-ranking.json").path
        let own = dir.appendingPathComponent("routers/other-model/sleb-ranking.json").path
        XCTAssertTrue(fm.createFile(atPath: shared, contents: Data("{}".utf8)))
        XCTAssertEqual(Routers.locate("sleb", model: m), shared)
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
        let dm = try DecisionModule(prior: StaticRanking.random(layers: L, seed: 5), dim: m.config.dim, kvDim: m.config.kvDim, hidden: 16, seed: 1)
        // Give the learned part some weight so decisions really vary per token.
        var r = SeededRNG(seed: 9)
        dm.weights.w2 = dm.weights.w2.map { _ in (r.nextUnitFloat() - 0.5) * 0.5 }
        rs.append(dm)
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
        let dm = try DecisionModule(prior: StaticRanking.dropLast(layers: m.config.layers), dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8)
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

    /// A Decision Module initialised from a static ranking makes exactly that ranking's choice.
    func testUntrainedModuleReproducesItsPrior() throws {
        let m = try TestSupport.model()
        let L = m.config.layers
        let prior = StaticRanking.random(layers: L, seed: 17)
        let dm = try DecisionModule(prior: prior, dim: m.config.dim, kvDim: m.config.kvDim, hidden: 32, seed: 2)
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
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("buddy-router-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let L = m.config.layers
        let dm = try DecisionModule(prior: StaticRanking.random(layers: L, seed: 1), dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8, seed: 4)
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
        refuses(try rewrite { $0["w2"] = [1, 2, 3] }, "w2 has 3 values")
        refuses(try rewrite { $0["hidden"] = 1_000_000 }, "absurd hidden size")
        refuses(try rewrite { j in var b = j["b1"] as! [Double]; b[0] = 1e39; j["b1"] = b }, "NaN or infinity")
        let truncated = dir.appendingPathComponent("t.json").path
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: truncated))
        refuses(truncated, "not a JSON object")
        refuses(dir.appendingPathComponent("missing.json").path, "cannot read")
    }
}

final class TrainingTests: XCTestCase {
    /// The MLP learns a synthetic importance function: the training loss falls, and a module
    /// built from the trained weights round-trips through a router file.
    func testMLPLossFallsAndTrainedModuleRoundTrips() throws {
        var rng = SeededRNG(seed: 1)
        let inDim = 12, outs = 5
        let xs = (0..<400).map { _ in (0..<inDim).map { _ in rng.nextUnitFloat() * 2 - 1 } }
        // targets: a fixed nonlinear function of the inputs
        let ys = xs.map { x in (0..<outs).map { r in max(0, x[r] + x[r + 5]) - 0.5 * x[11] * Float(r) / 4 } }
        var mlp = MLPTrainer(inputDim: inDim, hidden: 16, outputs: outs, seed: 3)
        mlp.learningRate = 3e-3
        let before = mlp.meanSquaredError(xs, ys)
        for _ in 0..<40 {
            for s in stride(from: 0, to: 400, by: 20) { _ = mlp.train(batch: Array(xs[s..<s + 20]), Array(ys[s..<s + 20])) }
        }
        let after = mlp.meanSquaredError(xs, ys)
        XCTAssertLessThan(after, before * 0.3, "loss \(before) -> \(after)")

        // Statistics helper
        let (mu, sd) = columnStatistics([[1], [3]], 0)
        XCTAssertEqual(mu, 2); XCTAssertEqual(sd, 1)
    }

    func testTrainedWeightsLoadIntoADecisionModuleAndSave() throws {
        // Tiny dimensions: 5 layers (3 routable), dim 4, kvDim 2 → input 2·2 + 4 + 4 = 12.
        var mlp = MLPTrainer(inputDim: 12, hidden: 6, outputs: 3, seed: 2)
        _ = mlp.train(batch: [[Float](repeating: 0.5, count: 12)], [[1, 0, -1]])
        let m = try DecisionModule(layers: 5, dim: 4, kvDim: 2, hidden: 6, weights: .init(
            inputMean: [Float](repeating: 0, count: 12), inputScale: [Float](repeating: 1, count: 12),
            w1: mlp.w1, b1: mlp.b1, w2: mlp.w2, b2: mlp.b2, prior: [0, 0, 0], priorWeight: 1))
        let x = [Float](repeating: 0.5, count: 12)
        XCTAssertEqual(m.forward(x, kept: 3), mlp.predict(x))
        XCTAssertThrowsError(try DecisionModule(layers: 5, dim: 4, kvDim: 2, hidden: 6, weights: .init(
            inputMean: [], inputScale: [], w1: [], b1: [], w2: [], b2: [], prior: [], priorWeight: 1)))
    }
}

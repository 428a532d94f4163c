import BuddyCore
import BuddyRouting
import BuddyTestSupport
import Foundation
import XCTest

/// The closed-form stand-in fit, and the stand-ins the repository ships.
final class StandInFitTests: XCTestCase {
    /// Gaussian-ish numbers from a seeded generator (sum of uniforms).
    private func noise(_ r: inout SeededRNG, _ n: Int, scale: Double = 1) -> [Double] {
        (0..<n).map { _ in scale * (Double(r.nextUnitFloat() + r.nextUnitFloat() + r.nextUnitFloat()) - 1.5) * 2 }
    }

    /// Data made by a known rank-3 affine map plus a little noise: the fit recovers the map,
    /// validation picks rank 3 from the grid, and the error from the sums equals the error
    /// summed row by row.
    func testFitRecoversAKnownLowRankAffineMap() throws {
        let d = 24, rank = 3, n = 3000
        var r = SeededRNG(seed: 42)
        let a = noise(&r, rank * d), b = noise(&r, d * rank), c = noise(&r, d)
        func truth(_ x: ArraySlice<Double>) -> [Double] {
            let t = (0..<rank).map { j in (0..<d).reduce(0.0) { $0 + a[j * d + $1] * x[x.startIndex + $1] } }
            return (0..<d).map { i in c[i] + (0..<rank).reduce(0.0) { $0 + b[i * rank + $1] * t[$1] } }
        }
        func sample(_ count: Int) -> (x: [Double], y: [Double], stats: RegressionStatistics) {
            let x = noise(&r, count * d)
            var y: [Double] = []
            for i in 0..<count { y += zip(truth(x[(i * d)..<((i + 1) * d)]), noise(&r, d, scale: 0.01)).map { $0 + $1 } }
            var s = RegressionStatistics(dim: d)
            s.add(x: x, y: y, rows: count)
            return (x, y, s)
        }
        let train = sample(n), val = sample(1000)
        let choice = try AffineFitter.select(train: train.stats, validation: val.stats, ridges: [1e-6, 1e-2], ranks: [0, 1, 2, 3, 8, 16])
        XCTAssertEqual(choice.rank, 3)
        XCTAssertGreaterThan(choice.validationR2, 0.999)
        let fit = try AffineFitter.solve(train.stats, ridge: choice.ridge).truncate(rank: choice.rank)
        // Predictions on new inputs match the true map.
        let probe = noise(&r, 5 * d)
        for i in 0..<5 {
            let x = probe[(i * d)..<((i + 1) * d)]
            let t = (0..<rank).map { j in (0..<d).reduce(0.0) { $0 + fit.down[j * d + $1] * x[x.startIndex + $1] } }
            let got = (0..<d).map { k in fit.bias[k] + (0..<rank).reduce(0.0) { $0 + fit.up[k * rank + $1] * t[$1] } }
            for (g, e) in zip(got, truth(x)) { XCTAssertEqual(g, e, accuracy: 0.01 * max(1, abs(e))) }
        }
        // squaredError from the sums equals the sum over rows.
        var direct = 0.0
        for i in 0..<1000 {
            let x = val.x[(i * d)..<((i + 1) * d)]
            let t = (0..<rank).map { j in (0..<d).reduce(0.0) { $0 + fit.down[j * d + $1] * x[x.startIndex + $1] } }
            for k in 0..<d {
                let p = fit.bias[k] + (0..<rank).reduce(0.0) { $0 + fit.up[k * rank + $1] * t[$1] }
                direct += (val.y[i * d + k] - p) * (val.y[i * d + k] - p)
            }
        }
        XCTAssertEqual(val.stats.squaredError(fit), direct, accuracy: 1e-6 * max(1, direct))
        // Rank 0 is the mean of y.
        let mean = try AffineFitter.solve(train.stats, ridge: 1e-3).truncate(rank: 0)
        for k in 0..<d { XCTAssertEqual(mean.bias[k], train.y.enumerated().filter { $0.offset % d == k }.reduce(0.0) { $0 + $1.element } / Double(n), accuracy: 1e-9) }
    }

    /// `--stand-ins auto` (the default of generate, chat, bench and eval) on a model the stand-in
    /// file was not made for, e.g. the default model requantised by llama.cpp: no stand-ins and a
    /// reason, not a refusal (it used to stop every command, even at full depth). The explicit
    /// path is still refused, and a damaged file is still an error under auto.
    /// The fitter's full-depth residual stream is the model's: its embedding step and its
    /// layer-by-layer runs end where one whole prefill ends, for SmolLM2 and for Gemma 3, whose
    /// embeddings are scaled by √dim (a fitter that skipped the scale fitted every Gemma
    /// stand-in on inputs inference never produces). Gemma's first row is also checked by hand.
    func testCalibrationCarriesTheModelsOwnResidualStream() throws {
        for m in [try TestSupport.model(), try LanguageModel(path: GemmaSupport.modelPath)] {
            let c = m.config, n = 9
            let tokens: [Int32] = [2, 17, 400, 1234, 9, 77, 3001, 12, 5]
            let cal = StandInCalibration(model: m, threads: 1, maxTokens: 16)
            var x = cal.embedded(tokens)
            if c.embeddingScale != 1 {
                let t = m.transformer
                var raw = [Float](repeating: 0, count: c.dim)
                raw.withUnsafeMutableBufferPointer { dequantizeRow(t.tokenEmbedding.type, t.tokenEmbedding.row(2), $0.baseAddress!, count: c.dim) }
                XCTAssertEqual(c.embeddingScale, Float(c.dim).squareRoot(), accuracy: 0.01, "Gemma 3 scales embeddings by √dim")
                for j in 0..<c.dim { XCTAssertEqual(x[j], raw[j] * c.embeddingScale, accuracy: 1e-6 * max(1, abs(x[j]))) }
            }
            for l in 0..<c.layers { cal.runLayer(l, &x, n: n) }
            let b = BatchState(config: c, maxTokens: 16, capacity: 16, pool: ThreadPool.shared(threads: 1))
            let cache = KVCache(layers: c.layers, capacity: 16, kvDim: c.kvDim, deferDim: c.dim)
            m.transformer.prefill(tokens[...], start: 0, b, cache)
            let whole = [Float](UnsafeBufferPointer(start: b.x, count: n * c.dim))
            var worst: Float = 0
            for (a, e) in zip(x, whole) { worst = max(worst, abs(a - e) / max(1, abs(e))) }
            XCTAssertLessThan(worst, 1e-4, "\(m.path): layer by layer and one prefill disagree")
        }
    }

    func testAutoStandInsRunWithoutThemOnAnotherModelButStillRefuseDamage() throws {
        let m = try TestSupport.model()
        let shipped = try Routers.autoStandIns(model: m)
        XCTAssertNotNil(shipped.standIns, "the shipped file fits the default model")
        XCTAssertNil(shipped.mismatch)
        let dir = try TestSupport.scratchDirectory("auto-standins")
        defer { try? FileManager.default.removeItem(at: dir) }
        let foreign = dir.appendingPathComponent("foreign.bin").path
        try StandInFile.save(StandIns.zero(config: m.config), fingerprint: "666241a2797c77f1-105454144", to: foreign)
        XCTAssertThrowsError(try Routers.standIns(model: m, path: foreign)) { e in
            guard case StandInError.wrongModel = e else { return XCTFail("\(e)") }
        }
        let auto = try Routers.autoStandIns(model: m, path: foreign)
        XCTAssertNil(auto.standIns)
        XCTAssertTrue(auto.mismatch?.contains("made for another model") ?? false, auto.mismatch ?? "nil")
        let damaged = dir.appendingPathComponent("damaged.bin").path
        try Data("BUDDYSTI".utf8).write(to: URL(fileURLWithPath: damaged))
        XCTAssertThrowsError(try Routers.autoStandIns(model: m, path: damaged))
    }

    /// The shipped stand-ins load for the default model, are refused for another, and the
    /// shipped router with them runs exactly k + 2 layers at every slider position.
    func testShippedStandInsLoadAndRoutingStaysStrict() throws {
        let m = try TestSupport.model()
        guard let standIns = try Routers.standIns(model: m) else { return XCTFail("routers/\(StandInFile.defaultFileName) is missing") }
        XCTAssertEqual(standIns.layers.count, m.config.layers)
        XCTAssertNil(standIns.layers[0]); XCTAssertNil(standIns.layers[m.config.layers - 1])
        XCTAssertFalse(standIns.notes.contains("/work/"), "the notes must not point outside the repository")
        let path = Routers.locate("stand-ins", model: m)!
        XCTAssertThrowsError(try StandInFile.load(path: path, config: m.config, fingerprint: "0000000000000000-1"))
        let session = Session(model: m, capacity: 96, threads: 2, batchSize: 16)
        session.standIns = standIns
        let router = try Routers.make("buddy", model: m)
        let prompt = m.tokenizer.encode("The capital of France is", parseSpecial: false)
        for slider in stride(from: 0.05, through: 0.951, by: 0.05) {
            router.budget = slider
            session.selector = router
            session.reset()
            (router as? DecisionModule)?.resetContext()
            let k = LayerBudget.routableCount(budget: slider, layers: m.config.layers)
            try session.evaluate(prompt)
            XCTAssertEqual(session.lastLayers.count, k + 2)
            var tok = Sampler.argmax(session.decode.logits, count: m.config.vocabSize)
            for _ in 0..<3 {
                try session.step(tok)
                XCTAssertEqual(session.lastLayers.count, k + 2, "budget \(slider)")
                XCTAssertTrue((0..<m.config.vocabSize).allSatisfy { session.decode.logits[$0].isFinite })
                tok = Sampler.argmax(session.decode.logits, count: m.config.vocabSize)
            }
        }
    }
}

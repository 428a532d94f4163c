import BuddyCore
import BuddyFuzzSupport
import BuddyRouting
import BuddyTestSupport
import Foundation
import XCTest

/// Mutated router, ranking and budget-predictor files either load (and then make valid
/// decisions) or are refused with a RoutingError; nothing crashes.
final class RouterFuzzTests: XCTestCase {
    func testMutatedRouterFilesAreRefusedOrLoadCleanly() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, d = 2 * m.config.kvDim + m.config.dim
        let dir = try TestSupport.scratchDirectory("rfuzz")
        defer { try? FileManager.default.removeItem(at: dir) }
        let module = try TestModules.withScorers(model: m, seed: 1, scored: [14, 20], candidates: 2)
        try module.promptSets.set(Array(1...14), kept: 14)   // so mutations reach "prompt_sets" too
        let ranking = StaticRanking.dropLast(layers: L)
        try ranking.promptSets.set(Array(3...16), kept: 14)
        let seeds: [(String, Bool)] = try {
            let a = dir.appendingPathComponent("dm.json").path, b = dir.appendingPathComponent("rank.json").path, c = dir.appendingPathComponent("bp.json").path
            try RouterFile.save(module, model: m, notes: "seed", to: a)
            try RouterFile.save(ranking, model: m, notes: "seed", to: b)
            let p = try BudgetPredictor(budgets: [0.5, 0.9], featureDim: d, mean: [Float](repeating: 0, count: d), scale: [Float](repeating: 1, count: d),
                                        weights: [Float](repeating: 0.01, count: 2 * d), bias: [-1, -3], router: "buddy")
                .withShareRule(0.25, seedFeatures: [[Float](repeating: 0.5, count: d), [Float](repeating: 0, count: d)])
            try RouterFile.save(p, model: m, notes: "seed", to: c)
            return [(a, false), (b, false), (c, true)]
        }()
        let budget = FuzzBudget(defaultIterations: 600)
        var mutator = Mutator(seed: budget.seed, dictionary: textFuzzDictionary)
        var loaded = 0, refused = 0
        let path = dir.appendingPathComponent("mutant.json").path
        let originals = try seeds.map { ([UInt8](try Data(contentsOf: URL(fileURLWithPath: $0.0))), $0.1) }
        let (n, secs) = budget.run { i in
            let (seed, isPredictor) = originals[i % originals.count]
            // JSON keys sit at the start (sorted keys); weights are long arrays: mutate anywhere.
            let b = mutator.mutate(seed)
            XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(b)), "could not write \(path)")
            do {
                if isPredictor {
                    let p = try RouterFile.loadPredictor(path: path, model: m)
                    var f = [Float](repeating: 0.5, count: p.featureDim)
                    let choice = p.choose(&f, tolerance: 0.1)
                    XCTAssertTrue(choice > 0 && choice <= 1)
                    // A share rule that loads chooses the lowest choice or full depth.
                    if let share = p.fullDepthShare {
                        let auto = try AutoBudget(predictor: p, rule: .share(share))
                        let b = auto.choose(&f)
                        XCTAssertTrue(b == p.choices[0] || b == 1, "\(b)")
                    }
                } else {
                    let r = try RouterFile.load(path: path, model: m)
                    r.budget = 0.5
                    // A prompt set that loads runs exactly k + 2 layers.
                    if let p = (r as? PromptSetSelector)?.promptMask() { XCTAssertEqual(Session.count(p), 16) }
                    if let dm = r as? DecisionModule {
                        let x = [Float](repeating: 0.1, count: dm.inputDim)
                        XCTAssertEqual(dm.choice(budget: 0.5).sets[dm.pick(input: x, budget: 0.5)].count, 14)
                    }
                }
                loaded += 1
            } catch is RoutingError {
                refused += 1
            } catch {
                XCTFail("untyped error: \(error)")
            }
        }
        print(String(format: "fuzz router files: %d executions in %.1f s, %d loaded, %d refused with a RoutingError", n, secs, loaded, refused))
        XCTAssertGreaterThan(refused, n / 4)
    }
}

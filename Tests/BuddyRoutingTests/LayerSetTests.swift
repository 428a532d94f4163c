import BuddyCore
import BuddyRouting
import BuddyTestSupport
import Foundation
import XCTest

final class LayerSetTests: XCTestCase {
    func mask(_ skip: Set<Int>, layers: Int) -> [Bool] { (0..<layers).map { !skip.contains($0) } }

    /// The search's shared-prefix evaluation equals evaluating every candidate from scratch,
    /// its first step is the exhaustive best single removal, every set it reports has the size
    /// and KL it claims, and a resumed search ends where an uninterrupted one does.
    func testSearchIsExactWhereItCanBeCheckedAndResumes() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, routable = L - 2
        let ids = m.tokenizer.encode("The river flows through the old town, past the mill and the church, and on to the sea where the ships wait for the tide.", parseSpecial: false)
        let seqs = [SearchSequence(tokens: Array(ids.prefix(20)), scored: 4..<19), SearchSequence(tokens: Array(ids.suffix(14)), scored: 2..<13)]
        let search = LayerSetSearch(model: m, sequences: seqs, threads: 2)
        XCTAssertEqual(search.scoredCount, 15 + 11)
        XCTAssertEqual(search.objective([Bool](repeating: true, count: L)), 0, accuracy: 1e-5)

        let base = mask([17], layers: L)
        let candidates = [mask([17, 4], layers: L), mask([3], layers: L), mask([17, 25, 26], layers: L), base]
        let shared = search.objectives(base: base, candidates: candidates)
        for (c, s) in zip(candidates, shared) { XCTAssertEqual(s, search.objective(c), accuracy: 1e-12) }
        XCTAssertGreaterThan(shared[0], shared[3], "skipping one more layer moves further from full depth")

        var states: [LayerSetSearch.State] = []
        let found = try search.search(minKept: routable - 2, maxInclusions: 2, checkpoint: { states.append($0) })
        XCTAssertEqual(Set(found.keys), Set((routable - 2)...routable))
        for (k, f) in found {
            XCTAssertEqual(f.kept.count, k)
            // (the full set's KL is 0 by definition; recomputed it is float rounding, ~1e-7)
            XCTAssertEqual(f.kl, search.objective(mask(Set(1...routable).subtracting(f.kept), layers: L)), accuracy: k == routable ? 1e-5 : 1e-12)
        }
        let singles = (1...routable).map { search.objective(mask([$0], layers: L)) }
        XCTAssertEqual(found[routable - 1]!.kl, singles.min()!, accuracy: 1e-12)
        XCTAssertGreaterThanOrEqual(states.count, 2)
        XCTAssertEqual(try search.search(minKept: routable - 2, maxInclusions: 2, from: states[0]), found)

        // Every slider position gets a set of its size; below the search they are nested.
        let sets = LayerSetSearch.completeSets(found, ranking: Array(1...routable))
        XCTAssertEqual(Set(sets.keys), Set(1...routable))
        for (k, s) in sets { XCTAssertEqual(s.count, k) }
        for k in 1..<(routable - 2) { XCTAssertTrue(Set(sets[k]!).isSubset(of: Set(sets[k + 1]!)), "k \(k)") }
    }

    /// A search over one short sentence of the default model, for the swap tests.
    private func swapFixture() throws -> (search: LayerSetSearch, routable: Int) {
        let m = try TestSupport.model()
        let ids = m.tokenizer.encode("The bell rang twice before the doors opened and the crowd moved in from the rain.", parseSpecial: false)
        return (LayerSetSearch(model: m, sequences: [SearchSequence(tokens: ids, scored: 3..<(ids.count - 1))], threads: 2), m.config.layers - 2)
    }

    /// With a shortlist as big as the set, one round of the swap search takes the best of all
    /// single swaps (checked by brute force); every round lowers the KL it reports, which is the
    /// found set's own; the size never changes. A smaller shortlist tries fewer swaps.
    func testSwapSearchTakesTheBestSwapAndReportsItsSetsKL() throws {
        let (search, routable) = try swapFixture()
        func runs(_ kept: [Int]) -> [Bool] { LayerBudget.mask(layers: routable + 2, chosen: kept) }
        let start = (1...routable).filter { $0 != 1 && $0 != 20 }   // layer 1 is one this model cannot spare
        let startKL = search.objective(runs(start))
        var bruteForce: (kl: Double, out: Int, in: Int) = (.infinity, 0, 0)
        for o in start { for a in [1, 20] {
            let kl = search.objective(runs(start.filter { $0 != o } + [a]))
            if kl < bruteForce.kl { bruteForce = (kl, o, a) }
        } }
        XCTAssertLessThan(bruteForce.kl, startKL, "some swap helps this start")

        let one = search.swapSearch(start: start, rounds: 1, shortlist: start.count)
        XCTAssertEqual(one.swaps.map { $0.dropped + $0.added }, [[bruteForce.out, bruteForce.in]])
        XCTAssertEqual(one.kl, bruteForce.kl, accuracy: 1e-12)

        let evaluationsBefore = search.evaluations
        let many = search.swapSearch(start: start, rounds: 2, shortlist: 1)
        // Per round: 1 start + 26 removals + 2 additions + swaps with the best removal (2) or the best addition (26), one shared.
        XCTAssertLessThanOrEqual(search.evaluations - evaluationsBefore, 1 + 2 * (28 + 27))
        XCTAssertEqual(many.kept.count, start.count)
        XCTAssertEqual(many.kl, search.objective(runs(many.kept)), accuracy: 1e-12)
        XCTAssertLessThan(many.kl, startKL)
        for (a, b) in zip([startKL] + many.swaps.map(\.kl), many.swaps.map(\.kl)) { XCTAssertLessThan(b, a) }
    }

    /// A double swap takes the best pair of shortlisted removals with the best pair of
    /// shortlisted additions (checked by brute force over the same shortlists).
    func testDoubleSwapTakesTheBestPairOfTheShortlists() throws {
        let (search, routable) = try swapFixture()
        func runs(_ kept: [Int]) -> [Bool] { LayerBudget.mask(layers: routable + 2, chosen: kept) }
        let start = (1...routable).filter { ![1, 2, 20].contains($0) }
        let startKL = search.objective(runs(start))
        // The shortlists as the search builds them: the 3 cheapest removals, the 3 best additions (all of them here).
        let removalKL = Dictionary(uniqueKeysWithValues: start.map { o in (o, search.objective(runs(start.filter { $0 != o }))) })
        let outs = start.sorted { removalKL[$0]! < removalKL[$1]! }.prefix(3)
        var best: (kl: Double, out: [Int], in: [Int]) = (startKL, [], [])
        for a in outs { for b in outs where a < b { for add in [[1, 2], [1, 20], [2, 20]] {
            let kl = search.objective(runs(start.filter { $0 != a && $0 != b } + add))
            if kl < best.kl - 1e-9 { best = (kl, [a, b], add) }
        } } }
        XCTAssertFalse(best.out.isEmpty, "some double swap helps this start")

        let found = search.swapSearch(start: start, rounds: 1, shortlist: 3, size: 2)
        XCTAssertEqual(found.swaps.map { $0.dropped + $0.added }, [best.out + best.in])
        XCTAssertEqual(found.kl, best.kl, accuracy: 1e-12)
        XCTAssertEqual(found.kept.count, start.count)
        XCTAssertEqual(found.kl, search.objective(runs(found.kept)), accuracy: 1e-12)
    }

    /// Replacing one row of a table changes the set the module runs at that k and table only.
    func testReplacingSetChangesOneRowOfOneTable() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, routable = L - 2
        let base = try DecisionModule(prior: StaticRanking.random(layers: L, seed: 3), dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8, seed: 1)
        var w = base.weights
        w.priorByCount = DecisionModule.priorTable(sets: [:], fallback: w.prior, routable: routable)
        w.gate = DecisionModule.ContextGate(weights: [Float](repeating: 0, count: base.inputDim), bias: 0,
                                            priorByCount: DecisionModule.priorTable(sets: [14: Array(1...14)], fallback: w.prior, routable: routable))
        let dm = try DecisionModule(layers: L, dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8, weights: w)
        func set(_ d: DecisionModule, _ k: Int, conversation: Bool) -> [Int] { LayerBudget.topK(Array(d.priorScores(kept: k, gated: conversation)), k: k).sorted() }
        let new = [1, 2, 3, 5, 8, 9, 10, 11, 19, 20, 21, 22, 24, 28]
        let replaced = try dm.replacingSet(kept: 14, conversation: true, with: new)
        XCTAssertEqual(set(replaced, 14, conversation: true), new)
        XCTAssertEqual(set(dm, 14, conversation: true), Array(1...14), "the original is untouched")
        for k in [13, 15] { XCTAssertEqual(set(replaced, k, conversation: true), set(dm, k, conversation: true)) }
        for k in [13, 14, 15] { XCTAssertEqual(set(replaced, k, conversation: false), set(dm, k, conversation: false)) }
        let prose = try dm.replacingSet(kept: 14, conversation: false, with: new)
        XCTAssertEqual(set(prose, 14, conversation: false), new)
        XCTAssertEqual(set(prose, 14, conversation: true), Array(1...14))
        XCTAssertThrowsError(try dm.replacingSet(kept: 14, conversation: true, with: Array(1...13)))
        XCTAssertThrowsError(try dm.replacingSet(kept: 2, conversation: true, with: [0, 5]))
        XCTAssertThrowsError(try base.replacingSet(kept: 2, conversation: true, with: [3, 5]), "no conversation table without a gate")
    }

    /// A module with per-budget sets runs exactly the set of its k in prefill and decode (the
    /// sets need not be nested), falls back to its ranking elsewhere, and round-trips through a
    /// version-2 router file; a version-1 file without the table still loads.
    func testPerBudgetSetsDriveTheModuleAndRoundTrip() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, routable = L - 2
        let ranking = StaticRanking.random(layers: L, seed: 5)
        let base = try DecisionModule(prior: ranking, dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8, seed: 1)
        let sets: [Int: [Int]] = [
            27: (1...routable).filter { $0 != 9 },
            25: (1...routable).filter { ![2, 14, 20].contains($0) },
            22: (1...routable).filter { ![3, 9, 13, 14, 15, 27].contains($0) },   // not inside the 25-set
        ]
        var w = base.weights
        w.priorByCount = DecisionModule.priorTable(sets: sets, fallback: w.prior, routable: routable)
        let dm = try DecisionModule(layers: L, dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8, weights: w)
        let s = Session(model: m, capacity: 64, threads: 2, batchSize: 8)
        s.selector = dm
        let prompt = m.tokenizer.encode("Sets chosen for each budget", parseSpecial: false)
        for k in [27, 25, 22, 20] {
            dm.budget = Double(k) / Double(routable)
            let want = sets[k].map { [0] + $0 + [L - 1] } ?? ranking.mask(budget: dm.budget).indices.filter { ranking.mask(budget: dm.budget)[$0] }
            XCTAssertEqual(dm.fixedMask(budget: dm.budget).map { m in m.indices.filter { m[$0] } }, want, "fixed mask, k \(k)")
            s.reset(); dm.resetContext()
            try s.evaluate(prompt)
            XCTAssertEqual(s.lastLayers, want, "prefill, k \(k)")
            try s.step(Sampler.argmax(s.decode.logits, count: m.config.vocabSize))
            XCTAssertEqual(s.lastLayers, want, "decode, k \(k)")
        }

        var learned = w
        learned.b2[3] = 0.5
        XCTAssertNil(try DecisionModule(layers: L, dim: m.config.dim, kvDim: m.config.kvDim, hidden: 8, weights: learned).fixedMask(budget: 0.5),
                     "a module with a learned part routes per token")

        let saved = try SavedModuleCopy(dm, model: m, tag: "sets")
        defer { saved.remove() }
        XCTAssertEqual(try XCTUnwrap(RouterFile.load(path: saved.path, model: m) as? DecisionModule).weights, dm.weights)
        let rewrite = saved.edited
        XCTAssertThrowsError(try RouterFile.load(path: try rewrite { $0["prior_by_count"] = [1, 2] }, model: m)) { e in
            XCTAssertTrue("\(e)".contains("prior_by_count has 2 values"), "\(e)")
        }
        let v1 = try rewrite { $0["version"] = 1; $0["prior_by_count"] = nil }
        XCTAssertEqual(try XCTUnwrap(RouterFile.load(path: v1, model: m) as? DecisionModule).weights, base.weights)
    }
}

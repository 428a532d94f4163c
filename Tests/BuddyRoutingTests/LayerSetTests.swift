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

    /// The one-swap refinement: its first move is the best of every one-swap neighbour measured
    /// from scratch, every reported KL is the set's own, it never ends worse than it started,
    /// and where it stops before its round limit no neighbour is better (a local optimum); the
    /// best neighbours `--neighbour-budgets` adds are the lowest-KL ones measured from scratch.
    func testRefinementMovesToTheBestSwapUntilNoneHelps() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, routable = L - 2
        let ids = m.tokenizer.encode("The river flows through the old town, past the mill and the church, and on to the sea where the ships wait for the tide.", parseSpecial: false)
        let search = LayerSetSearch(model: m, sequences: [SearchSequence(tokens: Array(ids.prefix(12)), scored: 3..<11)], threads: 1)
        func setMask(_ kept: [Int]) -> [Bool] { LayerBudget.mask(layers: L, chosen: Set(kept)) }
        func neighbours(_ kept: [Int]) -> [[Int]] {
            kept.flatMap { out in (1...routable).filter { !kept.contains($0) }.map { (kept.filter { $0 != out } + [$0]).sorted() } }
        }
        // A poor start: layers 1 and 2 skipped (early layers matter most in this model).
        let start = Array(3...routable)
        let startKL = search.objective(setMask(start))
        var steps: [([Int], Double)] = []
        let result = search.refine(kept: start, rounds: 10) { steps.append(($0, $1)) }
        XCTAssertFalse(steps.isEmpty, "skipping layers 1 and 2 is far from the best pair, so a swap must help")
        let firstCosts = neighbours(start).map { ($0, search.objective(setMask($0))) }
        let bestFirst = firstCosts.min { $0.1 < $1.1 }!
        XCTAssertEqual(steps[0].0, bestFirst.0)
        XCTAssertEqual(steps[0].1, bestFirst.1, accuracy: 1e-12)
        // The neighbours `--neighbour-budgets` adds: every one-swap set, the best three by KL.
        XCTAssertEqual(Set(LayerSetSearch.oneSwapNeighbours(of: start, routable: routable)), Set(neighbours(start)))
        XCTAssertEqual(LayerSetSearch.oneSwapNeighbours(of: start, routable: routable).count, start.count * (routable - start.count))
        let ranked = firstCosts.sorted { $0.1 < $1.1 }
        let best3 = search.bestNeighbours(of: start, count: 3)
        XCTAssertEqual(best3.map(\.kept), ranked.prefix(3).map(\.0))
        for (f, r) in zip(best3, ranked) { XCTAssertEqual(f.kl, r.1, accuracy: 1e-12) }
        for (set, kl) in steps {
            XCTAssertEqual(set.count, start.count)
            XCTAssertEqual(kl, search.objective(setMask(set)), accuracy: 1e-12)
        }
        XCTAssertEqual(result.kept, steps.last!.0)
        XCTAssertLessThan(result.kl, startKL)
        XCTAssertLessThan(steps.count, 10)
        for n in neighbours(result.kept) { XCTAssertGreaterThanOrEqual(search.objective(setMask(n)), result.kl - 1e-12, "\(n)") }
        // No rounds: the start is returned with its own KL.
        let none = search.refine(kept: start, rounds: 0)
        XCTAssertEqual(none.kept, start)
        XCTAssertEqual(none.kl, startKL, accuracy: 1e-12)
    }

    /// What `buddy train router` measures agrees with how the module routes, stand-ins on: the
    /// routing inputs give the decisions a teacher-forced run makes row by row, and a module
    /// with one set at k has, position by position, that set's KL.
    func testTrainingMeasurementsAgreeWithRouting() throws {
        let m = try TestSupport.model()
        let L = m.config.layers
        let ids = m.tokenizer.encode("The bell rang twice before the doors opened and the crowd moved in from the rain.", parseSpecial: false)
        let search = LayerSetSearch(model: m, sequences: [SearchSequence(tokens: ids, scored: 3..<(ids.count - 1))], threads: 2)
        search.standIns = try XCTUnwrap(Routers.standIns(model: m), "the shipped stand-ins")
        let module = try TestModules.withScorers(model: m, seed: 11, scale: 0.2)
        module.budget = 0.5
        let inputs = search.routingInputs()
        XCTAssertEqual(inputs.count, search.scoredCount)
        let picks = inputs.map { module.pick(input: $0, budget: 0.5) }
        XCTAssertGreaterThan(Set(picks).count, 1, "the random scorer should not pick one set everywhere")
        let p = PerplexityEvaluator(model: m, contextSize: ids.count, threads: 2)
        module.resetContext()
        let masks = m.transformer.routedForward(ids[...], start: 0, p.batch, p.cache, routing: .perRow(module), policy: .fill)
        let choice = module.choice(budget: 0.5)
        for (t, pos) in (3..<(ids.count - 1)).enumerated() {
            XCTAssertEqual(masks[pos], LayerBudget.mask(layers: L, chosen: Set(choice.sets[picks[t]])), "position \(pos)")
        }

        let single = try DecisionModule(ranking: StaticRanking.random(layers: L, seed: 4), dim: m.config.dim, kvDim: m.config.kvDim)
        single.budget = 0.5
        let routed = search.routedPositionKL(single, policy: .fill)
        let fixed = search.positionKL(try XCTUnwrap(single.fixedMask(budget: 0.5)))
        for (a, b) in zip(routed, fixed) { XCTAssertEqual(a, b, accuracy: 1e-4 * max(1, b)) }
        XCTAssertGreaterThan(fixed.reduce(0, +), 0)
    }

    /// Sequences spread over two lanes (one thread each) give exactly what one lane gives
    /// running them in turn: objectives, per-position KL and routed KL, bit for bit, with
    /// stand-ins on and a module whose scorer mixes sets. More sequences than lanes, of
    /// different lengths, so the lanes take them in a varying order.
    func testTwoLanesGiveOneLanesNumbersExactly() throws {
        let m = try TestSupport.model()
        let L = m.config.layers
        let ids = m.tokenizer.encode("The bell rang twice before the doors opened and the crowd moved in from the rain, shaking coats and calling to friends across the hall.", parseSpecial: false)
        let seqs = [SearchSequence(tokens: Array(ids.prefix(24)), scored: 4..<23), SearchSequence(tokens: Array(ids.suffix(11)), scored: 2..<10),
                    SearchSequence(tokens: Array(ids.prefix(16)), scored: 1..<15), SearchSequence(tokens: Array(ids.dropFirst(5).prefix(19)), scored: 6..<18),
                    SearchSequence(tokens: Array(ids.suffix(7)), scored: 1..<6)]
        let standIns = try XCTUnwrap(Routers.standIns(model: m), "the shipped stand-ins")
        let one = LayerSetSearch(model: m, sequences: seqs, threads: 1), two = LayerSetSearch(model: m, sequences: seqs, threads: 2)
        one.standIns = standIns
        two.standIns = standIns
        let base = mask([17, 5], layers: L)
        let candidates = [mask([17, 5, 4], layers: L), mask([3], layers: L), mask([17, 5, 25, 26], layers: L), base]
        XCTAssertEqual(two.objectives(base: base, candidates: candidates), one.objectives(base: base, candidates: candidates))
        XCTAssertEqual(two.objective(candidates[2]), one.objective(candidates[2]))
        XCTAssertEqual(two.positionKL(candidates[0]), one.positionKL(candidates[0]))
        let module = try TestModules.withScorers(model: m, seed: 11, scale: 0.2)
        module.budget = 0.5
        let routedOne = one.routedPositionKL(module, policy: .fill)
        XCTAssertEqual(two.routedPositionKL(module, policy: .fill), routedOne)
        XCTAssertEqual(routedOne.count, one.scoredCount)
        XCTAssertGreaterThan(routedOne.reduce(0, +), 0)
    }

    /// Measuring several masks in one pass, each restarting below its first difference from the
    /// mask before it, gives each mask's own `positionKL` bit for bit: in lexicographic order, in
    /// an order where the restart layer jumps up and down, and with a mask repeated.
    func testGroupedPositionKLEqualsEachMaskAlone() throws {
        let m = try TestSupport.model()
        let L = m.config.layers
        let ids = m.tokenizer.encode("Rain fell on the harbour all night, and by morning the boats had drifted against the far wall of the pier.", parseSpecial: false)
        let seqs = [SearchSequence(tokens: Array(ids.prefix(20)), scored: 3..<19), SearchSequence(tokens: Array(ids.suffix(12)), scored: 1..<11),
                    SearchSequence(tokens: Array(ids.dropFirst(2).prefix(15)), scored: 5..<14)]
        let search = LayerSetSearch(model: m, sequences: seqs, threads: 2)
        search.standIns = try XCTUnwrap(Routers.standIns(model: m), "the shipped stand-ins")
        // The third restarts at layer 20 from streams that only the second's run can have kept
        // (layer 3 skipped); the fourth repeats it.
        let masks = [mask([20, 9], layers: L), mask([3, 20], layers: L), mask([3, 25], layers: L), mask([3, 25], layers: L),
                     mask([9, 21, 22], layers: L), mask([2], layers: L), mask([9, 21], layers: L)]
        let alone = masks.map { search.positionKL($0) }
        XCTAssertEqual(search.positionKLs(masks), alone)
        let sorted = masks.indices.sorted { masks[$0].lexicographicallyPrecedes(masks[$1]) { $0 && !$1 } }
        XCTAssertEqual(search.positionKLs(sorted.map { masks[$0] }), sorted.map { alone[$0] })
        XCTAssertNotEqual(alone[0], alone[3], "the masks differ in what they cost")
    }

    /// A module with one searched set per budget runs exactly the set of its k in prefill and
    /// decode (the sets need not be nested), and round-trips through a router file.
    func testPerBudgetSetsDriveTheModuleAndRoundTrip() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, routable = L - 2
        let ranking = StaticRanking.random(layers: L, seed: 5)
        let base = try DecisionModule(ranking: ranking, dim: m.config.dim, kvDim: m.config.kvDim)
        let sets: [Int: [Int]] = [
            27: (1...routable).filter { $0 != 9 },
            25: (1...routable).filter { ![2, 14, 20].contains($0) },
            22: (1...routable).filter { ![3, 9, 13, 14, 15, 27].contains($0) },   // not inside the 25-set
        ]
        var w = base.weights
        for (k, set) in sets { w.choices[k - 1] = .init(kept: k, sets: [set], names: ["search"]) }
        let dm = try DecisionModule(layers: L, dim: m.config.dim, kvDim: m.config.kvDim, weights: w)
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
            XCTAssertEqual(dm.layerSetLabel, sets[k] == nil ? ranking.name : "search")
        }

        let saved = try SavedModuleCopy(dm, model: m, tag: "sets")
        defer { saved.remove() }
        XCTAssertEqual(try XCTUnwrap(RouterFile.load(path: saved.path, model: m) as? DecisionModule).weights, dm.weights)
    }
}

import BuddyCore
import BuddyRouting
import BuddyTestSupport
import BuddyTraining
import Foundation
import XCTest

final class BudgetPredictorTests: XCTestCase {
    let grid = [0.5, 0.7, 0.9]

    /// Ten chat prompts in two kinds at features (1, 0) and (−1, 0), with curves `low` and
    /// `high`, and ten more prompts named `other`-i at (0, 1) with curve `otherKL`: affinely
    /// independent features, so a linear predictor fits each kind exactly.
    func twoKindCurves(low: [Double], high: [Double], other: String = "text", otherKL: [Double]) -> [BudgetCurve] {
        var curves: [BudgetCurve] = []
        for i in 0..<10 {
            let isLow = i % 2 == 0
            curves.append(BudgetCurve(id: "chat-\(i)", features: isLow ? [1, 0] : [-1, 0], kl: isLow ? low : high, tokens: 8))
            curves.append(BudgetCurve(id: "\(other)-\(i)", features: [0, 1], kl: otherKL, tokens: 8))
        }
        return curves
    }

    /// Synthetic curves whose log KL is linear in two of the features: the ridge fit recovers
    /// them on prompts it did not see.
    func testRidgeFitRecoversALinearRelation() throws {
        var rng = SeededRNG(seed: 7)
        let d = 12
        func sample() -> ([Float], [Double]) {
            let f = (0..<d).map { _ in rng.nextUnitFloat() * 4 - 2 }
            let y = grid.map { b in -3 * b + 0.8 * Double(f[0]) - 0.5 * Double(f[3]) }
            return (f, y)
        }
        let train = (0..<80).map { _ in sample() }, test = (0..<20).map { _ in sample() }
        let p = try BudgetPredictor.fit(features: train.map(\.0), logKL: train.map(\.1), budgets: grid, lambda: 1e-4, router: "test")
        for (f, y) in test {
            let kl = f.withUnsafeBufferPointer { p.predictKL($0.baseAddress!) }
            for (pred, want) in zip(kl, y) { XCTAssertEqual(log(pred), want, accuracy: 0.02) }
        }
    }

    /// The choice is the smallest grid budget under the tolerance, 1 when none is, and the
    /// predicted curve never rises with the budget.
    func testChoosesTheSmallestBudgetUnderTheTolerance() throws {
        // One feature; weights make log KL = bias_b + w_b * z with z = f.
        let p = try BudgetPredictor(budgets: grid, featureDim: 1, mean: [0], scale: [1], weights: [0, 0, 1], bias: [log(0.8), log(0.3), log(0.05)], router: "t")
        var f: [Float] = [0]
        XCTAssertEqual(p.choose(&f, tolerance: 0.1), 0.9)
        XCTAssertEqual(p.choose(&f, tolerance: 0.3), 0.7)
        XCTAssertEqual(p.choose(&f, tolerance: 1.0), 0.5)
        XCTAssertEqual(p.choose(&f, tolerance: 0.01), 1)
        // At z = 3 the 0.9 output (0.05·e³ ≈ 1.0) exceeds the lower budgets': they are raised to it.
        f = [3]
        let kl = p.predictKL(&f)
        XCTAssertEqual(kl[2], 0.05 * exp(3), accuracy: 1e-4)
        XCTAssertEqual(kl[0], kl[2], accuracy: 1e-9)
        XCTAssertEqual(kl[1], kl[2], accuracy: 1e-9)
        XCTAssertThrowsError(try BudgetPredictor(budgets: [0.9, 0.5], featureDim: 1, mean: [0], scale: [1], weights: [0, 0], bias: [0, 0], router: "t"))
        XCTAssertThrowsError(try BudgetPredictor(budgets: grid, featureDim: 1, mean: [.nan], scale: [1], weights: [0, 0, 0], bias: [0, 0, 0], router: "t"))
    }

    /// `choices` limits what `choose` returns: with 0.7 alone it skips 0.9 even when 0.9 is under
    /// the tolerance, and goes to full depth instead; choices outside the grid are refused.
    func testChoosesOnlyAmongItsChoices() throws {
        let p = try BudgetPredictor(budgets: grid, choices: [0.7], featureDim: 1, mean: [0], scale: [1], weights: [0, 0, 0],
                                    bias: [log(0.8), log(0.3), log(0.05)], router: "t")
        var f: [Float] = [0]
        XCTAssertEqual(p.choose(&f, tolerance: 1.0), 0.7, "0.5 is under the tolerance but not a choice")
        XCTAssertEqual(p.choose(&f, tolerance: 0.3), 0.7)
        XCTAssertEqual(p.choose(&f, tolerance: 0.1), 1, "0.9 (0.05) would meet it, but only 0.7 and full depth are choices")
        XCTAssertEqual(try BudgetPredictor(budgets: grid, featureDim: 1, mean: [0], scale: [1], weights: [0, 0, 0], bias: [0, 0, 0], router: "t").choices, grid,
                       "no choices given: every grid budget")
        for bad in [[0.8], [0.9, 0.7], []] as [[Double]] {
            XCTAssertThrowsError(try BudgetPredictor(budgets: grid, choices: bad, featureDim: 1, mean: [0], scale: [1], weights: [0, 0, 0],
                                                     bias: [0, 0, 0], router: "t")) { XCTAssertTrue("\($0)".contains("choices"), "\($0)") }
        }
    }

    /// A predictor whose predicted KL at its one choice, 0.7, is 0.3·e^z for the single feature z.
    func shareRulePredictor() throws -> BudgetPredictor {
        try BudgetPredictor(budgets: grid, choices: [0.7], featureDim: 1, mean: [0], scale: [1], weights: [0, 1, 0],
                            bias: [log(0.9), log(0.3), log(0.01)], router: "t")
    }

    /// The share rule's window starts from the training prompts' predictions at evenly spaced
    /// quantiles, median first; a request above the window's upper share runs at full depth, one
    /// below at the lowest choice; over a long stream the share holds, also when the requests
    /// move to a spread the training prompts never had (the window follows them).
    func testShareRuleRunsTheRequestsPredictedToDriftMostAtFullDepth() throws {
        let training = (0..<64).map { i in [Float(i) / 63 * 2 - 1] }   // z from −1 to 1
        let p = try shareRulePredictor().withShareRule(0.5, seedFeatures: training)
        XCTAssertEqual(p.fullDepthShare, 0.5)
        XCTAssertEqual(p.recentSeed.count, AutoBudget.window)
        let want = (0..<AutoBudget.window).map { i in 0.3 * exp(Double(training[(2 * i + 1) * 64 / (2 * AutoBudget.window)][0])) }
        for (got, expected) in zip(p.recentSeed.sorted(), want) { XCTAssertEqual(got, expected, accuracy: 1e-6, "evenly spaced quantiles") }
        XCTAssertEqual(p.recentSeed[0], want[AutoBudget.window / 2], accuracy: 1e-6, "the median first")
        XCTAssertEqual(p.recentSeed[1], want[AutoBudget.window / 2 - 1], accuracy: 1e-6)
        XCTAssertEqual(p.recentSeed[2], want[AutoBudget.window / 2 + 1], accuracy: 1e-6)

        let auto = try AutoBudget(predictor: p, rule: .share(0.5))
        var z: [Float] = [3]
        XCTAssertEqual(auto.choose(&z), 1, "above every training prompt: full depth")
        z = [-3]
        XCTAssertEqual(auto.choose(&z), 0.7, "below every training prompt: the lowest choice")
        XCTAssertEqual(auto.choose(predictedAtLowestChoice: 0.3 * exp(0.9)), 1)
        XCTAssertEqual(auto.choose(predictedAtLowestChoice: 0.3 * exp(-0.9)), 0.7)

        var rng = SeededRNG(seed: 3)
        for (share, spread) in [(0.5, Float(0)), (0.25, 0), (0.5, 6)] {
            let chooser = try AutoBudget(predictor: p, rule: .share(share))
            // The first window's worth of a new spread settles the window; then count.
            var full = 0
            for i in 0..<(AutoBudget.window + 2000) {
                var f: [Float] = [spread + rng.nextUnitFloat() * 2 - 1]
                let b = chooser.choose(&f)
                XCTAssertTrue(b == 1 || b == 0.7)
                if i >= AutoBudget.window, b == 1 { full += 1 }
            }
            XCTAssertEqual(Double(full) / 2000, share, accuracy: 0.05, "share \(share), spread at \(spread)")
        }

        // The rule a command runs: its own option first, then the predictor's default.
        XCTAssertEqual(AutoBudgetRule.resolve(tolerance: 0.4, share: nil, predictor: p), .tolerance(0.4))
        XCTAssertEqual(AutoBudgetRule.resolve(tolerance: nil, share: 0.3, predictor: p), .share(0.3))
        XCTAssertEqual(AutoBudgetRule.resolve(tolerance: nil, share: nil, predictor: p), .share(0.5))
        let plain = try shareRulePredictor()
        XCTAssertEqual(AutoBudgetRule.resolve(tolerance: nil, share: nil, predictor: plain), .tolerance(BudgetPredictor.defaultTolerance))
        XCTAssertThrowsError(try AutoBudget(predictor: plain, rule: .share(0.5))) { XCTAssertTrue("\($0)".contains("--full-depth-share"), "\($0)") }
        XCTAssertThrowsError(try AutoBudget(predictor: p, rule: .share(1))) { XCTAssertTrue("\($0)".contains("(0, 1)"), "\($0)") }
        XCTAssertThrowsError(try AutoBudget(predictor: p, rule: .tolerance(0))) { XCTAssertTrue("\($0)".contains("positive"), "\($0)") }
        // Under a tolerance the same request runs at the lowest choice when within it.
        let byTolerance = try AutoBudget(predictor: p, rule: .tolerance(0.5))
        z = [0]
        XCTAssertEqual(byTolerance.choose(&z), 0.7)
        z = [1]
        XCTAssertEqual(byTolerance.choose(&z), 1)
    }

    /// `--full-depth-share` needs the hull's choices (the rule runs the lowest choice or full depth).
    func testShareRuleTrainingNeedsHullChoices() throws {
        var o = PredictorTraining.Options(chatData: "c", textData: "t", out: "o")
        o.fullDepthShare = 0.5
        XCTAssertThrowsError(try o.validate()) { XCTAssertTrue("\($0)".contains("--choices hull"), "\($0)") }
        o.choiceRule = .hull
        XCTAssertNoThrow(try o.validate())
        o.fullDepthShare = 1.5
        XCTAssertThrowsError(try o.validate()) { XCTAssertTrue("\($0)".contains("(0, 1)"), "\($0)") }
    }

    /// The hull choices by hand: within the zone (budget ≥ floor) the points and full depth at KL
    /// 0; a point on or above the chord between its neighbours on the hull is dropped.
    func testHullChoicesKeepTheZonesLowerConvexHull() {
        let budgets = [0.5, 0.8, 0.85, 0.9, 0.95]
        func layers(_ b: Double) -> Double { (28 * b).rounded() }   // 14, 22, 24, 25, 27; full depth 28
        // The shipped predictor's training chat curve (docs/TRAINING.md): from 22 layers (0.2869)
        // the chord to full depth falls 0.0478 per layer, below 0.85 (0.2198 > 0.1913), 0.9 and
        // 0.95; 0.5 lies below the floor.
        let concave = [0.9356, 0.2869, 0.2198, 0.1813, 0.0731]
        XCTAssertEqual(BudgetPredictor.hullChoices(budgets: budgets, meanKL: concave, routable: 28, layers: layers), [0.8])
        // A convex curve keeps every zone budget.
        let convex = [0.9, 0.30, 0.12, 0.07, 0.02]
        XCTAssertEqual(BudgetPredictor.hullChoices(budgets: budgets, meanKL: convex, routable: 28, layers: layers), [0.8, 0.85, 0.9, 0.95])
        // 0.9 above the chord from 0.85 to 0.95 (at 25 layers: 0.12 - 0.05 = 0.07 < 0.09): dropped.
        let kink = [0.9, 0.30, 0.12, 0.09, 0.02]
        XCTAssertEqual(BudgetPredictor.hullChoices(budgets: budgets, meanKL: kink, routable: 28, layers: layers), [0.8, 0.85, 0.95])
        // Nothing in the zone: the whole grid; a lower floor lets 0.5 in (it starts the hull).
        XCTAssertEqual(BudgetPredictor.hullChoices(budgets: [0.5, 0.6], meanKL: [1, 0.8], routable: 28, layers: layers), [0.5, 0.6])
        XCTAssertEqual(BudgetPredictor.hullChoices(budgets: budgets, meanKL: concave, routable: 28, floor: 0.5, layers: layers), [0.5, 0.8])
    }

    /// With hull choices the cross-validated comparison, by hand. Grid 0.8 / 0.9 on 10 routable
    /// layers (8 and 9). The chat prompts' mean curve at 8 / 9 / 10 layers is 0.6 / 0.5 / 0, and
    /// 0.9 lies above the chord from 8 to full depth (0.3 at 9): the hull keeps 0.8 alone. At
    /// tolerance 0.95 every-grid-budget choice sends the high-drift prompts to 0.9 (KL 0.9 ≤
    /// 0.95); the hull's sends them to full depth.
    func testToleranceComparisonWithHullChoices() throws {
        let grid = [0.8, 0.9]
        // The text prompts are not chat: they neither choose the hull nor count in the comparison.
        let curves = twoKindCurves(low: [0.2, 0.1], high: [1.0, 0.9], otherKL: [0.05, 0.02])
        XCTAssertEqual(PredictorTraining.ChoiceRule.hull.choices(for: curves, grid: grid, routable: 10), [0.8])
        XCTAssertEqual(PredictorTraining.ChoiceRule.grid.choices(for: curves, grid: grid, routable: 10), grid)
        func row(_ rule: PredictorTraining.ChoiceRule) throws -> PredictorTraining.ToleranceRow {
            try XCTUnwrap(PredictorTraining.toleranceComparison(curves, grid: grid, lambda: 1e-3, tolerances: [0.95], routable: 10, router: "test",
                                                                choiceRule: rule).first)
        }
        // Every grid budget: half at 8 layers (0.2), half at 9 (0.9): mean 8.5 layers, KL 0.55,
        // and the fixed budget there (0.6 + 0.5) / 2 = 0.55.
        let grids = try row(.grid)
        XCTAssertEqual(grids.chosen, [0.8, 0.9])
        XCTAssertEqual(grids.autoKL, 0.55, accuracy: 1e-9)
        XCTAssertEqual(grids.fixedKL, 0.55, accuracy: 1e-9)
        // The hull: half at 8 (0.2), half at full depth (0): mean 9 layers, KL 0.1 against the
        // fixed 0.9's 0.5; the best prompt-blind mix at 9 layers is the chord, 0.3.
        let hull = try row(.hull)
        XCTAssertEqual(hull.chosen, [0.8, 1])
        XCTAssertEqual(hull.meanBudget, 0.9, accuracy: 1e-12)
        XCTAssertEqual(hull.autoKL, 0.1, accuracy: 1e-9)
        XCTAssertEqual(hull.fixedKL, 0.5, accuracy: 1e-9)
        XCTAssertEqual(hull.mixKL, 0.3, accuracy: 1e-9)
    }

    /// The cross-validated comparison behind the default tolerance, against a hand computation:
    /// 10 chat prompts in two kinds (low and high drift) plus 10 text prompts
    /// that must not count. Grid 0.5 / 0.75 on a model with 4 routable layers (k = 2 and 3).
    func testToleranceComparisonAgainstHandComputation() throws {
        let grid = [0.5, 0.75]
        let curves = twoKindCurves(low: [0.2, 0.1], high: [2.0, 0.5], otherKL: [0.05, 0.02])
        let rows = try PredictorTraining.toleranceComparison(curves, grid: grid, lambda: 1e-3, tolerances: [0.3, 1e-4], routable: 4, router: "test")
        XCTAssertEqual(rows.count, 2)
        // At 0.3 every low-drift prompt takes 0.5 (KL 0.2) and every high-drift one full depth
        // (0.5 > 0.3 at 0.75): mean layers (5·2 + 5·4)/10 = 3, auto KL (5·0.2 + 5·0)/10 = 0.1.
        // The fixed budget at 3 layers is 0.75: the chat prompts' mean KL there (0.1 + 0.5)/2 = 0.3.
        let r = rows[0]
        XCTAssertEqual(r.chosen, [0.5, 1])
        XCTAssertEqual(r.meanBudget, 0.75, accuracy: 1e-12)
        XCTAssertEqual(r.autoKL, 0.1, accuracy: 1e-9)
        XCTAssertEqual(r.fixedKL, 0.3, accuracy: 1e-9)
        XCTAssertEqual(r.gain, -2.0 / 3.0, accuracy: 1e-9)
        // The chat prompts' points (2 layers, 1.1), (3, 0.3), (4, 0) are convex: no mix beats 0.75.
        XCTAssertEqual(r.mixKL, 0.3, accuracy: 1e-9)
        // A tolerance nothing meets: full depth for all, no drift on either side, no spread.
        XCTAssertEqual(rows[1].chosen, [1])
        XCTAssertEqual(rows[1].autoKL, 0)
        XCTAssertEqual(rows[1].fixedKL, 0)
        XCTAssertEqual(try PredictorTraining.toleranceReport(curves, grid: grid, lambda: 1e-3, tolerances: [0.3, 1e-4], routable: 4,
                                                              router: "test", report: .silent), 0.3)
    }

    /// Extra chat requests (named ids) count as chat prompts; `isMTBench` keeps MT-Bench's
    /// numbered questions apart, and the comparison over them alone is the hand-computed one
    /// above, since the folds and the fits do not change.
    func testToleranceComparisonOverMTBenchQuestionsAlone() throws {
        XCTAssertTrue(PredictorTraining.isMTBench("chat-81"))
        XCTAssertFalse(PredictorTraining.isMTBench("chat-hellaswag-1400"))
        XCTAssertFalse(PredictorTraining.isMTBench("chat-"))
        XCTAssertFalse(PredictorTraining.isMTBench("text-3-100"))
        XCTAssertTrue(PredictorTraining.isChat("chat-tips-2100"))
        let curves = twoKindCurves(low: [0.2, 0.1], high: [2.0, 0.5], other: "chat-request", otherKL: [0.05, 0.02])
        let mtBench = try PredictorTraining.toleranceComparison(curves, grid: [0.5, 0.75], lambda: 1e-3, tolerances: [0.3], routable: 4,
                                                                router: "test", scored: PredictorTraining.isMTBench)
        XCTAssertEqual(mtBench.first?.autoKL ?? -1, 0.1, accuracy: 1e-9)
        XCTAssertEqual(mtBench.first?.fixedKL ?? -1, 0.3, accuracy: 1e-9)
        // Over every chat prompt the requests join: all 10 take 0.5 (KL 0.05), so mean layers
        // (15·2 + 5·4)/20 = 2.5, auto KL (5·0.2 + 10·0.05)/20 = 0.075.
        let all = try PredictorTraining.toleranceComparison(curves, grid: [0.5, 0.75], lambda: 1e-3, tolerances: [0.3], routable: 4, router: "test")
        XCTAssertEqual(all.first?.meanBudget ?? -1, 2.5 / 4, accuracy: 1e-12)
        XCTAssertEqual(all.first?.autoKL ?? -1, 0.075, accuracy: 1e-9)
    }

    /// `buddy train predictor --extra-chat-data` refuses requests whose ids could mix with
    /// MT-Bench's numbered questions or with each other, before the model loads.
    func testExtraChatRequestsNeedDistinctNamedIds() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("buddy-extra-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let chat = dir.appendingPathComponent("chat.jsonl").path, text = dir.appendingPathComponent("text.txt").path
        try #"{"question_id": 81, "turns": ["Hi"]}"#.write(toFile: chat, atomically: true, encoding: .utf8)
        try "some text".write(toFile: text, atomically: true, encoding: .utf8)
        for bad in [#"{"question_id": 81, "turns": ["A"]}"#, #"{"turns": ["no id"]}"#,
                    #"{"question_id": "a", "turns": ["A"]}"# + "\n" + #"{"question_id": "a", "turns": ["B"]}"#] {
            let extra = dir.appendingPathComponent("extra.jsonl").path
            try bad.write(toFile: extra, atomically: true, encoding: .utf8)
            let o = PredictorTraining.Options(chatData: chat, extraChatData: extra, textData: text, out: dir.appendingPathComponent("p.json").path)
            XCTAssertThrowsError(try PredictorTraining.run(o, model: { XCTFail("model loaded"); throw ToolError("unreachable") }, report: .silent)) {
                XCTAssertTrue("\($0)".contains("not a number"), "\($0)")
            }
        }
    }

    /// The best prompt-blind mix of fixed budgets, by hand: the lower convex hull of the points.
    func testBestMixFollowsTheLowerConvexHull() {
        // (2, 1.0), (3, 0.8), (4, 0): the middle point lies above the chord from 2 to 4, so at 3
        // layers half the prompts at 2 and half at 4 give 0.5, better than the fixed 0.8.
        let points: [(k: Double, kl: Double)] = [(2, 1.0), (3, 0.8), (4, 0)]
        XCTAssertEqual(BudgetPredictor.bestMix(points, atLayers: 3), 0.5, accuracy: 1e-12)
        XCTAssertEqual(BudgetPredictor.bestMix(points, atLayers: 2.5), 0.75, accuracy: 1e-12)
        XCTAssertEqual(BudgetPredictor.bestMix(points, atLayers: 4), 0, accuracy: 1e-12)
        XCTAssertEqual(BudgetPredictor.bestMix(points, atLayers: 1), 1.0, "below the first point: the first point")
        // Convex points are their own hull: the mix is the linear interpolation.
        let convex: [(k: Double, kl: Double)] = [(2, 1.0), (3, 0.3), (4, 0)]
        XCTAssertEqual(BudgetPredictor.bestMix(convex, atLayers: 2.5), 0.65, accuracy: 1e-12)
        // The shipped predictor's training chat curve (docs/TRAINING.md): at auto's mean of 23.6
        // layers the hull runs from 22 layers (0.3128) to full depth: 0.3128 · 4.4 / 6.
        let shipped: [(k: Double, kl: Double)] = [(14, 0.9642), (17, 0.7626), (20, 0.4537), (21, 0.3852), (22, 0.3128),
                                                  (24, 0.2440), (25, 0.1934), (27, 0.0731), (28, 0)]
        XCTAssertEqual(BudgetPredictor.bestMix(shipped, atLayers: 23.6), 0.3128 * 4.4 / 6, accuracy: 1e-12)
    }

    /// The default's rule: among spreading tolerances whose mean budget stays in the recommended
    /// zone and at most 0.9 (all spreading ones when none does), the largest gain against the fixed budget,
    /// ties (within half a percent) to the smallest tolerance; one budget for all never counts.
    func testPreferredToleranceStaysInTheZoneAndBreaksTiesTowardsLessDrift() {
        func row(_ t: Double, _ mean: Double, _ chosen: [Double], _ auto: Double, _ fixed: Double) -> PredictorTraining.ToleranceRow {
            .init(tolerance: t, meanBudget: mean, chosen: chosen, autoKL: auto, fixedKL: fixed)
        }
        // The 2026-12-04 fit's rows: only 0.25 keeps the mean budget at or above 0.8.
        let rows = [row(0.25, 0.850, [0.7, 0.75, 0.8, 0.85, 0.9], 0.2541, 0.2535), row(0.4, 0.732, [0.6, 0.7, 0.75, 0.8], 0.4248, 0.4212),
                    row(0.6, 0.688, [0.6, 0.7], 0.5128, 0.5336), row(1, 0.578, [0.5, 0.6], 0.8616, 0.8967)]
        XCTAssertEqual(PredictorTraining.preferredTolerance(rows)?.tolerance, 0.25)
        // Without the zone, 0.6 (-3.90 %) and 1 (-3.91 %) tie, and the smaller wins.
        XCTAssertEqual(PredictorTraining.preferredTolerance(rows, floor: 0.5)?.tolerance, 0.6)
        // A clear winner is kept even when larger.
        XCTAssertEqual(PredictorTraining.preferredTolerance([row(0.4, 0.7, [0.7, 0.8], 0.5, 0.51), row(1, 0.6, [0.5, 0.6], 0.8, 0.9)])?.tolerance, 1)
        // A bigger gain from a tolerance that chose one budget for every prompt does not count.
        XCTAssertEqual(PredictorTraining.preferredTolerance([row(0.4, 0.8, [0.8], 0.1, 0.5), row(1, 0.6, [0.5, 0.6], 0.8, 0.9)])?.tolerance, 1)
        XCTAssertNil(PredictorTraining.preferredTolerance([row(0.4, 0.8, [0.8], 0.1, 0.5)]))
        // The hull predictor's rows on its 290 training chat prompts (2026-12-05): 0.25 gains most
        // but averages 0.998, nearly full depth; the ceiling of 0.9 leaves 0.4.
        let hull = [row(0.25, 0.998, [0.8, 1], 0.0026, 0.0059), row(0.4, 0.861, [0.8, 1], 0.2126, 0.3173),
                    row(0.6, 0.786, [0.8], 0.3842, 0.3842), row(1, 0.786, [0.8], 0.3842, 0.3842)]
        XCTAssertEqual(PredictorTraining.preferredTolerance(hull)?.tolerance, 0.4)
        XCTAssertEqual(PredictorTraining.preferredTolerance(hull, ceiling: 1)?.tolerance, 0.25)
    }

    /// Files round-trip, are tied to their model, and bad ones are refused with a reason.
    /// `--budget auto` then routes a real prompt under the predicted budget.
    func testPredictorFileAndAutoBudgetOnTheModel() throws {
        let m = try TestSupport.model()
        let d = 2 * m.config.kvDim + m.config.dim
        var rng = SeededRNG(seed: 3)
        let feats = (0..<6).map { _ in (0..<d).map { _ in rng.nextUnitFloat() } }
        let logs = (0..<6).map { i in grid.map { -Double(i) * 0.1 - 3 * $0 } }
        let p = try BudgetPredictor.fit(features: feats, logKL: logs, budgets: grid, lambda: 1, router: "sleb")
        let dir = try TestSupport.scratchDirectory("bp")
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("p.json").path
        try RouterFile.save(p, model: m, notes: "test", to: path)
        let back = try RouterFile.loadPredictor(path: path, model: m)
        XCTAssertEqual(back.budgets, p.budgets)
        XCTAssertEqual(back.weights, p.weights)
        XCTAssertEqual(back.choices, p.choices)
        XCTAssertNil(back.fullDepthShare)
        // The share rule and its window's start survive the round trip.
        let shared = try p.withShareRule(0.5, seedFeatures: feats)
        let sharedPath = dir.appendingPathComponent("s.json").path
        try RouterFile.save(shared, model: m, notes: "test", to: sharedPath)
        let sharedBack = try RouterFile.loadPredictor(path: sharedPath, model: m)
        XCTAssertEqual(sharedBack.fullDepthShare, 0.5)
        XCTAssertEqual(sharedBack.recentSeed.count, shared.recentSeed.count)
        for (a, b) in zip(sharedBack.recentSeed, shared.recentSeed) { XCTAssertEqual(a, b, accuracy: 1e-12 * b) }
        func rewrite(_ edit: (inout [String: Any]) -> Void) throws -> String {
            var j = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
            edit(&j)
            let q = dir.appendingPathComponent("e-\(UUID().uuidString).json").path
            try JSONSerialization.data(withJSONObject: j).write(to: URL(fileURLWithPath: q))
            return q
        }
        for (edit, reason) in [({ (j: inout [String: Any]) in j["model_fingerprint"] = "x" }, "another model"),
                               ({ $0["version"] = 8 }, "version 8"),
                               ({ $0["choices"] = [0.6] }, "choices must be ascending budgets of the grid"),
                               ({ $0["kind"] = "ranking" }, "not a budget predictor"),
                               ({ $0["feature_dim"] = 5 }, "does not fit"),
                               ({ $0["bias"] = [1] }, "bias has 1 values"),
                               ({ $0["full_depth_share"] = 1.5; $0["recent_predictions"] = [0.1] }, "full_depth_share must be in (0, 1)"),
                               ({ $0["full_depth_share"] = "half"; $0["recent_predictions"] = [0.1] }, "full_depth_share must be a number"),
                               ({ $0["full_depth_share"] = 0.5; $0["recent_predictions"] = [0.1, "x"] }, "recent_predictions holds a non-number"),
                               ({ $0["full_depth_share"] = 0.5; $0["recent_predictions"] = [Double](repeating: 0.1, count: 33) }, "recent_predictions must hold"),
                               ({ $0["full_depth_share"] = 0.5 }, "recent_predictions must hold"),
                               ({ $0["recent_predictions"] = [0.1] }, "recent_predictions without full_depth_share")] as [((inout [String: Any]) -> Void, String)] {
            XCTAssertThrowsError(try RouterFile.loadPredictor(path: try rewrite(edit), model: m)) { XCTAssertTrue("\($0)".contains(reason), "\($0)") }
        }

        // The predictor's choice for this prompt is made from its features at full depth,
        // which a probe records while the prompt runs; a router set to it runs k + 2 layers.
        let session = Session(model: m, capacity: 128, threads: 2)
        let probe = FeatureProbe(config: m.config)
        session.selector = probe
        let prompt = m.tokenizer.encode("The quick brown fox jumps over the lazy dog.", parseSpecial: false)
        try session.evaluate(prompt)
        var chosen: Set<Double> = []
        for tol in [1e-9, 0.02, 1e9] {
            let want = probe.features.withUnsafeBufferPointer { back.choose($0.baseAddress!, tolerance: tol) }
            chosen.insert(want)
            session.reset()
            session.selector = try Routers.make("sleb", model: m, budget: want)
            try session.evaluate(prompt)
            XCTAssertEqual(session.lastLayers.count, 2 + LayerBudget.routableCount(budget: want, layers: m.config.layers))

            // Every command (chat, generate, eval auto) asks before the prompt runs (layer 0
            // only) and gets the same choice, from an empty session and from one that holds the
            // start of the prompt; afterwards the session holds only what `evaluate` would keep.
            let ahead = Session(model: m, capacity: 128, threads: 2)
            XCTAssertEqual(try AutoBudget(predictor: back, rule: .tolerance(tol)).chooseBudget(for: prompt, in: ahead), want)
            XCTAssertEqual(ahead.tokens, [])
            XCTAssertEqual(ahead.cache.count, 0)
            try ahead.evaluate(Array(prompt.prefix(4)))
            XCTAssertEqual(try AutoBudget(predictor: back, rule: .tolerance(tol)).chooseBudget(for: prompt, in: ahead), want)
            XCTAssertEqual(ahead.tokens, Array(prompt.prefix(4)))
            XCTAssertEqual(ahead.cache.count, 4)
        }
        // A vanishing tolerance keeps the full model; a huge one lets the predictor go lower.
        XCTAssertTrue(chosen.contains(1) && chosen.count >= 2, "\(chosen)")
    }

    /// A steered method is the router's name and a signal; `train predictor` measures a steered
    /// method with one steered router per grid budget, the same object for every prompt (its
    /// entropy window must span replies), and an unsteered one with whatever `make` returns.
    func testCurveRoutersKeepOneSteeredRouterPerBudget() throws {
        XCTAssertTrue(BudgetSteering.method("sleb+steer") == ("sleb", .entropy))
        XCTAssertTrue(BudgetSteering.method("buddy+blind") == ("buddy", .blind))
        XCTAssertTrue(BudgetSteering.method("buddy") == ("buddy", nil))
        XCTAssertTrue(BudgetSteering.method("steer") == ("steer", nil))
        XCTAssertEqual(PredictorTraining.defaultRouter, BudgetSteering.onByDefault ? "buddy+steer" : "buddy")

        var made = 0
        let make: (Double) throws -> BudgetedLayerSelector = { b in
            made += 1
            return try StaticRanking(name: "r", layers: 6, ranking: [1, 2, 3, 4], budget: b)
        }
        let grid = [0.5, 0.75]
        let steered = try PredictorTraining.curveRouters("r+steer", grid: grid, make: make)
        XCTAssertEqual(made, 2)
        for b in grid {
            let first = try steered(b), again = try steered(b)
            XCTAssertTrue(first === again, "budget \(b): a new router would forget the window")
            let s = try XCTUnwrap(first as? BudgetSteering)
            XCTAssertEqual(s.signal, .entropy)
            XCTAssertEqual(s.budget, b)
            XCTAssertEqual(s.inner.budget, b)
        }
        XCTAssertEqual(made, 2)
        XCTAssertFalse(try steered(0.5) === steered(0.75))

        let plain = try PredictorTraining.curveRouters("r", grid: grid, make: make)
        let p = try plain(0.75)
        XCTAssertFalse(p is BudgetSteering)
        XCTAssertEqual(p.budget, 0.75)
        XCTAssertEqual(made, 3)
    }
}

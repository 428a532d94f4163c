import BuddyCore
import BuddyEvaluation
import BuddyRouting
import BuddyTraining
import Foundation
import XCTest

/// The logic of the training and evaluation drivers that needs no model: checkpoints, data
/// ranges, result tables, the predictor fit.
final class DriverTests: XCTestCase {
    // MARK: data ranges

    func testChunkRangesParseAndRefuseMalformedText() throws {
        XCTAssertEqual(try TrainingData.chunkRange("84..<124", "--x"), 84..<124)
        XCTAssertEqual(try TrainingData.chunkRanges("0..<2, 5..<7", "--x"), [0, 1, 5, 6])
        for bad in ["5..<5", "7..<3", "-1..<4", "1...4", "a..<b", "3"] {
            XCTAssertThrowsError(try TrainingData.chunkRange(bad, "--text-extra-chunks"), bad) { error in
                let e = error as? ToolError
                XCTAssertEqual(e?.isUsage, true)
                XCTAssertEqual(e?.description, "--text-extra-chunks must be FIRST..<END with 0 <= FIRST < END, not '\(bad)'")
            }
        }
    }

    func testTextSequencesScoreTheirRangeAndRefuseShortText() throws {
        let ids = (0..<40).map(Int32.init)
        let seqs = try TrainingData.textSequences(ids, chunks: 1..<3, length: 10, firstScored: 4, path: "t.txt")
        XCTAssertEqual(seqs.map(\.tokens), [Array(10..<20).map(Int32.init), Array(20..<30).map(Int32.init)])
        XCTAssertEqual(seqs.map(\.scored), [4..<9, 4..<9])
        XCTAssertThrowsError(try TrainingData.textSequences(ids, chunks: 3..<5, length: 10, firstScored: 1, path: "t.txt")) {
            XCTAssertEqual("\($0)", "'t.txt' holds 40 tokens, fewer than 5 chunks of 10")
        }
    }

    func testRefitDataValidationAndWindows() throws {
        var d = RefitData(data: "w.txt", chatData: "c.jsonl")
        XCTAssertNoThrow(try d.validate())
        XCTAssertEqual(d.commandLine, "--text-chunks 14 --text-first-scored 128 --validation-skip-chunks 14 --validation-chunks 6 --chat-prompts 16 --validation-chat-skip 16 --validation-chat-prompts 24 --reply-tokens 48")

        d.textWindows = "128,512"
        XCTAssertEqual(try d.windows(), [512, 128])
        d.textWindows = "256,512"   // 256 would score positions 129...254 that the whole chunk scores from 128
        XCTAssertThrowsError(try d.validate()) {
            XCTAssertEqual("\($0)", "--text-windows: window 256 would score positions the 512-token chunk scores from --text-first-scored 128 again")
        }
        d.textWindows = "512,512"
        XCTAssertThrowsError(try d.windows())
        d.textWindows = "512"
        d.replyTokens = 0
        XCTAssertThrowsError(try d.validate()) { XCTAssertEqual(($0 as? ToolError)?.description, "--reply-tokens must be 1...256") }
        d.replyTokens = 48
        d.validationExtraChunks = "9..<2"
        XCTAssertThrowsError(try d.validate()) { XCTAssertEqual(($0 as? ToolError)?.isUsage, true) }
    }

    func testRefitTextCutsTrainingAndValidationWindows() throws {
        var d = RefitData(data: "w.txt", chatData: "c.jsonl", textChunks: 1, textFirstScored: 100, validationSkipChunks: 2, validationChunks: 1,
                          textExtraChunks: "3..<4", textWindows: "512,64")
        let ids = (0..<(4 * 512)).map(Int32.init)
        let split = try d.text(ids: ids)
        // Training: chunk 0 and the extra chunk 3, each whole (scored from 100) and as a 64-token window (scored from 1).
        XCTAssertEqual(split.train.map(\.tokens.first), [0, 0, 1536, 1536])
        XCTAssertEqual(split.train.map(\.scored), [100..<511, 1..<63, 100..<511, 1..<63])
        // Validation: chunk 2, second halves scored.
        XCTAssertEqual(split.validation.map(\.tokens.count), [512, 64])
        XCTAssertEqual(split.validation.map(\.scored), [256..<511, 32..<63])
        d.validationSkipChunks = 4
        XCTAssertThrowsError(try d.text(ids: ids))
    }

    func testStandInFittingRefusesOverlappingOrEvaluatedChunks() throws {
        XCTAssertEqual(try StandInFitting().chunkLists().validation, Array(14..<20))
        XCTAssertThrowsError(try StandInFitting(trainChunks: "0..<14", validationChunks: "10..<12").chunkLists()) {
            XCTAssertEqual("\($0)", "--train-chunks and --validation-chunks overlap")
        }
        XCTAssertThrowsError(try StandInFitting(trainChunks: "0..<14,80..<90").chunkLists()) {
            XCTAssertEqual("\($0)", "calibration chunks overlap chunks 20-83, which EVAL.md's perplexity scores")
        }
        // Stage two's chunks obey the same rules (and are not read when it is off).
        var tuning = StandInFitting()
        XCTAssertEqual(try tuning.chunkLists().tune, Array(0..<14) + Array(84..<116))
        tuning.tuneChunks = "14..<16"
        XCTAssertThrowsError(try tuning.chunkLists()) { XCTAssertEqual("\($0)", "--tune-chunks and --validation-chunks overlap") }
        tuning.tuneChunks = "60..<62"
        XCTAssertThrowsError(try tuning.chunkLists()) {
            XCTAssertEqual("\($0)", "calibration chunks overlap chunks 20-83, which EVAL.md's perplexity scores")
        }
        tuning.tuneEpochs = 0
        XCTAssertEqual(try tuning.chunkLists().tune, [])
    }

    func testOptionValidationNamesTheOption() throws {
        XCTAssertThrowsError(try parseBudgets("1,1.5")) { XCTAssertEqual(($0 as? ToolError)?.isUsage, true) }
        XCTAssertEqual(try parseBudgets(" 1, 0.5"), [1, 0.5])
        var router = RouterTraining.Options(data: RefitData(data: "d", chatData: "c"), out: "o")
        XCTAssertNoThrow(try router.validate())
        XCTAssertEqual(try router.budgetList().map { LayerBudget.routableCount(budget: $0, layers: 30) }, [14, 15, 17, 18, 20, 21, 22, 24, 25, 27],
                       "the default budgets are the slider's positions from 50 % to 95 %")
        router.budgets = "0.5,1"
        XCTAssertThrowsError(try router.validate()) { XCTAssertEqual("\($0)", "--budgets must list budgets in (0, 1), not '0.5,1'") }
        router.budgets = "0.5"; router.l2 = "0.1,-1"
        XCTAssertThrowsError(try router.validate()) { XCTAssertEqual("\($0)", "--l2 must list non-negative numbers, not '0.1,-1'") }
        router.l2 = "0.1"; router.threads = 0
        XCTAssertThrowsError(try router.validate()) { XCTAssertEqual("\($0)", "--threads must be between 1 and 256") }
        router.threads = 2
        XCTAssertTrue(router.commandLine.hasPrefix("buddy train router --data d --chat-data c --text-chunks 14"), router.commandLine)
        XCTAssertFalse(router.commandLine.contains("--neighbour-budgets"), "no neighbours unless asked")
        router.neighbourBudgets = "0.8,1"
        XCTAssertThrowsError(try router.validate()) { XCTAssertEqual("\($0)", "--neighbour-budgets must list budgets in (0, 1), not '0.8,1'") }
        router.neighbourBudgets = "0.8"; router.neighbours = 0
        XCTAssertThrowsError(try router.validate()) { XCTAssertEqual("\($0)", "--neighbours must be 1...8") }
        router.neighbours = 3
        XCTAssertNoThrow(try router.validate())
        XCTAssertTrue(router.commandLine.hasSuffix(" --neighbour-budgets 0.8 --neighbours 3"), "the notes record the neighbours: \(router.commandLine)")
        XCTAssertFalse(router.commandLine.contains("--pair-balance"), "no pair scorer unless asked")
        router.pairBalance = -1
        XCTAssertThrowsError(try router.validate()) { XCTAssertEqual("\($0)", "--pair-balance must be >= 0") }
        router.pairBalance = 1
        XCTAssertNoThrow(try router.validate())
        XCTAssertTrue(router.commandLine.hasSuffix(" --pair-balance 1.0"), "the notes record the pair scorer: \(router.commandLine)")
        XCTAssertThrowsError(try EvalGrid(methods: "buddy,deep").validate()) {
            XCTAssertEqual("\($0)", "unknown method 'deep' (use: \(Routers.names.joined(separator: ", ")), each optionally with +steer, +sentence or +blind)")
        }
        XCTAssertEqual(BudgetChoice(argument: "AUTO"), .auto)
        XCTAssertEqual(BudgetChoice(argument: "0.5")?.value, 0.5)
        XCTAssertNil(BudgetChoice(argument: "0"))
        XCTAssertEqual(StandInChoice(argument: "x.bin"), .file("x.bin"))
    }

    // MARK: result tables

    func testEvalTableCSVAndMarkdown() throws {
        var t = EvalTable(metrics: ["acc_norm", "n"], headers: ["acc_norm", "n"], formats: ["%.4f", "%.0f"], kvPolicy: "fill")
        t.derived = [("± s.e.", { v in String(format: "%.4f", (v[0] * (1 - v[0]) / v[1]).squareRoot()) })]
        t.add("sleb", 0.7, [0.3125, 400], standIns: "on")
        t.add("buddy", 1, [0.25, 400])
        XCTAssertEqual(t.fullDepth?.method, "buddy")
        XCTAssertEqual(t.csv(), """
            method,budget,kv_policy,stand_ins,acc_norm,n
            sleb,0.70,fill,on,0.3125,400
            buddy,1.00,fill,off,0.25,400

            """)
        XCTAssertEqual(t.markdown(), """
            | method | budget | kv_policy | stand_ins | acc_norm | n | ± s.e. |
            |---|---|---|---|---|---|---|
            | sleb | 0.70 | fill | on | 0.3125 | 400 | 0.0232 |
            | buddy | 1.00 | fill | off | 0.2500 | 400 | 0.0217 |

            """)
        // Whole numbers print as integers, others with six significant digits.
        var p = EvalTable(metrics: ["ppl"], headers: ["ppl"], formats: ["%.3f"], kvPolicy: "mask")
        p.add("even", 0.5, [41.48071234])
        p.add("even", 0.9, [2e15])
        XCTAssertEqual(p.csv().split(separator: "\n").dropFirst(), ["even,0.50,mask,off,41.4807", "even,0.90,mask,off,2e+15"])
    }

    func testEvalTableReadsItsCSVBackWithAndWithoutStandIns() throws {
        let (t, metric) = try EvalTable.read(csv: "method,budget,kv_policy,stand_ins,ppl,tokens\nsleb,0.70,fill,on,37.6459,255\n", metric: nil, path: "a.csv")
        XCTAssertEqual(metric, "ppl")
        XCTAssertEqual(t.rows.map(\.standIns), ["on"])
        XCTAssertEqual(t.rows.first?.values, [37.6459])
        let (old, _) = try EvalTable.read(csv: "method,budget,kv_policy,ppl,tokens\nsleb,0.70,fill,37.6,255\n", metric: "tokens", path: "old.csv")
        XCTAssertEqual(old.rows.first?.standIns, "off")
        XCTAssertEqual(old.rows.first?.values, [255])
        XCTAssertThrowsError(try EvalTable.read(csv: "method,budget,kv_policy,ppl\n", metric: "kl", path: "a.csv")) {
            XCTAssertEqual("\($0)", "'a.csv' has no column 'kl' (columns: ppl)")
        }
        XCTAssertThrowsError(try EvalTable.read(csv: "method,budget,kv_policy,ppl\nsleb,x,fill,3\n", metric: nil, path: "a.csv")) {
            XCTAssertEqual("\($0)", "'a.csv' line 2: expected 4 fields with numbers for budget and ppl")
        }
        let svg = SVGPlot(title: "a < b", xLabel: "x", yLabel: "y", logY: true, series: [("m", [(0.5, 10), (1, 100)])]).render()
        XCTAssertTrue(svg.contains("a &lt; b"))
        XCTAssertEqual(jsonString("a\"b\n\u{1}"), "\"a\\\"b\\n\\u0001\"")
        XCTAssertEqual(jsonNumber(.nan), "null")
    }

    func testMedianOfEvenAndOddCounts() {
        XCTAssertEqual(BenchRun.median([3, 1, 2]), 2)
        XCTAssertEqual(BenchRun.median([4, 1, 3, 2]), 2.5)
    }

    // MARK: the budget predictor's fit

    func testPredictorFitOnCurvesThatDoNotDependOnTheFeatures() throws {
        // Every prompt has the same curve: the fit is its mean, exact at any ridge strength.
        let curves = (0..<12).map { i in BudgetCurve.measured(id: "p\(i)", features: [Float(i), Float(i % 3)], kl: [0.4, 0.05], tokens: 10) }
        var rng = SeededRNG(seed: 1)
        let fit = try PredictorTraining.fit(curves, grid: [0.5, 0.8], lambdas: [1, 10], valFraction: 0.25, tolerance: 0.1, router: "buddy",
                                            rng: &rng, report: .silent)
        XCTAssertEqual(fit.validationMSE, 0, accuracy: 1e-9)
        let kl = [Float(5), 1].withUnsafeBufferPointer { fit.predictor.predictKL($0.baseAddress!) }
        XCTAssertEqual(kl[0], 0.4, accuracy: 1e-6)
        XCTAssertEqual(kl[1], 0.05, accuracy: 1e-6)
        // Tolerance 0.1: 0.5 drifts too far (0.4), 0.8 does not (0.05) — for the predictor and the oracle alike.
        let a = PredictorTraining.autoChoices(fit.predictor, curves, grid: [0.5, 0.8], tolerance: 0.1)
        XCTAssertEqual(a.meanChosen, 0.8, accuracy: 1e-12)
        XCTAssertEqual(a.meanOracle, 0.8, accuracy: 1e-12)
        XCTAssertEqual(a.met, 12)
        // Below every grid budget's KL: the full model, which always meets it.
        let strict = PredictorTraining.autoChoices(fit.predictor, curves, grid: [0.5, 0.8], tolerance: 0.01)
        XCTAssertEqual(strict.meanChosen, 1)
        XCTAssertEqual(strict.met, 12)
    }

    func testPredictorFitChoosesTheRidgeThatPredictsValidationBest() throws {
        // log KL is linear in the one feature: a weak ridge fits it, a strong one flattens it to the mean.
        let curves = (0..<20).map { i in
            let x = Double(i) / 10
            return BudgetCurve.measured(id: "p\(i)", features: [Float(x)], kl: [exp(-1 - x), exp(-3 - x)], tokens: 10)
        }
        var rng = SeededRNG(seed: 7)
        let fit = try PredictorTraining.fit(curves, grid: [0.6, 0.9], lambdas: [1000, 0.001], valFraction: 0.2, tolerance: 0.1, router: "buddy",
                                            rng: &rng, report: .silent)
        XCTAssertEqual(fit.lambda, 0.001)
        XCTAssertLessThan(fit.validationMSE, 1e-3)
        XCTAssertLessThan(PredictorTraining.logError(fit.predictor, curves), 1e-3)
        XCTAssertThrowsError(try PredictorTraining.fit(Array(curves.prefix(9)), grid: [0.6, 0.9], lambdas: [1], valFraction: 0.2, tolerance: 0.1,
                                                       router: "buddy", rng: &rng, report: .silent)) {
            XCTAssertEqual("\($0)", "need at least 10 measured prompts, have 9")
        }
    }
}

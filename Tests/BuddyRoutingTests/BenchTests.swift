import BuddyCore
import BuddyEvaluation
import BuddyRouting
import BuddyTestSupport
import Foundation
import XCTest

/// `buddy bench`'s report: the shares of decode time it names, on the default model.
final class BenchTests: XCTestCase {
    func testJSONReportsTheHeadShareOfEveryBudget() throws {
        let model = try TestSupport.model()
        var lines: [String] = []
        let report = Reporter(line: { lines.append($0) }, note: { _ in }, progress: { SilentProgress(total: $1) })
        let options = BenchRun.Options(promptTokens: 8, genTokens: 4, budgets: "1,0.5", runs: 1, router: "even", standIns: .off, json: true, threads: 1)
        try BenchRun.run(options, model: model, report: report)
        XCTAssertEqual(lines.count, 2)
        for line in lines {
            let row = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let head = try XCTUnwrap(row["head_share"] as? Double, line)
            // Every token runs the head, so its share is positive; it cannot be all of decode time.
            XCTAssertGreaterThan(head, 0, line)
            XCTAssertLessThan(head, 1, line)
            XCTAssertEqual(row["stand_in_share"] as? Double, 0, line)
        }
    }

    func testSteeredBenchWrapsTheRouterAndKeepsItsRoutingTime() throws {
        let model = try TestSupport.model()
        var lines: [String] = []
        let report = Reporter(line: { lines.append($0) }, note: { _ in }, progress: { SilentProgress(total: $1) })
        let options = BenchRun.Options(promptTokens: 8, genTokens: 8, budgets: "0.5", runs: 1, router: "buddy", standIns: .on, steering: true, json: true, threads: 1)
        try BenchRun.run(options, model: model, report: report)
        let row = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(XCTUnwrap(lines.first).utf8)) as? [String: Any])
        XCTAssertEqual(row["router"] as? String, "buddy" + BudgetSteering.productSignal.suffix)
        XCTAssertEqual(row["steering"] as? String, "on")
        // The Decision Module under the wrapper still reports the time it spent deciding.
        XCTAssertGreaterThan(try XCTUnwrap(row["routing_share"] as? Double), 0)
        // Stand-ins ran for the skipped layers of every decode step, timed where they ran: a
        // share of decode time, neither nothing nor all of it.
        let standIns = try XCTUnwrap(row["stand_in_share"] as? Double)
        XCTAssertGreaterThan(standIns, 0)
        XCTAssertLessThan(standIns, 0.5)
    }

    func testBenchRunsTheKernelPathAskedForAndNamesIt() throws {
        let model = try TestSupport.model()
        let best = KernelPath.active
        var lines: [String] = []
        let report = Reporter(line: { lines.append($0) }, note: { _ in }, progress: { SilentProgress(total: $1) })
        let options = BenchRun.Options(promptTokens: 8, genTokens: 4, budgets: "1", runs: 1, router: "even", standIns: .off, json: true, threads: 1, kernels: .portable)
        try BenchRun.run(options, model: model, report: report)
        let row = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(XCTUnwrap(lines.first).utf8)) as? [String: Any])
        XCTAssertEqual(row["kernels"] as? String, "portable C")
        // The process gets the CPU's best path back for whatever runs next.
        XCTAssertEqual(KernelPath.active, best)
    }

    func testStandInTimeAccumulatesOnlyOnStepsThatSkipLayers() throws {
        let model = try TestSupport.model()
        let session = Session(model: model, capacity: 16, threads: 1)
        session.standIns = try XCTUnwrap(try Routers.standIns(model: model))
        try session.evaluate(model.tokenizer.encode("The sky is", parseSpecial: false))
        try session.step(42)
        XCTAssertEqual(session.decode.standInSeconds, 0, "full depth applies no stand-in")
        session.selector = try Routers.make("even", model: model, budget: 0.5)
        try session.step(43)
        XCTAssertGreaterThan(session.decode.standInSeconds, 0)
    }

    func testTimingTheHeadLeavesTheLogitsOfTheLastToken() throws {
        let model = try TestSupport.model()
        let session = Session(model: model, capacity: 16, threads: 1)
        try session.evaluate(model.tokenizer.encode("The sky is", parseSpecial: false))
        try session.step(42)
        let vocab = model.config.vocabSize
        let before = Array(UnsafeBufferPointer(start: session.decode.logits, count: vocab))
        XCTAssertGreaterThan(BenchRun.secondsPerHead(model.transformer, session.decode), 0)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: session.decode.logits, count: vocab)), before)
    }
}

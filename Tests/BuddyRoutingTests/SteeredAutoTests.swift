import BuddyCore
import BuddyEvaluation
import BuddyRouting
import BuddyTestSupport
import Foundation
import XCTest

/// `buddy eval auto --steering on|sentence --steer-fixed`: auto and fixed differ only in the budget chosen.
final class SteeredAutoTests: XCTestCase {
    /// The auto row of a one-prompt run is the steered router's run at the chosen budget: the
    /// same KL and the same mean layers as the test's own steered run of that prompt from an
    /// empty window, with either steering signal.
    func testWithSteeredFixedBudgetsAutoIsTheSteeredRunAtItsBudget() throws {
        let m = try TestSupport.model()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("buddy-steer-fixed-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let data = dir.appendingPathComponent("prompts.jsonl").path
        try #"{"question_id": "q1", "category": "test", "turns": ["Write a short story about a lighthouse keeper."]}"#
            .write(toFile: data, atomically: true, encoding: .utf8)
        let csv = dir.appendingPathComponent("auto.csv").path
        var o = AutoBudgetRun.Options(prompts: ChatPromptSelection(data: data, split: "all", maxReply: 32), standIns: .on, csv: csv, threads: 2)
        o.steerFixed = true
        var layersBySignal: [Double] = []
        for signal in [BudgetSteering.Signal.entropy, .sentence] {
            o.steering = signal
            XCTAssertNoThrow(try o.validate())
            try AutoBudgetRun.run(o, model: { m }, report: Reporter(line: { _ in }, note: { _ in }, progress: { SilentProgress(total: $1) }))
            let fields = try String(contentsOfFile: csv, encoding: .utf8).split(separator: "\n")[1].split(separator: ",")
            let chosen = try XCTUnwrap(Double(fields[3])), kl = try XCTUnwrap(Double(fields[4])), layers = try XCTUnwrap(Double(fields[7]))
            XCTAssertLessThan(chosen, 1, "the predictor should choose a budget below 1 for this prompt")

            let session = Session(model: m, capacity: 2048, threads: 2, batchSize: 256)
            session.standIns = try Routers.standIns(model: m)
            let evaluator = ChatEvaluator(session: session)
            let prompt = try XCTUnwrap(o.prompts.load().first)
            let (_, ref) = try o.prompts.reference(to: prompt, evaluator: evaluator)
            let steering = BudgetSteering(try Routers.make("buddy", model: m, budget: chosen), signal: signal)
            session.selector = steering
            let d = try evaluator.compare(ref)
            XCTAssertEqual(kl, d.meanKL, accuracy: 1e-5, "\(signal)")
            XCTAssertEqual(layers, Double(steering.routedLayers) / Double(steering.steps), accuracy: 1e-3, "\(signal)")
            layersBySignal.append(layers)
        }
        XCTAssertNotEqual(layersBySignal[0], layersBySignal[1], "sentence ends change the steered layers of a 32-token story")

        o.steering = nil
        XCTAssertThrowsError(try o.validate(), "--steer-fixed without steering")
    }
}

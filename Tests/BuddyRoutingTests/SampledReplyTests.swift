import BuddyCore
import BuddyEvaluation
import BuddyRouting
import BuddyTestSupport
import Foundation
import XCTest

/// `buddy eval replies`: its repetition count by hand, its judge against decoding step by step,
/// and its sampling against the full model's greedy reply.
final class SampledReplyTests: XCTestCase {
    func testRepeatedTokensCountRunsSeenEarlierInTheReply() {
        // Runs of 3 ending at positions 2…7 of 1 2 3 1 2 3 1 2: 123 231 312 123 231 312, the last three repeated.
        XCTAssertEqual(SampledReplyRun.repeatedTokens([1, 2, 3, 1, 2, 3, 1, 2], run: 3), 3)
        XCTAssertEqual(SampledReplyRun.repeatedTokens([1, 2, 3, 4, 5, 6], run: 3), 0)
        XCTAssertEqual(SampledReplyRun.repeatedTokens([7, 7, 7, 7, 7], run: 2), 3)
        XCTAssertEqual(SampledReplyRun.repeatedTokens([1, 2], run: 3), 0)
        XCTAssertEqual(SampledReplyRun.repeated([1, 2, 3, 1, 2, 3, 1, 2], run: 3), [false, false, false, false, false, true, true, true])
    }

    func testJudgeEqualsTheFullModelStepByStep() throws {
        let model = try TestSupport.model()
        let judge = Session(model: model, capacity: 512, threads: 1, batchSize: 16)   // several chunks
        let prompt = ChatEvaluator(session: judge).promptTokens("Name three colours.")
        let reply = model.tokenizer.encode(" Red, green and blue are three colours that most people can name without thinking about it at all.", parseSpecial: false)
        XCTAssertGreaterThan(reply.count, 16)   // two chunks of the judge's batch
        let rows = UnsafeMutablePointer<Float>.allocate(capacity: 16 * model.config.vocabSize)
        defer { rows.deallocate() }
        let batched = try SampledReplyRun.judge(prompt: prompt, reply: reply, judge: judge, rows: rows)
        XCTAssertEqual(batched.count, reply.count)

        let stepper = Session(model: model, capacity: 512, threads: 1)
        try stepper.evaluate(prompt)
        for (i, t) in reply.enumerated() {
            let l = stepper.decode.logits
            let lse = LogProbabilities.logSumExp(l, count: model.config.vocabSize)
            let stepwise = lse - Double(l[Int(t)])
            XCTAssertEqual(batched[i].nll, stepwise, accuracy: 2e-3 + 1e-3 * stepwise, "token \(i)")
            let end = model.stopTokens.reduce(0.0) { $0 + exp(Double(l[Int($1)]) - lse) }
            XCTAssertEqual(batched[i].end, end, accuracy: 1e-3 + 1e-2 * end, "token \(i)")
            if i + 1 < reply.count { try stepper.step(t) }
        }
        XCTAssertGreaterThan(batched.reduce(0) { $0 + $1.nll } / Double(reply.count), 0.1)   // a real, non-zero NLL
        // Token i's end probability is that of ending the turn instead of writing it: the full
        // model most wants to end right after the answer, "Red, green and blue".
        let mostLikelyEnd = try XCTUnwrap(batched.indices.max { batched[$0].end < batched[$1].end })
        XCTAssertEqual(model.tokenizer.decode(Array(reply[0..<mostLikelyEnd])), " Red, green and blue")
    }

    func testSystemPromptReplacesTheModelsOwnInEveryChatEvaluation() throws {
        let model = try TestSupport.model()
        let defaultPrompt = try XCTUnwrap(model.template.defaultSystemPrompt)
        let own = ChatPromptSelection(data: "unused", split: "all")
        let told = ChatPromptSelection(data: "unused", split: "all", system: "Give short, direct answers.")
        XCTAssertEqual(model.template.render(own.messages("Why is the sky blue?")),
                       "<|im_start|>system\n\(defaultPrompt)<|im_end|>\n<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n")
        XCTAssertEqual(model.template.render(told.messages("Why is the sky blue?")),
                       "<|im_start|>system\nGive short, direct answers.<|im_end|>\n<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n")
        // A follow-up turn keeps the same system prompt before the first question.
        let evaluator = ChatEvaluator(session: Session(model: model, capacity: 256, threads: 1))
        let reply = model.tokenizer.encode("Scattering.", parseSpecial: false)
        let followUp = evaluator.followUpTokens(question: "Why is the sky blue?", firstReply: reply, followUp: "And at sunset?", system: told.system)
        XCTAssertEqual(followUp, model.chatPromptTokens([ChatMessage(role: .system, content: "Give short, direct answers."),
                                                         ChatMessage(role: .user, content: "Why is the sky blue?"),
                                                         ChatMessage(role: .assistant, content: "Scattering."),
                                                         ChatMessage(role: .user, content: "And at sunset?")]))
        XCTAssertNotEqual(followUp, evaluator.followUpTokens(question: "Why is the sky blue?", firstReply: reply, followUp: "And at sunset?"))
    }

    func testGreedyFullDepthRepliesAreTheReferenceAndLanesAgree() throws {
        // A model of its own, so that the screened head (budget 0.5) is first made inside a lane
        // of the shared pool, as it is in a real run (it once waited on that pool for ever).
        let model = try LanguageModel(path: TestSupport.requireModelPath())
        let data = FileManager.default.temporaryDirectory.appendingPathComponent("sampled-replies-\(getpid()).jsonl").path
        try Data("""
            {"question_id": 1, "turns": ["What is the capital of France?"]}
            {"question_id": 2, "turns": ["Give me one tip for sleeping well."]}
            {"question_id": 3, "turns": ["How many legs does a spider have?"]}

            """.utf8).write(to: URL(fileURLWithPath: data))
        defer { try? FileManager.default.removeItem(atPath: data) }
        let selection = ChatPromptSelection(data: data, split: "all")
        let grid = EvalGrid(budgets: "1,0.5", methods: "buddy+steer", standIns: "on")
        var sampling = SamplingParameters()
        sampling.temperature = 0
        var table: EvalTable?
        func run(_ p: SamplingParameters, lanes: Int) throws -> [String] {
            let r = try SampledReplyRun.run(prompts: selection, grid: grid, sampling: p, maxTokens: 24, lanes: lanes, model: { model }, report: .silent)
            table = r.table
            return r.replies
        }
        let two = try run(sampling, lanes: 2)
        let one = try run(sampling, lanes: 1)
        XCTAssertEqual(two, one)
        // Layers per reply token: every layer at budget 1; at 0.5 the first token (from the
        // prompt's last position, at full depth) and then about k + 2 (steering keeps the mean).
        let layersColumn = try XCTUnwrap(table?.metrics.firstIndex(of: "layers"))
        let L = Double(model.config.layers), k = Double(LayerBudget.routableCount(budget: 0.5, layers: model.config.layers))
        XCTAssertEqual(table?.rows.first { $0.budget == 1 }?.values[layersColumn], L)
        XCTAssertEqual(try XCTUnwrap(table?.rows.first { $0.budget == 0.5 }?.values[layersColumn]), k + 2 + (L - k - 2) / 24, accuracy: 1.0)

        // At budget 1 and temperature 0 without penalties each reply is the full model's greedy reply.
        let evaluator = ChatEvaluator(session: Session(model: model, capacity: 2048, threads: 1))
        let texts = one.map { try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        for (i, q) in ["What is the capital of France?", "Give me one tip for sleeping well.", "How many legs does a spider have?"].enumerated() {
            let ref = try evaluator.reference(prompt: evaluator.promptTokens(q), maxTokens: 24)
            XCTAssertEqual(texts[i]["text"] as? String, model.tokenizer.decode(ref.reply))
            XCTAssertEqual(texts[i]["budget"] as? Double, 1)
        }
        // The routed cells differ from full depth somewhere (they run fewer layers).
        XCTAssertNotEqual(texts[0..<3].map { $0["text"] as! String }, texts[3..<6].map { $0["text"] as! String })
    }
}

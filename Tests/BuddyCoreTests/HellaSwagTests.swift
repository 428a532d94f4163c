import BuddyCore
import BuddyTestSupport
import XCTest

final class HellaSwagTests: XCTestCase {
    func testParsesTheSixLineLayoutAndNamesBadLines() throws {
        let text = "Label: a ctx\n2\nx\ny\nz\nw\nL2: c\n0\na\nb\nc\nd\n"
        let tasks = try HellaSwagTask.parse(text)
        XCTAssertEqual(tasks.count, 2)
        XCTAssertEqual(tasks[0], HellaSwagTask(context: "Label: a ctx", gold: 2, endings: ["x", "y", "z", "w"]))
        XCTAssertThrowsError(try HellaSwagTask.parse("c\n7\na\nb\nc\nd\n")) { XCTAssertTrue("\($0)".contains("line 2")) }
        XCTAssertThrowsError(try HellaSwagTask.parse("c\n1\na\nb\n")) { XCTAssertTrue("\($0)".contains("multiple of 6")) }
    }

    /// The per-ending score equals the mean log-probability computed independently from one
    /// batched pass over context + ending.
    func testEndingScoresEqualBatchedLogProbabilities() throws {
        let m = try TestSupport.model()
        let text = try TestSupport.sharedText("hellaswag_dev.txt")
        let task = try HellaSwagTask.parse(text)[0]
        let session = Session(model: m, capacity: 256, threads: 2, batchSize: 64)
        let (best, scores) = try HellaSwagEvaluator(session: session).score(task)
        // Batched endings give the per-token result, at full depth and with layers skipped.
        XCTAssertEqual(try HellaSwagEvaluator(session: session, batched: true).score(task).scores, scores)
        session.selector = FixedSkip(layers: m.config.layers, skip: [4, 9, 20])
        session.reset()  // the cached context was computed at full depth
        let routed = try HellaSwagEvaluator(session: session).score(task).scores
        session.reset()
        XCTAssertEqual(try HellaSwagEvaluator(session: session, batched: true).score(task).scores, routed)
        XCTAssertNotEqual(routed, scores)
        session.selector = nil
        XCTAssertEqual(scores.count, 4)
        XCTAssertEqual(best, scores.indices.max { scores[$0] < scores[$1] })
        let vocab = m.config.vocabSize
        let ctx = m.tokenizer.encode(task.context, parseSpecial: false)
        for (e, ending) in task.endings.enumerated() {
            let ids = m.tokenizer.encode(" " + ending, parseSpecial: false)
            let all = ctx + ids
            let cache = KVCache(layers: m.config.layers, capacity: all.count, kvDim: m.config.kvDim)
            let batch = BatchState(config: m.config, maxTokens: all.count, capacity: all.count, pool: ThreadPool.shared(threads: 2))
            m.transformer.prefill(all[...], start: 0, batch, cache)
            let logits = UnsafeMutablePointer<Float>.allocate(capacity: all.count * vocab)
            defer { logits.deallocate() }
            m.transformer.batchLogitsAll(n: all.count, batch, logits)
            var sum = 0.0
            for j in 0..<ids.count {
                sum -= LogProbabilities.negativeLogProb(logits + (ctx.count - 1 + j) * vocab, count: vocab, target: Int(ids[j]))
            }
            XCTAssertEqual(scores[e], sum / Double(ids.count), accuracy: 1e-4, "ending \(e)")
        }
    }
}

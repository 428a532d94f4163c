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

    /// The paired comparison script: accuracies, the mean per-task difference and its standard
    /// error (by hand: differences 0, −1, +1, +1 have mean 0.25 and sample variance 11/12, so
    /// s.e. √(11/48) = 0.4787), discordant counts; a file of another kind is refused.
    func testPairedComparisonScript() throws {
        let dir = try TestSupport.scratchDirectory("paired")
        defer { try? FileManager.default.removeItem(at: dir) }
        let items = dir.appendingPathComponent("items.csv"), other = dir.appendingPathComponent("other.csv")
        try """
            method,budget,kv_policy,task,gold,chosen
            buddy,0.7,fill,0,1,1
            buddy,0.7,fill,1,2,0
            buddy,0.7,fill,2,3,3
            buddy,0.7,fill,3,0,0
            shortgpt,0.7,fill,0,1,1
            shortgpt,0.7,fill,1,2,2
            shortgpt,0.7,fill,2,3,1
            shortgpt,0.7,fill,3,0,2
            sleb,0.5,fill,0,1,1

            """.write(to: items, atomically: true, encoding: .utf8)
        try "method,budget,kv_policy,acc_norm,n\nbuddy,0.7,fill,0.5,4\n".write(to: other, atomically: true, encoding: .utf8)
        func run(_ files: [URL]) throws -> (status: Int32, out: String) {
            let p = Process(), pipe = Pipe()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["bash", TestSupport.root.appendingPathComponent("scripts/hellaswag_paired.sh").path, "buddy", "shortgpt"] + files.map(\.path)
            p.standardOutput = pipe
            p.standardError = FileHandle.nullDevice
            try p.run()
            let out = pipe.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return (p.terminationStatus, String(decoding: out, as: UTF8.self))
        }
        let good = try run([items])
        XCTAssertEqual(good.status, 0)
        XCTAssertTrue(good.out.contains("| 0.70 | 4 | 0.7500 | 0.5000 | +0.2500 | 0.4787 | +0.5 | 2 | 1 |"), good.out)
        XCTAssertFalse(good.out.contains("| 0.50 |"), "sleb is not one of the two methods")
        XCTAssertNotEqual(try run([other]).status, 0)
    }
}

import BuddyCore
import BuddyTestSupport
import Foundation
import XCTest

/// The default model against llama.cpp (fixtures written by scripts/make_fixtures.py with
/// llama-cpp-python) and against our own fp32 reference path.
final class ModelAgreementTests: XCTestCase {
    struct Step { let id: Int32; let margin: Double; let top: [(Int32, Double)]; let sample: [Double] }
    struct Prompt { let name: String; let kind: String; let ids: [Int32]; let steps: [Step] }

    func loadGreedy() throws -> (sampleIDs: [Int32], prompts: [Prompt]) {
        let j = try TestSupport.fixture("greedy.json")
        let sampleIDs = (j["sample_ids"] as! [Int]).map(Int32.init)
        let prompts = (j["prompts"] as! [[String: Any]]).map { p in
            Prompt(name: p["name"] as! String, kind: p["kind"] as! String,
                   ids: (p["prompt_ids"] as! [Int]).map(Int32.init),
                   steps: (p["steps"] as! [[String: Any]]).map { s in
                       Step(id: Int32(s["id"] as! Int), margin: s["margin"] as! Double,
                            top: (s["top"] as! [[Double]]).map { (Int32($0[0]), $0[1]) },
                            sample: s["sample"] as! [Double])
                   })
        }
        return (sampleIDs, prompts)
    }

    func testTokenizationMatchesLlamaCpp() throws {
        let tok = try TestSupport.tokenizer()
        let j = try TestSupport.fixture("tokenizer.json")
        let cases = j["cases"] as! [[String: Any]]
        XCTAssertGreaterThanOrEqual(cases.count, 40)
        var mismatches: [String] = []
        for c in cases {
            let text = c["text"] as! String, special = c["special"] as! Bool
            let want = (c["ids"] as! [Int]).map(Int32.init)
            let got = tok.encode(text, parseSpecial: special)
            if got != want { mismatches.append("\(text.debugDescription) special=\(special): got \(got) want \(want)") }
        }
        XCTAssertEqual(mismatches, [], "\(mismatches.count) of \(cases.count) strings differ")
    }

    func testPromptTemplateTokensMatchFixture() throws {
        let m = try TestSupport.model()
        let (_, prompts) = try loadGreedy()
        for p in prompts where p.kind == "chat" {
            let text = m.tokenizer.decode(p.ids, includeSpecial: true)
            XCTAssertTrue(text.hasPrefix("<|im_start|>system\n" + m.template.defaultSystemPrompt!))
            XCTAssertEqual(m.tokenizer.encode(text, parseSpecial: true), p.ids, p.name)
        }
    }

    /// Greedy ids identical to llama.cpp's token-by-token run up to its first near-tie
    /// (top-2 margin < 0.5), and teacher-forced top-1 agreement along its continuation.
    func testGreedyAndTeacherForcedAgreementWithLlamaCpp() throws {
        let m = try TestSupport.model()
        let (sampleIDs, prompts) = try loadGreedy()
        XCTAssertGreaterThanOrEqual(prompts.count, 8)
        XCTAssertGreaterThanOrEqual(prompts.filter { $0.kind == "raw" }.count, 4)
        XCTAssertGreaterThanOrEqual(prompts.filter { $0.kind == "chat" }.count, 4)
        let session = Session(model: m, capacity: 512, threads: 2)
        let vocab = m.config.vocabSize
        var agree = 0, total = 0, absDiff = 0.0, diffCount = 0, comparedGreedy = 0
        var report: [String] = []
        for p in prompts {
            // Free-running greedy, compared up to the first near-tie.
            session.reset()
            try session.evaluate(p.ids)
            let firstTie = p.steps.firstIndex { $0.margin < 0.5 } ?? p.steps.count
            var ours: [Int32] = []
            for i in 0..<firstTie {
                let id = Sampler.argmax(session.decode.logits, count: vocab)
                ours.append(id)
                if id != p.steps[i].id { break }
                try session.step(id)
            }
            XCTAssertEqual(ours, p.steps[..<firstTie].map(\.id), "\(p.name): greedy ids before the first near-tie (step \(firstTie))")
            comparedGreedy += firstTie

            // Teacher-forced along llama.cpp's continuation.
            session.reset()
            try session.evaluate(p.ids)
            var local = 0
            for (i, s) in p.steps.enumerated() {
                let logits = session.decode.logits
                if Sampler.argmax(logits, count: vocab) == s.id { agree += 1; local += 1 }
                total += 1
                for (id, v) in s.top { absDiff += abs(Double(logits[Int(id)]) - v); diffCount += 1 }
                for (id, v) in zip(sampleIDs, s.sample) { absDiff += abs(Double(logits[Int(id)]) - v); diffCount += 1 }
                if i + 1 < p.steps.count { try session.step(s.id) }
            }
            report.append("\(p.name): greedy ok to step \(firstTie), teacher-forced top-1 \(local)/\(p.steps.count)")
        }
        let rate = Double(agree) / Double(total)
        let mad = absDiff / Double(diffCount)
        print("agreement with llama.cpp: " + report.joined(separator: "; "))
        print(String(format: "teacher-forced top-1 agreement %.4f (%d/%d), mean |logit diff| %.4f over %d logits, greedy steps compared %d",
                     rate, agree, total, mad, diffCount, comparedGreedy))
        XCTAssertGreaterThanOrEqual(rate, 0.95)
        XCTAssertLessThan(mad, 0.25, "mean absolute logit difference from llama.cpp")
    }

    /// Our batched prompt path and our token-by-token path on the same text.
    func testBatchedAndTokenByTokenPathsAgree() throws {
        let m = try TestSupport.model()
        let text = try TestSupport.sharedText("wikitext2_valid.txt")
        let ids = Array(m.tokenizer.encode(String(text.prefix(40_000)), parseSpecial: false).dropFirst(1000).prefix(400))
        let n = ids.count
        let vocab = m.config.vocabSize
        let pool = ThreadPool.shared(threads: 2)
        let cache = KVCache(layers: m.config.layers, capacity: n, kvDim: m.config.kvDim)
        let batch = BatchState(config: m.config, maxTokens: n, capacity: n, pool: pool)
        let all = UnsafeMutablePointer<Float>.allocate(capacity: n * vocab)
        defer { all.deallocate() }
        m.transformer.prefill(ids[...], start: 0, batch, cache)
        m.transformer.batchLogitsAll(n: n, batch, all)
        let cache2 = KVCache(layers: m.config.layers, capacity: n, kvDim: m.config.kvDim)
        let s = DecodeState(config: m.config, capacity: n, pool: pool)
        var agree = 0, maxDiff: Float = 0, sumDiff = 0.0
        for (pos, t) in ids.enumerated() {
            let l = m.transformer.forward(token: t, pos: pos, s, cache2)
            if Sampler.argmax(l, count: vocab) == Sampler.argmax(all + pos * vocab, count: vocab) { agree += 1 }
            for i in stride(from: 0, to: vocab, by: 97) {
                let d = abs(l[i] - all[pos * vocab + i])
                maxDiff = max(maxDiff, d); sumDiff += Double(d)
            }
        }
        let rate = Double(agree) / Double(n)
        print(String(format: "batched vs token-by-token: top-1 agreement %.4f over %d positions, mean |diff| %.4f, max %.3f",
                     rate, n, sumDiff / Double(n * (vocab / 97 + 1)), maxDiff))
        XCTAssertGreaterThanOrEqual(rate, 0.995)
    }

    /// The fast path (8-bit activations, half-precision K/V) against the plain fp32 reference
    /// (dequantised weights, fp32 activations, scalar code).
    func testFastPathAgainstFp32Reference() throws {
        let m = try TestSupport.model()
        let ids = m.tokenizer.encode("""
            The quick brown fox jumps over the lazy dog. In 1905, Albert Einstein published four papers that changed \
            physics: on the photoelectric effect, on Brownian motion, on special relativity and on the equivalence of \
            mass and energy. Each of them would have been enough for a career.
            """, parseSpecial: false)
        let vocab = m.config.vocabSize
        let pool = ThreadPool.shared(threads: 2)
        func run(reference: Bool) -> [[Float]] {
            let cache = KVCache(layers: m.config.layers, capacity: 128, kvDim: m.config.kvDim)
            let s = DecodeState(config: m.config, capacity: 128, pool: pool)
            s.reference = reference
            return ids.enumerated().map { pos, t in Array(UnsafeBufferPointer(start: m.transformer.forward(token: t, pos: pos, s, cache), count: vocab)) }
        }
        let fast = run(reference: false), ref = run(reference: true)
        var agree = 0, sum = 0.0, maxDiff: Float = 0
        for (a, b) in zip(fast, ref) {
            if Sampler.argmax(a, count: vocab) == Sampler.argmax(b, count: vocab) { agree += 1 }
            for i in 0..<vocab { let d = abs(a[i] - b[i]); sum += Double(d); maxDiff = max(maxDiff, d) }
        }
        let mad = sum / Double(ids.count * vocab)
        print(String(format: "fast vs fp32 reference: top-1 %d/%d, mean |diff| %.4f, max %.3f", agree, ids.count, mad, maxDiff))
        // Stated tolerances: 8-bit activation rounding moves logits by ~0.1 on average here.
        XCTAssertGreaterThanOrEqual(Double(agree) / Double(ids.count), 0.9)
        XCTAssertLessThan(mad, 0.3)
        XCTAssertLessThan(maxDiff, 3.0)
    }

    /// Perplexity within 1% of llama.cpp's on the same chunks.
    func testPerplexityParityWithLlamaCpp() throws {
        let m = try TestSupport.model()
        let j = try TestSupport.fixture("perplexity.json")
        let want = j["ppl_4"] as! Double
        var text = try TestSupport.sharedText("wikitext2_valid.txt")
        if text.hasSuffix("\n") { text.removeLast() }
        let ev = PerplexityEvaluator(model: m, contextSize: 512, threads: 2)
        let tokens = ev.tokenize(text)
        XCTAssertEqual(tokens.count, j["total_tokens"] as! Int, "token count of the whole file")
        let r = ev.evaluate(tokens: tokens, maxChunks: 4)
        let rel = abs(r.perplexity - want) / want
        print(String(format: "perplexity over 4 chunks: ours %.4f, llama.cpp %.4f, relative difference %.3f%%", r.perplexity, want, 100 * rel))
        XCTAssertLessThan(rel, 0.01)
    }
}

import BuddyCore
import BuddyTestSupport
import XCTest

final class SamplingTests: XCTestCase {
    func dist(_ logits: [Float], _ configure: (inout SamplingParameters) -> Void, recent: [Int32] = []) -> [Int32: Float] {
        var p = SamplingParameters()
        p.topK = 0; p.topP = 1; p.minP = 0; p.temperature = 1
        configure(&p)
        var s = Sampler(p)
        var l = logits
        let d = s.distribution(&l, count: l.count, recent: recent[...])
        return Dictionary(uniqueKeysWithValues: d.map { ($0.id, $0.p) })
    }

    func testSoftmaxAtTemperatureOneAndTwo() {
        // logits ln(1), ln(2), ln(3), ln(4): probabilities 0.1, 0.2, 0.3, 0.4
        let l: [Float] = [0, log(2), log(3), log(4)]
        let d = dist(l) { _ in }
        XCTAssertEqual(d[0]!, 0.1, accuracy: 1e-6); XCTAssertEqual(d[3]!, 0.4, accuracy: 1e-6)
        // temperature 2: proportional to sqrt(1..4) = 1, 1.4142, 1.7321, 2 (sum 6.1463)
        let d2 = dist(l) { $0.temperature = 2 }
        XCTAssertEqual(d2[0]!, 1 / 6.146264, accuracy: 1e-5)
        XCTAssertEqual(d2[3]!, 2 / 6.146264, accuracy: 1e-5)
    }

    func testTopKTopPMinP() {
        let l: [Float] = [0, log(2), log(3), log(4)]
        let k2 = dist(l) { $0.topK = 2 }
        XCTAssertEqual(Set(k2.keys), [2, 3])
        XCTAssertEqual(k2[3]!, 4.0 / 7.0, accuracy: 1e-6)
        // top-p 0.65: 0.4 + 0.3 = 0.7 >= 0.65 keeps two
        XCTAssertEqual(Set(dist(l) { $0.topP = 0.65 }.keys), [2, 3])
        // top-p 0.75 needs a third
        XCTAssertEqual(Set(dist(l) { $0.topP = 0.75 }.keys), [1, 2, 3])
        // min-p 0.5: keep p >= 0.2 (0.5 × 0.4)
        let mp = dist(l) { $0.minP = 0.5 }
        XCTAssertEqual(Set(mp.keys), [1, 2, 3])
        XCTAssertEqual(mp[1]!, 2.0 / 9.0, accuracy: 1e-6)
    }

    func testRepetitionPenalty() {
        // penalty 2 on ids 1 (positive logit 2 -> 1) and 2 (negative logit -1 -> -2)
        let l: [Float] = [0, 2, -1]
        let d = dist(l, { $0.repetitionPenalty = 2 }, recent: [1, 2, 1])
        let z = exp(Float(0)) + exp(Float(1)) + exp(Float(-2))
        XCTAssertEqual(d[0]!, 1 / z, accuracy: 1e-6)
        XCTAssertEqual(d[1]!, exp(1) / z, accuracy: 1e-6)
        XCTAssertEqual(d[2]!, exp(-2) / z, accuracy: 1e-6)
    }

    func testGreedyIsArgmaxAndIgnoresSeed() {
        var l: [Float] = [0.1, 3, 2.9, -1]
        for seed in [UInt64(0), 1, 99] {
            var p = SamplingParameters.greedy
            p.seed = seed
            var s = Sampler(p)
            XCTAssertEqual(s.sample(&l, count: 4), 1)
        }
    }

    func testSeededSamplingIsReproducibleAndFollowsTheDistribution() {
        let l: [Float] = [0, log(2), log(3), log(4)]
        var p = SamplingParameters()
        p.topK = 0; p.topP = 1; p.minP = 0; p.temperature = 1; p.seed = 42
        var a = Sampler(p), b = Sampler(p)
        var counts = [Int](repeating: 0, count: 4)
        for _ in 0..<20000 {
            var la = l, lb = l
            let x = a.sample(&la, count: 4), y = b.sample(&lb, count: 4)
            XCTAssertEqual(x, y)
            counts[Int(x)] += 1
        }
        // Expected 2000/4000/6000/8000; 4 sigma of a binomial at n=20000 is under 300.
        for (i, want) in [2000, 4000, 6000, 8000].enumerated() { XCTAssertEqual(Double(counts[i]), Double(want), accuracy: 300) }
    }

    func testRNGIsSeededAndUniform() {
        var a = SeededRNG(seed: 1), b = SeededRNG(seed: 1), c = SeededRNG(seed: 2)
        let xa = (0..<5).map { _ in a.next() }, xb = (0..<5).map { _ in b.next() }, xc = (0..<5).map { _ in c.next() }
        XCTAssertEqual(xa, xb); XCTAssertNotEqual(xa, xc)
        var r = SeededRNG(seed: 3)
        let mean = (0..<10000).reduce(Float(0)) { acc, _ in acc + r.nextUnitFloat() } / 10000
        XCTAssertEqual(mean, 0.5, accuracy: 0.02)
    }

    func testChatTemplateMatchesTheModelsJinjaOutput() {
        let t = ChatTemplate(ggufTemplate: "{{ '<|im_start|>system\nYou are X<|im_end|>\n' }}")
        XCTAssertEqual(t.defaultSystemPrompt, "You are X")
        XCTAssertEqual(t.render([ChatMessage(role: .user, content: "Hi")]),
                       "<|im_start|>system\nYou are X<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        XCTAssertEqual(t.render([ChatMessage(role: .system, content: "S"), ChatMessage(role: .user, content: "Hi")]),
                       "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        XCTAssertEqual(t.format, .chatML)
        XCTAssertNil(t.notice)
    }

    /// A base model (no template in the file) or a format this engine does not render: no
    /// template is invented; the conversation is the typed and generated text in order.
    func testModelsWithoutAChatMLTemplateContinueText() {
        let gemmaInstruct = "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
        for t in [ChatTemplate(ggufTemplate: nil), ChatTemplate(ggufTemplate: gemmaInstruct)] {
            XCTAssertEqual(t.format, .plainContinuation)
            XCTAssertNil(t.defaultSystemPrompt)
            XCTAssertNotNil(t.notice)
            XCTAssertEqual(t.endOfTurn, "")
            let turns = [ChatMessage(role: .system, content: "ignored"), ChatMessage(role: .user, content: "The capital of France is"),
                         ChatMessage(role: .assistant, content: " Paris."), ChatMessage(role: .user, content: " Its river is")]
            XCTAssertEqual(t.render(turns), "The capital of France is Paris. Its river is")
            XCTAssertEqual(t.renderTurn(turns[1]), "The capital of France is")
            XCTAssertEqual(t.renderTurn(turns[0]), "")
        }
    }

    // MARK: DRY

    /// The DRY penalties of one call, by token: logits before minus after.
    func dryPenalties(_ context: [Int32], vocab: Int = 60, breakers: Set<Int32> = [], _ configure: (inout SamplingParameters) -> Void = { _ in }) -> [Int32: Float] {
        var p = SamplingParameters.greedy
        p.dryMultiplier = 0.8; p.dryBase = 1.75; p.dryAllowedLength = 2
        configure(&p)
        var s = Sampler(p, sequenceBreakers: breakers)
        var l = [Float](repeating: 0, count: vocab)
        s.applyDRY(&l, count: vocab, recent: context[...])
        var out: [Int32: Float] = [:]
        for (i, v) in l.enumerated() where v != 0 { out[Int32(i)] = -v }
        return out
    }

    func testDRYPenalisesTheTokenThatWouldExtendACopy() {
        // "5 1 2 3" then "9 1 2 3": the newest run 1 2 3 matches the one ending at position 3
        // (3 tokens; 5 ≠ 9 stops it), which 9 followed: 9 loses 0.8 · 1.75^(3−2) = 1.4.
        let d = dryPenalties([5, 1, 2, 3, 9, 1, 2, 3])
        XCTAssertEqual(Array(d.keys), [9])
        XCTAssertEqual(d[9]!, 1.4, accuracy: 1e-6)
        // A run of one (the allowed length is 2) costs nothing.
        XCTAssertEqual(dryPenalties([7, 1, 8, 1]), [:])
        // Exactly the allowed length: 0.8 · 1.75^0.
        XCTAssertEqual(dryPenalties([4, 1, 2, 6, 1, 2])[6]!, 0.8, accuracy: 1e-6)
        // Off at multiplier 0.
        XCTAssertEqual(dryPenalties([5, 1, 2, 3, 9, 1, 2, 3]) { $0.dryMultiplier = 0 }, [:])
    }

    func testDRYTakesEachTokensLongestRunOnce() {
        // 8 1 2 | 6 1 2 | 8 1: 2 follows the newest token 1 twice, with runs of 2 (8 1 = 8 1) and
        // of 1 (6 ≠ 8): only the longest counts, once.
        let d = dryPenalties([8, 1, 2, 6, 1, 2, 8, 1])
        XCTAssertEqual(Array(d.keys), [2])
        XCTAssertEqual(d[2]!, 0.8, accuracy: 1e-6)
        // Two different followers, each with its own run: 3 4 7 | 3 4 5 … 3 4
        let e = dryPenalties([0, 3, 4, 7, 9, 3, 4, 5, 1, 3, 4])
        XCTAssertEqual(e[7]!, 0.8, accuracy: 1e-6)
        XCTAssertEqual(e[5]!, 0.8, accuracy: 1e-6)
        XCTAssertEqual(e.count, 2)
    }

    func testDRYRunsStopAtBreakersWhichAreNeverPenalised() {
        // 3 B 1 2 | 4 | 3 B 1 2: without breakers the run is 4 (0.8 · 1.75²); B = 50 stops it at 2.
        let context: [Int32] = [3, 50, 1, 2, 4, 3, 50, 1, 2]
        XCTAssertEqual(dryPenalties(context)[4]!, 0.8 * 1.75 * 1.75, accuracy: 1e-5)
        XCTAssertEqual(dryPenalties(context, breakers: [50])[4]!, 0.8, accuracy: 1e-6)
        // A copy that a breaker would extend (the end of a turn) leaves the breaker alone.
        XCTAssertEqual(dryPenalties([1, 2, 50, 1, 2], breakers: [50]), [:])
        XCTAssertEqual(dryPenalties([1, 2, 50, 1, 2])[50]!, 0.8, accuracy: 1e-6)
        // Nothing when the newest token is a breaker.
        XCTAssertEqual(dryPenalties([1, 50, 7, 1, 50], breakers: [50]), [:])
    }

    func testDRYWindowAndLongestRun() {
        // The copy lies outside a window of 5: no penalty; inside one of 8: penalty.
        let context: [Int32] = [5, 1, 2, 3, 9, 1, 2, 3]
        XCTAssertEqual(dryPenalties(context) { $0.dryWindow = 5 }, [:])
        XCTAssertEqual(dryPenalties(context) { $0.dryWindow = 8 }[9]!, 1.4, accuracy: 1e-6)
        // A long loop counts as Sampler.dryLongestRun tokens: finite, and prohibitive.
        let loop = (0..<300).map { Int32($0 % 3) }
        let d = dryPenalties(loop, vocab: 3)
        let cap = 0.8 * powf(1.75, Float(Sampler.dryLongestRun - 2))
        XCTAssertEqual(d[0]!, cap, accuracy: cap * 1e-5)
        XCTAssert(d[0]!.isFinite)
    }

    func testDRYBreaksAGreedyLoopThatTheRepetitionPenaltyKeeps() {
        // A "model" that always prefers to continue the cycle 0 1 2 0 1 2 … by a margin of 3 over
        // token 3. The repetition penalty at 1.1 never overcomes it; DRY does once the copy is long.
        func next(_ context: [Int32], _ p: SamplingParameters) -> Int32 {
            var s = Sampler(p)
            var l: [Float] = [0, 0, 0, 2]
            l[Int((context.last! + 1) % 3)] = 5
            return s.sample(&l, count: 4, recent: context[...])
        }
        var rp = SamplingParameters.greedy
        rp.repetitionPenalty = 1.1
        var dry = rp
        dry.dryMultiplier = 0.8
        dry.dryAllowedLength = 2
        var a: [Int32] = [0], b: [Int32] = [0]
        for _ in 0..<30 { a.append(next(a, rp)); b.append(next(b, dry)) }
        XCTAssertFalse(a.contains(3))
        // From the second cycle on the run grows by one per token; the cycle's token keeps
        // 5 / 1.1 − 0.8 · 1.75^(run − 2) above 2 up to a run of 4 and falls below at 5, the
        // ninth token.
        XCTAssertEqual(b.firstIndex(of: 3), 8)
    }

    func testGenerationStopsDRYRunsAtTheModelsControlTokens() throws {
        let model = try TestSupport.model()
        let tok = model.tokenizer
        let (start, end) = (try XCTUnwrap(tok.tokenID("<|im_start|>")), try XCTUnwrap(tok.tokenID("<|im_end|>")))
        XCTAssert(model.controlTokens.isSuperset(of: [start, end]))
        XCTAssert(model.controlTokens.isSuperset(of: model.stopTokens))
        XCTAssertFalse(model.controlTokens.contains(try XCTUnwrap(tok.encode(" the", parseSpecial: false).first)))
        var p = SamplingParameters.greedy
        p.dryMultiplier = 0.8
        var sampler = Sampler(p)
        let session = Session(model: model, capacity: 128, threads: 1)
        _ = try session.generate(prompt: tok.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", parseSpecial: true), maxTokens: 2, sampler: &sampler) { _ in true }
        XCTAssertEqual(sampler.sequenceBreakers, model.controlTokens)
    }
}

import BuddyCore
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
}

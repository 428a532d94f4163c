import BuddyCore
import BuddyTestSupport
import XCTest

final class ChatEvalTests: XCTestCase {
    func testPromptSetSplitsByPositionAndNamesBadLines() throws {
        let lines = (0..<5).map { #"{"question_id": \#(80 + $0), "category": "c\#($0)", "turns": ["q\#($0)", "second"]}"# }
        let text = lines.joined(separator: "\n") + "\n"
        XCTAssertEqual(try ChatPromptSet.parse(text).map(\.text), ["q0", "q1", "q2", "q3", "q4"])
        XCTAssertEqual(try ChatPromptSet.parse(text, split: .train).map(\.id), ["80", "82", "84"])
        XCTAssertEqual(try ChatPromptSet.parse(text, split: .heldout).map(\.id), ["81", "83"])
        XCTAssertThrowsError(try ChatPromptSet.parse(lines[0] + "\nnot json\n")) { XCTAssertTrue("\($0)".contains("line 2"), "\($0)") }
        XCTAssertThrowsError(try ChatPromptSet.parse(#"{"turns": []}"#)) { XCTAssertTrue("\($0)".contains("turns"), "\($0)") }
        // The follow-up turn is kept when there is one (and not empty).
        XCTAssertEqual(try ChatPromptSet.parse(text).map(\.followUp), Array(repeating: "second", count: 5))
        XCTAssertEqual(try ChatPromptSet.parse(#"{"turns": ["only"]}"# + "\n" + #"{"turns": ["a", ""]}"#).map(\.followUp), [nil, nil])
    }

    /// Known answers: parsed when present (a bad list names its line), and a reply gives one
    /// when an answer's words appear whole, case ignored, among its first 40 words.
    func testKnownAnswersAreFoundAsWholeWordsEarlyInTheReply() throws {
        let prompts = try ChatPromptSet.parse(#"{"question_id": "f", "turns": ["Capital of France?"], "answers": ["Paris"]}"# + "\n" + #"{"turns": ["Open?"]}"#)
        XCTAssertEqual(prompts.map(\.answers), [["Paris"], []])
        for bad in [#"{"turns": ["q"], "answers": []}"#, #"{"turns": ["q"], "answers": "Paris"}"#, #"{"turns": ["q"], "answers": ["?!"]}"#] {
            XCTAssertThrowsError(try ChatPromptSet.parse(#"{"turns": ["ok"]}"# + "\n" + bad)) {
                XCTAssertTrue("\($0)".contains("line 2") && "\($0)".contains("answers"), "\($0)")
            }
        }
        XCTAssertTrue(ReplyAnswer.gives("The capital of France is PARIS, also known as the City of Light.", anyOf: ["Paris"]))
        XCTAssertFalse(ReplyAnswer.gives("The capital of France is Le Havre.", anyOf: ["Paris"]))
        XCTAssertFalse(ReplyAnswer.gives("Parisian food is famous.", anyOf: ["Paris"]), "a longer word is not the answer")
        XCTAssertTrue(ReplyAnswer.gives("A spider has 8 legs.", anyOf: ["eight", "8"]))
        XCTAssertFalse(ReplyAnswer.gives("A spider has 18 legs.", anyOf: ["eight", "8"]))
        XCTAssertTrue(ReplyAnswer.gives("Plants take in carbon-dioxide.", anyOf: ["carbon dioxide"]), "a phrase's words in a row")
        XCTAssertFalse(ReplyAnswer.gives("Carbon and then dioxide.", anyOf: ["carbon dioxide"]))
        let late = String(repeating: "word ", count: 40) + "Paris"
        XCTAssertFalse(ReplyAnswer.gives(late, anyOf: ["Paris"]), "the 41st word is too late")
        XCTAssertTrue(ReplyAnswer.gives(String(repeating: "word ", count: 39) + "Paris", anyOf: ["Paris"]))
        XCTAssertEqual(ReplyAnswer.words("H2O, isn't it?"), ["h2o", "isn", "t", "it"])
    }

    /// The committed set of simple questions: 60 distinct questions, each with answers that
    /// the check finds in a reply made of the answer alone, split 30 / 30 by position.
    func testSimpleFactsSetIsWellFormed() throws {
        let text = try String(contentsOf: TestSupport.root.appendingPathComponent("eval/simple-facts.jsonl"), encoding: .utf8)
        let prompts = try ChatPromptSet.parse(text)
        XCTAssertEqual(prompts.count, 60)
        XCTAssertEqual(Set(prompts.map(\.id)).count, 60)
        XCTAssertEqual(Set(prompts.map(\.text)).count, 60)
        for p in prompts {
            XCTAssertFalse(p.answers.isEmpty, p.id)
            for a in p.answers { XCTAssertTrue(ReplyAnswer.gives("It is \(a).", anyOf: [a]), "\(p.id): \(a)") }
        }
        XCTAssertEqual(try ChatPromptSet.parse(text, split: .train).count, 30)
    }

    /// A follow-up conversation renders both user turns and the assistant's reply between them, in
    /// the template's order, ending ready for the assistant.
    func testFollowUpPromptRendersTheWholeConversation() throws {
        let m = try TestSupport.model()
        let ev = ChatEvaluator(session: Session(model: m, capacity: 512, threads: 1))
        let ids = ev.promptTokens([ChatMessage(role: .user, content: "Name a colour."), ChatMessage(role: .assistant, content: "Blue."),
                                   ChatMessage(role: .user, content: "Another?")])
        let text = m.tokenizer.decode(ids, includeSpecial: true)
        let conversation = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n"
            + "<|im_start|>user\nAnother?<|im_end|>\n<|im_start|>assistant\n"
        XCTAssertTrue(text.hasSuffix(conversation), text)
        XCTAssertEqual(ev.promptTokens("Name a colour."), ev.promptTokens([ChatMessage(role: .user, content: "Name a colour.")]))
    }

    /// The full model teacher-forced along its own greedy reply reproduces it exactly.
    func testFullDepthAgreesWithItsOwnReference() throws {
        let m = try TestSupport.model()
        let session = Session(model: m, capacity: 512, threads: 2)
        let ev = ChatEvaluator(session: session)
        let ref = try ev.reference(prompt: ev.promptTokens("Name three colours."), maxTokens: 24)
        XCTAssertGreaterThan(ref.reply.count, 3)
        XCTAssertEqual(ref.logProbs.count, ref.reply.count * m.config.vocabSize)
        let d = try ev.compare(ref)
        XCTAssertEqual(d.tokens, ref.reply.count)
        XCTAssertEqual(d.agreements, d.tokens)
        XCTAssertLessThan(d.meanKL, 1e-6, "only the float rounding of the stored log-probabilities")
        XCTAssertTrue(ev.positions.isEmpty, "positions are kept only when asked for")

        // Kept positions: the full model against itself has its own entropy, gives the greedy
        // token its largest log-probability, and sums to the comparison's KL.
        ev.recordsPositions = true
        let again = try ev.compare(ref)
        XCTAssertEqual(ev.positions.count, ref.reply.count)
        XCTAssertEqual(ev.positions.reduce(0) { $0 + $1.kl }, again.klSum, accuracy: 1e-9)
        let vocab = m.config.vocabSize
        for (t, q) in ev.positions.enumerated() {
            XCTAssertEqual(q.routedEntropy, q.referenceEntropy, accuracy: 1e-3, "position \(t)")
            let row = ref.logProbs[(t * vocab)..<((t + 1) * vocab)]
            XCTAssertEqual(q.routedLogProbability, Double(row.max()!), accuracy: 1e-4, "position \(t)")
            let entropy = row.reduce(0.0) { $0 - ($1 > -30 ? exp(Double($1)) * Double($1) : 0) }
            XCTAssertEqual(q.referenceEntropy, entropy, accuracy: 1e-9)
            XCTAssertGreaterThan(q.referenceEntropy, 0)
        }
    }

    /// KL and agreement of a routed run equal an independent computation from one batched
    /// pass over prompt + reply with the same layers skipped.
    func testDivergenceMatchesAnIndependentBatchedComputation() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, vocab = m.config.vocabSize
        let session = Session(model: m, capacity: 512, threads: 2)
        let ev = ChatEvaluator(session: session)
        let ref = try ev.reference(prompt: ev.promptTokens("What is the capital of France?"), maxTokens: 16)
        let skip: Set<Int> = [5, 12, 17, 22]
        session.selector = FixedSkip(layers: L, skip: skip)
        let d = try ev.compare(ref)
        let b = try ev.compare(ref, batched: true)
        XCTAssertEqual(b.klSum, d.klSum, accuracy: 1e-9, "batched comparison gives the per-token numbers")
        XCTAssertEqual(b.agreements, d.agreements)

        let all = ref.prompt + ref.reply
        let cache = KVCache(layers: L, capacity: all.count, kvDim: m.config.kvDim)
        let batch = BatchState(config: m.config, maxTokens: all.count, capacity: all.count, pool: ThreadPool.shared(threads: 2))
        m.transformer.prefill(all[...], start: 0, batch, cache, runs: { !skip.contains($0) }, policy: .mask)
        let logits = UnsafeMutablePointer<Float>.allocate(capacity: all.count * vocab)
        defer { logits.deallocate() }
        m.transformer.batchLogitsAll(n: all.count, batch, logits)
        var kl = 0.0, agree = 0
        for t in 0..<ref.reply.count {
            let row = logits + (ref.prompt.count - 1 + t) * vocab
            var mx = -Float.infinity, best = 0
            for i in 0..<vocab where row[i] > mx { mx = row[i]; best = i }
            var s = 0.0
            for i in 0..<vocab { s += exp(Double(row[i] - mx)) }
            let lse = Double(mx) + log(s)
            for i in 0..<vocab {
                let lp = Double(ref.logProbs[t * vocab + i])
                kl += exp(lp) * (lp - (Double(row[i]) - lse))
            }
            if Int32(best) == ref.argmax[t] { agree += 1 }
        }
        XCTAssertGreaterThan(d.meanKL, 0.001, "skipping four layers must change the distributions")
        XCTAssertEqual(d.meanKL, kl / Double(ref.reply.count), accuracy: 1e-3 * max(1, kl / Double(ref.reply.count)))
        XCTAssertEqual(d.agreements, agree)
    }
}

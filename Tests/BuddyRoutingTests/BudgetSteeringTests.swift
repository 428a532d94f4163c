import BuddyCore
import BuddyEvaluation
import BuddyRouting
import BuddyTestSupport
import CAllocationCounter
import XCTest

/// `BudgetSteering`: k + 3 layers after a step whose entropy is in the top quarter of the
/// recent ones, k − 1 otherwise, checked against entropies and quartiles the tests compute
/// themselves.
final class BudgetSteeringTests: XCTestCase {
    /// Entropy by hand: uniform over 8 is log 8; softmax([0, log 3]) is (1/4, 3/4).
    func testEntropyMatchesHandComputation() {
        let uniform = [Float](repeating: 2.5, count: 8)
        XCTAssertEqual(LogProbabilities.entropy(uniform, count: 8), log(8.0), accuracy: 1e-9)
        let two: [Float] = [0, Float(log(3.0))]
        XCTAssertEqual(LogProbabilities.entropy(two, count: 2), -(0.25 * log(0.25) + 0.75 * log(0.75)), accuracy: 1e-6)
        let peaked: [Float] = [0, 200, 0]
        XCTAssertEqual(LogProbabilities.entropy(peaked, count: 3), 0, accuracy: 1e-12)
    }

    /// The test's own rule: the last `BudgetSteering.window` entropies observed, their upper
    /// quartile (sorted, index ⌊(n − 1)·0.75⌋), and whether the last one is strictly above it.
    private func naiveEntropy(_ row: [Float]) -> Double {
        let m = Double(row.max()!)
        let z = row.reduce(0.0) { $0 + exp(Double($1) - m) }
        return -row.reduce(0.0) { s, x in let p = exp(Double(x) - m) / z; return p > 0 ? s + p * log(p) : s }
    }
    private func raises(_ seen: [Double]) -> Bool {
        let sorted = seen.suffix(BudgetSteering.window).sorted()
        return seen.last! > sorted[Int(Double(sorted.count - 1) * 0.75)]
    }

    /// On the real model, greedy decoding through the shipped router at 0.8: every step runs
    /// k + 3 or k − 1 routable layers exactly as the previous step's entropy says, about a
    /// quarter of the steps are raised (some, fewer than half), and the reply's mean stays near
    /// k. The second prompt's reply is steered by the quartile of both replies' entropies.
    func testSteeringFollowsTheEntropyOfTheModelsOwnOutput() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, vocab = m.config.vocabSize
        let k = LayerBudget.routableCount(budget: 0.8, layers: L)
        let s = Session(model: m, capacity: 256, threads: 2, batchSize: 64)
        s.standIns = try Routers.standIns(model: m)
        s.promptDepth = .full
        let steering = BudgetSteering(try Routers.make("buddy", model: m, budget: 0.8))
        s.selector = steering
        XCTAssertEqual(steering.name, "buddy+steer")
        var seen: [Double] = []
        for question in ["What is the capital of France?", "Write a short poem about the sea."] {
            let prompt = m.template.render([ChatMessage(role: .user, content: question)], addGenerationPrompt: true)
            try s.evaluate(m.tokenizer.encode(prompt, parseSpecial: true))
            seen.append(naiveEntropy(Array(UnsafeBufferPointer(start: s.decode.logits, count: vocab))))
            var token = Sampler.argmax(s.decode.logits, count: vocab)
            var layers = 0, raised = 0
            let steps = 48
            for step in 0..<steps {
                let expectRaise = raises(seen)
                try s.step(token)
                let routed = Session.count(s.lastMask) - 2
                XCTAssertEqual(routed, expectRaise ? k + 3 : k - 1, "step \(step): previous entropy \(seen.last!)")
                layers += routed
                if expectRaise { raised += 1 }
                seen.append(naiveEntropy(Array(UnsafeBufferPointer(start: s.decode.logits, count: vocab))))
                token = Sampler.argmax(s.decode.logits, count: vocab)
            }
            XCTAssertEqual(steering.steps, steps)
            XCTAssertEqual(steering.raisedSteps, raised)
            XCTAssertEqual(steering.routedLayers, layers)
            XCTAssertGreaterThan(raised, 0, "some steps are raised")
            XCTAssertLessThan(raised, steps / 2, "at most about a quarter are")
            XCTAssertEqual(Double(layers) / Double(steps), Double(k), accuracy: 1.0, "the mean stays near k")
        }
    }

    /// Past the window the oldest entropy leaves the quartile: a stream of synthetic outputs
    /// (two-token logits whose entropy the test controls) longer than the window, decided
    /// against the test's own quartile of the last `window` entropies at every step.
    func testQuartileSlidesOverTheLastWindowOfEntropies() throws {
        let m = try TestSupport.model()
        let s = Session(model: m, capacity: 16, threads: 1, batchSize: 4)
        let steering = BudgetSteering(try Routers.make("sleb", model: m, budget: 0.5))
        var rng = SeededRNG(seed: 11)
        var seen: [Double] = []
        var expected = 0
        // A drifting level, so an old window and a new one disagree about the quartile.
        for i in 0..<(BudgetSteering.window + 700) {
            let gap = Float(i) / 600 + 3 * rng.nextUnitFloat()
            let row: [Float] = [0, gap]
            steering.observe(logits: row, count: 2, replyStarts: i == 0)
            seen.append(naiveEntropy(row))
            if raises(seen) { expected += 1 }
            _ = steering.selectLayers(position: 0, state: s.decode, cache: s.cache)
            XCTAssertEqual(steering.raisedSteps, expected, "step \(i)")
            if steering.raisedSteps != expected { break }
        }
    }

    /// Where k + 3 or k − 1 does not exist, every step runs k; budget 1 runs every layer.
    func testSteeringRunsKWhereItCannotMove() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, vocab = m.config.vocabSize
        let routable = LayerBudget.routable(layers: L)
        for budget in [1.0, Double(routable - 1) / Double(routable), 1 / Double(routable)] {
            let k = LayerBudget.routableCount(budget: budget, layers: L)
            let s = Session(model: m, capacity: 128, threads: 2, batchSize: 32)
            let steering = BudgetSteering(try Routers.make("sleb", model: m, budget: budget))
            s.selector = steering
            try s.evaluate(m.tokenizer.encode("The sea is", parseSpecial: false))
            var token = Sampler.argmax(s.decode.logits, count: vocab)
            for _ in 0..<12 {
                try s.step(token)
                XCTAssertEqual(Session.count(s.lastMask) - 2, k, "budget \(budget)")
                token = Sampler.argmax(s.decode.logits, count: vocab)
            }
            XCTAssertEqual(steering.raisedSteps, 0)
        }
    }

    /// The blind control raises about a quarter of the steps whatever the output, with the
    /// same k + 3 / k − 1.
    func testBlindControlRaisesAQuarterOfSteps() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, vocab = m.config.vocabSize
        let k = LayerBudget.routableCount(budget: 0.7, layers: L)
        let s = Session(model: m, capacity: 512, threads: 2, batchSize: 32)
        let blind = BudgetSteering(try Routers.make("sleb", model: m, budget: 0.7), signal: .blind)
        XCTAssertEqual(blind.name, "sleb+blind")
        s.selector = blind
        try s.evaluate(m.tokenizer.encode("Once upon a time", parseSpecial: false))
        var token = Sampler.argmax(s.decode.logits, count: vocab)
        for _ in 0..<120 {
            try s.step(token)
            XCTAssertTrue([k + 3, k - 1].contains(Session.count(s.lastMask) - 2))
            token = Sampler.argmax(s.decode.logits, count: vocab)
        }
        XCTAssertEqual(Double(blind.raisedSteps) / 120, 0.25, accuracy: 0.1)
    }

    /// Every eval method can be steered (`sleb+steer`, `buddy+blind`); unknown bases are refused.
    func testEvalMethodsTakeTheSteeringSuffix() throws {
        let m = try TestSupport.model()
        let grid = EvalGrid(budgets: "0.8", methods: "sleb+steer,buddy+blind,shortgpt")
        XCTAssertNoThrow(try grid.validate())
        XCTAssertEqual(try grid.selector(method: "sleb+steer", budget: 0.8, model: m)?.name, "sleb+steer")
        XCTAssertEqual(try grid.selector(method: "buddy+blind", budget: 0.8, model: m)?.name, "buddy+blind")
        XCTAssertFalse(Routers.canBatch(try grid.selector(method: "sleb+steer", budget: 0.8, model: m), budget: 0.8),
                       "a steered set depends on the routed output, so it cannot run as one batch")
        XCTAssertThrowsError(try EvalGrid(methods: "nope+steer").validate())
    }

    /// A steered decode step allocates nothing (the entropy, the quartile's sorted list and the
    /// router's decision all reuse their storage).
    func testSteeredDecodeStepAllocatesNothing() throws {
        guard bac_available() != 0 else { throw XCTSkip("allocation counting needs Linux/glibc") }
        let m = try TestSupport.model()
        let vocab = m.config.vocabSize
        let s = Session(model: m, capacity: 128, threads: 2, batchSize: 16)
        s.standIns = try Routers.standIns(model: m)
        s.selector = BudgetSteering(try Routers.make("buddy", model: m, budget: 0.8))
        try s.evaluate(m.tokenizer.encode("Once upon a time", parseSpecial: false))
        var token = Sampler.argmax(s.decode.logits, count: vocab)
        for _ in 0..<3 { try s.step(token); token = Sampler.argmax(s.decode.logits, count: vocab) }
        bac_start()
        for _ in 0..<8 { try s.step(token); token = Sampler.argmax(s.decode.logits, count: vocab) }
        XCTAssertEqual(bac_stop(), 0, "heap allocations in 8 steered decode steps")
    }

    /// Perplexity's token-by-token scoring steers as a Session does: the second half of a chunk
    /// scored through `PerplexityEvaluator` gives the same log-likelihood and the same steered
    /// layer counts as a Session that reads the first half as a prompt at the budget and then
    /// steps through the second, teacher-forced. Perplexity's context half is text, not a chat
    /// prompt, so it runs without prompt sets: the Session's router is given none.
    func testPerplexityScoringSteersLikeASession() throws {
        let m = try TestSupport.model()
        let vocab = m.config.vocabSize, n = 96
        var ids = m.tokenizer.encode(String(repeating: "The river rose in the spring and the town moved its market up the hill. ", count: 8), parseSpecial: false)
        ids = Array(ids.prefix(n))
        if m.tokenizer.addBOS, let bos = m.tokenizer.bosID { ids[0] = bos }
        let standIns = try Routers.standIns(model: m)

        let p = PerplexityEvaluator(model: m, contextSize: n, threads: 2)
        p.standIns = standIns
        let scored = BudgetSteering(try Routers.make("sleb", model: m, budget: 0.8))
        let viaEvaluator = p.scoreChunkRouted(ids[...], selector: scored, policy: .fill)

        let s = Session(model: m, capacity: n, threads: 2, batchSize: n)
        s.standIns = standIns
        s.promptDepth = .budget
        let sleb = try XCTUnwrap(try Routers.make("sleb", model: m, budget: 0.8) as? StaticRanking)
        XCTAssertNotNil(sleb.promptMask(), "the shipped ranking has a prompt set at 0.8 (what this test sets aside)")
        sleb.promptSets = .none(routable: m.config.layers - 2)
        let stepped = BudgetSteering(sleb)
        s.selector = stepped
        try s.evaluate(Array(ids[0..<(n / 2)]))
        var nll = 0.0
        for pos in (n / 2)..<(n - 1) {
            try s.step(ids[pos])
            nll += LogProbabilities.negativeLogProb(s.decode.logits, count: vocab, target: Int(ids[pos + 1]))
        }
        XCTAssertEqual(viaEvaluator.count, n - 1 - n / 2)
        XCTAssertEqual(scored.steps, viaEvaluator.count)
        XCTAssertGreaterThan(scored.raisedSteps, 0, "the scored steps see the output, so some are raised")
        XCTAssertEqual(scored.raisedSteps, stepped.raisedSteps)
        XCTAssertEqual(scored.routedLayers, stepped.routedLayers)
        XCTAssertEqual(viaEvaluator.nll, nll, accuracy: 1e-3 * nll)
    }

    /// Sentence ends by hand: a newline anywhere, or ".", "!", "?" last but for trailing
    /// spaces, quotes and closing brackets; the model's own sentence-end tokens include "." and
    /// "\n" and no control token.
    func testSentenceEndsByHand() throws {
        for text in [".", " world.", "!", "?\"", ".) ", "\n", "\n\n", ":\n", "...", "'?"] {
            XCTAssertTrue(LanguageModel.endsSentence(Array(text.utf8)), text.debugDescription)
        }
        for text in ["", " the", "3.5", ",", ":", " Mr", "\"", "(.a"] {
            XCTAssertFalse(LanguageModel.endsSentence(Array(text.utf8)), text.debugDescription)
        }
        let m = try TestSupport.model()
        for text in [".", "\n", " end."] {
            let ids = m.tokenizer.encode(text, parseSpecial: false)
            XCTAssertTrue(m.sentenceEndTokens.contains(ids.last!), text.debugDescription)
        }
        for id in m.tokenizer.encode(" the capital, of France", parseSpecial: false) {
            XCTAssertFalse(m.sentenceEndTokens.contains(id))
        }
        XCTAssertTrue(m.sentenceEndTokens.isDisjoint(with: m.controlTokens))
        XCTAssertGreaterThan(m.sentenceEndTokens.count, 100)
    }

    /// `+sentence` on the real model, greedy, at 0.7 and 0.5: a step whose input token ends a
    /// sentence runs every routable layer; any
    /// other step runs k + 3 when the previous entropy is in the window's top quarter, else
    /// k − 1, less min(3, ⌈owed / 8⌉) while the reply has run more than k per step. All of it
    /// checked against the test's own tally, and the reply's mean stays near k.
    func testSentenceSteeringRunsEveryLayerAfterASentenceEnd() throws {
        for budget in [0.7, 0.5] {
            var sentenceSteps = 0
            try checkGreedyReply(signal: .sentence, budget: budget, steps: 160) { reply in
                if reply.endsSentence { sentenceSteps += 1; return reply.routable }
                if reply.raises { return reply.k + 3 }
                return reply.owed > 0 ? reply.sentencePayback : reply.k - 1
            }
            XCTAssertGreaterThan(sentenceSteps, 4, "the reply has sentence ends")
        }
    }

    /// What a step of a greedy steered reply looks like to the test's own tally.
    struct ReplyStep {
        let k: Int, routable: Int
        /// Whether the step's input token ends a sentence.
        let endsSentence: Bool
        /// Whether the entropy rule raises the step (the previous entropy in the window's top quarter).
        let raises: Bool
        /// Layers run beyond k per step before this one.
        let owed: Int
        /// A step that pays sentence ends back: k − 1 − min(3, ⌈owed / 8⌉), at least 1.
        var sentencePayback: Int { max(1, k - 1 - min(3, (owed + 7) / 8)) }
    }

    /// Runs a greedy reply to "Why is the sky blue?" steered by `signal` on the shipped router
    /// with stand-ins, and checks each step's routable layers against `expected`; then that the
    /// steering's own count agrees and the reply's mean stays near k.
    func checkGreedyReply(signal: BudgetSteering.Signal, budget: Double, steps: Int, expected: (ReplyStep) -> Int) throws {
        let m = try TestSupport.model()
        let L = m.config.layers, vocab = m.config.vocabSize, routable = LayerBudget.routable(layers: L)
        let k = LayerBudget.routableCount(budget: budget, layers: L)
        let s = Session(model: m, capacity: 512, threads: 2, batchSize: 64)
        s.standIns = try Routers.standIns(model: m)
        s.promptDepth = .full
        let steering = BudgetSteering(try Routers.make("buddy", model: m, budget: budget), signal: signal)
        XCTAssertEqual(steering.name, "buddy" + signal.suffix)
        s.selector = steering
        let prompt = m.template.render([ChatMessage(role: .user, content: "Why is the sky blue?")], addGenerationPrompt: true)
        try s.evaluate(m.tokenizer.encode(prompt, parseSpecial: true))
        var seen = [naiveEntropy(Array(UnsafeBufferPointer(start: s.decode.logits, count: vocab)))]
        var token = Sampler.argmax(s.decode.logits, count: vocab)
        var layers = 0
        for step in 1...steps {
            let want = expected(ReplyStep(k: k, routable: routable, endsSentence: m.sentenceEndTokens.contains(token),
                                          raises: raises(seen), owed: layers - (step - 1) * k))
            try s.step(token)
            let routed = Session.count(s.lastMask) - 2
            XCTAssertEqual(routed, want, "budget \(budget), step \(step)")
            if routed != want { return }
            layers += routed
            seen.append(naiveEntropy(Array(UnsafeBufferPointer(start: s.decode.logits, count: vocab))))
            token = Sampler.argmax(s.decode.logits, count: vocab)
        }
        XCTAssertEqual(steering.routedLayers, layers)
        XCTAssertEqual(Double(layers) / Double(steps), Double(k), accuracy: 0.6, "budget \(budget): the mean stays near k")
    }

    /// `+lead` on the real model, greedy, by hand: at 0.9 and 0.7 every step of the reply's
    /// first sentence (at most `leadLimit`) runs every routable layer, then sentence ends do,
    /// and the other steps pay back faster (k − 1 − min(6, ⌈owed / 4⌉), no entropy raise while
    /// more than 8 layers are owed); at 0.5 (k under two thirds) it is `+sentence` exactly.
    func testLeadSteeringRunsTheFirstSentenceAtEveryLayer() throws {
        let layers = try TestSupport.model().config.layers
        for budget in [0.9, 0.7, 0.5] {
            let k = LayerBudget.routableCount(budget: budget, layers: layers)
            let leads = 3 * k >= 2 * LayerBudget.routable(layers: layers)
            XCTAssertEqual(leads, budget > 0.6)
            var leadSteps = 0, leadDone = false
            try checkGreedyReply(signal: .lead, budget: budget, steps: 96) { reply in
                if reply.endsSentence { leadDone = true }
                if leads && !leadDone && leadSteps < BudgetSteering.leadLimit { leadSteps += 1; return reply.routable }
                if reply.endsSentence { return reply.routable }
                if !(leads && reply.owed > 8) && reply.raises { return reply.k + 3 }
                guard reply.owed > 0 else { return reply.k - 1 }
                return leads ? max(1, reply.k - 1 - min(6, (reply.owed + 3) / 4)) : reply.sentencePayback
            }
            if leads { XCTAssertGreaterThan(leadSteps, 3, "budget \(budget): the first sentence ran at every layer") } else { XCTAssertEqual(leadSteps, 0) }
        }
    }
}

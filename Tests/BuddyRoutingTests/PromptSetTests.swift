import BuddyCore
import BuddyRouting
import BuddyTestSupport
import BuddyTraining
import Foundation
import XCTest

/// Prompt sets: the layers a prompt at the budget runs, held by any router.
final class PromptSetTests: XCTestCase {
    /// A set must run exactly k distinct routable layers; its mask runs the first and last layer too.
    func testPromptSetsAreStrict() throws {
        var sets = PromptSets.none(routable: 28)
        XCTAssertNil(sets.mask(budget: 0.8))
        try sets.set([27, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], kept: 22)
        let mask = try XCTUnwrap(sets.mask(budget: 0.8))   // round(0.8 × 28) = 22
        XCTAssertEqual(mask.count, 30)
        XCTAssertEqual(mask.indices.filter { mask[$0] }, [0] + Array(1...21) + [27, 29])
        XCTAssertNil(sets.mask(budget: 0.7), "k = 20 has no set of its own")
        XCTAssertEqual(sets.sets[22], Array(1...21) + [27], "kept in ascending order")
        XCTAssertThrowsError(try sets.set([1, 2, 3], kept: 4)) { XCTAssertTrue("\($0)".contains("must hold 4 distinct routable layers"), "\($0)") }
        XCTAssertThrowsError(try sets.set([1, 1, 2], kept: 3)) { XCTAssertTrue("\($0)".contains("distinct"), "\($0)") }
        XCTAssertThrowsError(try sets.set([0, 1, 2], kept: 3), "layer 0 always runs: not routable")
        XCTAssertThrowsError(try sets.set([1, 2, 29], kept: 3), "layer 29 always runs: not routable")
        XCTAssertThrowsError(try sets.set([1], kept: 29)) { XCTAssertTrue("\($0)".contains("outside 1...28"), "\($0)") }
        try sets.set(nil, kept: 22)
        XCTAssertTrue(sets.isEmpty)
    }

    /// A prompt at the budget runs the router's prompt set (and its logits are those of a forward
    /// pass with exactly that set); the reply's tokens are decided by the router as before; at a
    /// budget without a set, at full prompt depth, or steered, the rules hold as documented.
    func testPromptRunsItsSetAndTheReplyTheRoutersChoice() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, vocab = m.config.vocabSize
        let prompt = m.tokenizer.encode("Question: what is the capital of France? Answer:", parseSpecial: false)
        let reply = m.tokenizer.encode(" Paris, which is famous for", parseSpecial: false)
        let budget = 0.8, k = LayerBudget.routableCount(budget: budget, layers: L)
        // A set the module never picks for k (its candidates are prefixes of random rankings).
        let promptSet = Array(1...k - 1) + [L - 2]
        func logits(_ s: Session) -> [Float] { Array(UnsafeBufferPointer(start: s.decode.logits, count: vocab)) }
        func session(_ setUp: (DecisionModule) throws -> Void, steered: Bool = false, depth: PromptDepth = .budget) throws -> Session {
            let s = Session(model: m, capacity: 64, threads: 2, batchSize: 32)
            let dm = try TestModules.withScorers(model: m, seed: 11)
            dm.budget = budget
            try setUp(dm)
            s.selector = steered ? BudgetSteering(dm) : dm
            s.promptDepth = depth
            return s
        }
        let plain = try session { _ in }
        let withSet = try session { try $0.promptSets.set(promptSet, kept: k) }
        XCTAssertNotEqual(try session { _ in }.selectorPromptDecision(prompt), LayerBudget.mask(layers: L, chosen: promptSet), "the set must differ from the module's own decision")

        try withSet.evaluate(prompt)
        XCTAssertEqual(withSet.lastLayers, [0] + promptSet + [L - 1])
        XCTAssertEqual((withSet.selector as? DecisionModule)?.layerSetLabel, "prompt", "the routing panel names the prompt set")
        XCTAssertEqual(withSet.layerTokenCount, prompt.count * (k + 2), "the prompt stays at the budget")
        // Independent of the session: the same prompt through the routed forward pass with that set.
        let reference = Session(model: m, capacity: 64, threads: 2, batchSize: 32)
        let t = m.transformer
        t.routedForward(prompt[...], start: 0, reference.batch, reference.cache, routing: .fixed(LayerBudget.mask(layers: L, chosen: promptSet)), policy: .fill)
        t.batchLogits(row: prompt.count - 1, reference.batch, reference.decode)
        XCTAssertEqual(logits(withSet), logits(reference), "prompt logits are those of the prompt set's forward pass")

        // The reply's decisions are the router's own: the same masks as without a prompt set
        // (decisions read layer 0 only), exactly k + 2 layers each.
        try plain.evaluate(prompt)
        for token in reply {
            try plain.step(token); try withSet.step(token)
            XCTAssertEqual(withSet.lastMask, plain.lastMask)
            XCTAssertEqual(Session.count(withSet.lastMask), k + 2)
        }
        XCTAssertNotEqual(logits(withSet), logits(plain), "the prompt's cache differs, so the reply's logits do")

        // Another k has no set: the module decides the prompt as before.
        for s in [plain, withSet] { (s.selector as! DecisionModule).budget = 0.7; s.reset(); (s.selector as! DecisionModule).resetContext() }
        try plain.evaluate(prompt); try withSet.evaluate(prompt)
        XCTAssertEqual(withSet.lastMask, plain.lastMask)
        XCTAssertEqual(logits(withSet), logits(plain))

        // At full prompt depth the set is not used.
        let full = try session({ try $0.promptSets.set(promptSet, kept: k) }, depth: .full)
        try full.evaluate(prompt)
        XCTAssertEqual(full.lastLayers.count, L)

        // Steered, a prompt runs at the mean budget: the same set.
        let steered = try session({ try $0.promptSets.set(promptSet, kept: k) }, steered: true)
        try steered.evaluate(prompt)
        XCTAssertEqual(steered.lastLayers, [0] + promptSet + [L - 1])
    }

    /// The searches' shared measurement (`ChatEvaluator.compare(_:sets:part:)`): several sets run
    /// on one conversation, each restarting from the first set's streams below its first
    /// difference, give exactly what `compare` gives for each set alone, for prompt sets (reply
    /// decided row by row by a scorer that mixes sets) and for reply sets (prompt at full
    /// depth), with stand-ins on and the `fill` policy deferring skipped layers' K/V. Sets
    /// differ from the first at an early, a middle and a late layer, one not at all.
    func testSharedMeasurementEqualsEachSetAlone() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, routable = L - 2
        let k = LayerBudget.routableCount(budget: 0.7, layers: L)
        let first = Array(1...k)
        let sets = [first, first.filter { $0 != 1 } + [routable], first.filter { $0 != 9 } + [routable - 1], first.filter { $0 != k } + [k + 2], first]
        let masks = sets.map { LayerBudget.mask(layers: L, chosen: $0) }
        let standIns = try XCTUnwrap(try Routers.standIns(model: m))
        for part in [ChatEvaluator.SetPart.prompt, .reply] {
            let s = Session(model: m, capacity: 256, threads: 2, batchSize: 64)
            s.standIns = standIns
            s.policy = .fill
            s.promptDepth = part == .prompt ? .budget : .full
            let evaluator = ChatEvaluator(session: s)
            let ref = try evaluator.reference(prompt: evaluator.promptTokens("Name three rivers in Europe."), maxTokens: 24)
            XCTAssertGreaterThan(ref.reply.count, 8)
            func module(_ set: [Int]) throws -> DecisionModule {
                let dm = try TestModules.withScorers(model: m, seed: 41, scored: [k])
                dm.budget = Double(k) / Double(routable)
                if part == .prompt { try dm.promptSets.set(set, kept: k); return dm }
                let one = try dm.replacingChoice(.init(kept: k, sets: [set], names: ["reply search"]))
                one.budget = dm.budget
                return one
            }
            s.selector = try module(sets[0])
            let shared = try XCTUnwrap(evaluator.compare(ref, sets: masks, part: part), "\(part)")
            XCTAssertEqual(shared.count, sets.count)
            for (i, set) in sets.enumerated() {
                s.selector = try module(set)
                let alone = try evaluator.compare(ref, batched: true)
                XCTAssertEqual(shared[i].klSum, alone.klSum, "\(part) set \(i)")
                XCTAssertEqual(shared[i].agreements, alone.agreements, "\(part) set \(i)")
                XCTAssertEqual(shared[i].tokens, alone.tokens, "\(part) set \(i)")
                XCTAssertGreaterThan(alone.klSum, 0, "\(part) set \(i)")
            }
            XCTAssertNotEqual(shared[1].klSum, shared[2].klSum, "the sets differ")
            // The session is left clean: a plain comparison afterwards is unchanged.
            s.selector = try module(sets[2])
            XCTAssertEqual(try evaluator.compare(ref, batched: true).klSum, shared[2].klSum)
        }
        XCTAssertEqual(PromptSetSearch.sharingOrder([[true, true, false, true], [true, false, true, true], [true, true, true, true]]), [0, 1, 2],
                       "the set whose differences from the others lie deepest runs first")
        XCTAssertEqual(PromptSetSearch.sharingOrder([[true, false, true, true], [true, true, false, true], [true, true, true, true]]), [1, 0, 2])
    }

    /// A reply set (`buddy train reply-sets`) replaces the module's choice at one k: every decode
    /// step at that budget runs exactly the set, the module becomes batchable there, and every
    /// other k, the prompt sets and the input normalisation are unchanged.
    func testReplacingOneChoiceRunsThatSetAndKeepsTheRest() throws {
        let m = try TestSupport.model()
        let L = m.config.layers
        let dm = try TestModules.withScorers(model: m, seed: 21)
        let k = LayerBudget.routableCount(budget: 0.8, layers: L)
        try dm.promptSets.set(Array(2...(k + 1)), kept: k)
        let replySet = Array(1...(k - 1)) + [L - 2]
        let replaced = try dm.replacingChoice(.init(kept: k, sets: [replySet], names: ["reply search"]))
        XCTAssertEqual(replaced.weights.choices[k - 1].sets, [replySet])
        XCTAssertEqual(replaced.weights.choices[k - 2], dm.weights.choices[k - 2])
        XCTAssertEqual(replaced.weights.inputMean, dm.weights.inputMean)
        XCTAssertEqual(replaced.promptSets, dm.promptSets)
        XCTAssertNil(Routers.fixedMask(dm, budget: 0.8), "the scorer decides per token")
        XCTAssertEqual(Routers.fixedMask(replaced, budget: 0.8), LayerBudget.mask(layers: L, chosen: Set(replySet)), "one set: the same for every token")

        let s = Session(model: m, capacity: 64, threads: 2, batchSize: 32)
        replaced.budget = 0.8
        s.selector = replaced
        s.promptDepth = .full
        try s.evaluate(m.tokenizer.encode("The river flows", parseSpecial: false))
        for token in m.tokenizer.encode(" past the old mill and", parseSpecial: false) {
            try s.step(token)
            XCTAssertEqual(s.lastLayers, [0] + replySet + [L - 1])
        }
        XCTAssertThrowsError(try dm.replacingChoice(.init(kept: k, sets: [Array(1...(k - 1))], names: ["short"])), "a set of k − 1 layers cannot serve k")
    }

    /// The reply-set step's choice among the module's own set, the reply set and the pair, on
    /// the figures of its two runs (docs/TRAINING.md) and on hand-made edge cases.
    func testReplySetChoiceRule() {
        // The shipped run's validation figures: pooled, the pair wins; balanced, it costs prose 0.7 %.
        let prose = [0.5944, 0.6306, 0.5986], chat = [1.2183, 1.2320, 1.1778]
        XCTAssertEqual(ReplySetPair.choice(prose: prose, chat: chat, pooled: [0.9950, 1.0167, 0.9657], balanced: false, minGain: 0.005), 2)
        XCTAssertEqual(ReplySetPair.choice(prose: prose, chat: chat, pooled: [0.9950, 1.0167, 0.9705], balanced: true, minGain: 0.005), 0)
        XCTAssertEqual(ReplySetPair.choice(prose: prose, chat: chat, pooled: [0.9950, 1.0167, 0.9705], balanced: true, minGain: 0.01), 2,
                       "a 1 % allowance admits the pair's 0.7 %")
        // Pooled: a gain below minGain keeps the own set; the reply set wins a tie with the pair.
        XCTAssertEqual(ReplySetPair.choice(prose: prose, chat: chat, pooled: [1.0, 0.996, 0.997], balanced: false, minGain: 0.005), 0)
        XCTAssertEqual(ReplySetPair.choice(prose: prose, chat: chat, pooled: [1.0, 0.9, 0.9], balanced: false, minGain: 0.005), 1)
        // Balanced: both admissible, the lower chat KL is picked.
        XCTAssertEqual(ReplySetPair.choice(prose: [1, 1, 1], chat: [1, 0.8, 0.9], pooled: [1, 1, 1], balanced: true, minGain: 0.005), 1)
        XCTAssertEqual(ReplySetPair.choice(prose: [1, 1.2, 1], chat: [1, 0.8, 0.9], pooled: [1, 1, 1], balanced: true, minGain: 0.005), 2)
    }

    /// The prose guard: a pair scorer fitted on measured costs runs the reply set on prose
    /// tokens where it happens to be cheaper; fitted on guarded costs it keeps every prose token
    /// on the own set (telling prose from chat by a context feature, as the pooled K/V do) and
    /// still runs the reply set on the chat tokens where it is cheaper.
    func testProseGuardKeepsProseOnOwnSet() {
        // Inputs [context (−1 prose, +1 chat), token feature]; the reply set (index 1) is cheaper
        // exactly where the token feature is positive, in prose and in chat alike.
        var inputs: [[Float]] = [], costs: [[Double]] = []
        let prose = 200
        for t in 0..<400 {
            let feature = Float(sin(Double(t) * 1.7))
            inputs.append([t < prose ? -1 : 1, feature])
            costs.append(feature > 0 ? [1.0, 0.8] : [1.0, 1.3])
        }
        let measured = [costs.map { $0[0] }, costs.map { $0[1] }]   // [set][position], as the pair step holds them
        let guarded = ReplySetPair.guarded(measured, prose: prose, guard: 0.5)
        XCTAssertEqual(guarded[1][..<prose].map { $0 >= 1.5 }, [Bool](repeating: true, count: prose), "prose: own cost plus the guard at least")
        XCTAssertEqual(Array(guarded[1][prose...]), costs[prose...].map { $0[1] }, "chat costs untouched")
        XCTAssertEqual(ReplySetPair.guarded([[1, 2], [3, 0]], prose: 1, guard: 0), [[1, 2], [3, 0]], "no guard: the costs as measured")
        func fitPicks(_ perSet: [[Double]], balance: Float = 0, balanceFrom: Int = 0) -> [Int] {
            let rows = inputs.indices.map { t in [perSet[0][t], perSet[1][t]] }
            let scorer = SetChoiceFit.fit(inputs: inputs, costs: rows, l2: 0.0001, balance: balance, balanceFrom: balanceFrom, steps: 600, learningRate: 0.05)
            return SetChoiceFit.picks(scorer, inputs: inputs)
        }
        let plain = fitPicks(measured), withGuard = fitPicks(guarded)
        XCTAssertGreaterThan(ReplySetPair.share(plain[..<prose]), 0.3, "unguarded, prose runs the reply set where it is cheaper")
        XCTAssertEqual(ReplySetPair.share(withGuard[..<prose]), 0, "guarded, prose stays on the own set")
        let chatCheaper = (prose..<400).filter { costs[$0][1] < costs[$0][0] }
        XCTAssertGreaterThan(Double(chatCheaper.filter { withGuard[$0] == 1 }.count) / Double(chatCheaper.count), 0.9,
                             "guarded, chat still runs the reply set where it is cheaper")
        // A balance over chat positions only (as the pair step fits with a guard) leaves prose alone.
        let chatBalanced = fitPicks(guarded, balance: 1, balanceFrom: prose)
        XCTAssertEqual(ReplySetPair.share(chatBalanced[..<prose]), 0, "a chat-only balance keeps prose on the own set")
        XCTAssertGreaterThan(ReplySetPair.share(chatBalanced[prose...]), 0.3)
    }

    /// `buddy train reply-sets` end to end on a small scale, with the prose objective: the
    /// search's measure of the start set is the mean of its chat KL and of its KL on the training
    /// prose, the latter equal to an independent layer-set search's; the written module is
    /// strict at the budget, keeps its prompt sets, and its notes record the command.
    func testReplySetSearchWithTheProseObjective() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, routable = L - 2
        let dm = try TestModules.withScorers(model: m, seed: 31)
        // A low budget keeps the search's ~30 measurements cheap (few layers run).
        let budget = 0.1, k = LayerBudget.routableCount(budget: budget, layers: L)
        try dm.promptSets.set(Array(1...k), kept: k)
        let saved = try SavedModuleCopy(dm, model: m, tag: "reply-sets")
        defer { saved.remove() }
        let chat = saved.dir.appendingPathComponent("chat.jsonl").path
        try (#"{"question_id": "a", "category": "t", "turns": ["Name three colours."]}"# + "\n"
             + #"{"question_id": "b", "category": "t", "turns": ["What is rain?"]}"# + "\n").write(toFile: chat, atomically: true, encoding: .utf8)
        let text = saved.dir.appendingPathComponent("text.txt").path
        try String(try TestSupport.sharedText("wikitext2_valid.txt").prefix(12_000)).write(toFile: text, atomically: true, encoding: .utf8)

        var o = PromptSetSearch.Options(router: saved.path, chatData: chat, out: saved.dir.appendingPathComponent("out.json").path)
        o.part = .reply; o.split = .all; o.prompts = 1; o.replyTokens = 8; o.width = 1; o.budgets = [budget]; o.threads = 2
        var d = ReplySetPair.Data(text: text)
        d.textChunks = 1; d.validationSkipChunks = 1; d.validationChunks = 1; d.validationPrompts = 1; d.balanced = true
        o.pairData = d; o.proseObjective = true
        o.checkpoint = saved.dir.appendingPathComponent("checkpoint.json").path
        let outcome = try XCTUnwrap(try PromptSetSearch.run(o, model: m, report: .silent).first)

        let start = dm.weights.choices[k - 1].sets[0]
        XCTAssertEqual(outcome.start, start)
        let sums = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: o.checkpoint!))) as? [String: Any])?["sums"] as? [String: [Double]])
        let key = "k=\(k) set " + start.map(String.init).joined(separator: ",")
        let chatKL = try XCTUnwrap(sums[key]), proseKL = try XCTUnwrap(sums["prose " + key])
        // The prose KL of the start set, measured independently on the same chunk.
        let ids = try TrainingData.textTokens(text, model: m)
        let reference = LayerSetSearch(model: m, sequences: try TrainingData.textSequences(ids, chunks: 0..<1, length: 512, firstScored: 128, path: text))
        reference.standIns = try Routers.standIns(model: m)
        let expected = reference.positionKL(LayerBudget.mask(layers: L, chosen: Set(start)))
        XCTAssertEqual(proseKL[1], Double(expected.count))
        XCTAssertEqual(proseKL[0] / proseKL[1], expected.reduce(0, +) / Double(expected.count), accuracy: 1e-9)
        XCTAssertEqual(outcome.startKL, 0.5 * chatKL[0] / chatKL[1] + 0.5 * proseKL[0] / proseKL[1], accuracy: 1e-12)

        let written = try XCTUnwrap(RouterFile.load(path: o.out, model: m) as? DecisionModule)
        XCTAssertTrue(written.weights.choices[k - 1].sets.allSatisfy { $0.count == k && $0.allSatisfy { (1...routable).contains($0) } })
        XCTAssertEqual(written.promptSets, dm.promptSets)
        XCTAssertEqual(written.weights.choices[k - 2], dm.weights.choices[k - 2], "other budgets keep their choices")
        let notes = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: o.out))) as? [String: Any])?["notes"] as? String)
        XCTAssertTrue(notes.hasPrefix("test; then reply sets: buddy train reply-sets --router \(saved.path)"), notes)
        XCTAssertTrue(notes.contains("--balanced --prose-objective --out"), notes)
    }

    /// A search runs its conversations on a lane per thread and sums them in prompt order, so
    /// two lanes give one lane's measurements bit for bit, for prompt sets (the router deciding
    /// the reply row by row) and for reply sets alike.
    func testTwoLanesGiveOneLanesMeasurementsExactly() throws {
        let m = try TestSupport.model()
        let dm = try TestModules.withScorers(model: m, seed: 41)
        let budget = 0.1
        for part in [PromptSetSearch.SetPart.prompt, .reply] {
            var sums: [[String: [Double]]] = [], outcomes: [PromptSetSearch.Outcome] = []
            for threads in [1, 2] {
                let saved = try SavedModuleCopy(dm, model: m, tag: "lanes-\(part)-\(threads)")
                defer { saved.remove() }
                let chat = saved.dir.appendingPathComponent("chat.jsonl").path
                try ["Name three colours.", "What is rain?", "Say hello."].enumerated()
                    .map { #"{"question_id": "\#($0.offset)", "category": "t", "turns": ["\#($0.element)"]}"# }
                    .joined(separator: "\n").write(toFile: chat, atomically: true, encoding: .utf8)
                var o = PromptSetSearch.Options(router: saved.path, chatData: chat, out: saved.dir.appendingPathComponent("out.json").path)
                o.part = part; o.split = .all; o.prompts = 3; o.replyTokens = 8; o.width = 1; o.budgets = [budget]; o.threads = threads
                o.checkpoint = saved.dir.appendingPathComponent("checkpoint.json").path
                outcomes.append(try XCTUnwrap(try PromptSetSearch.run(o, model: m, report: .silent).first))
                let j = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: o.checkpoint!))) as? [String: Any]
                sums.append(try XCTUnwrap(j?["sums"] as? [String: [Double]]))
            }
            XCTAssertGreaterThan(sums[0].count, m.config.layers - 2, "\(part): one round measures every one-layer change")
            XCTAssertEqual(sums[0], sums[1], "\(part)")
            XCTAssertEqual(outcomes[0].routerKL, outcomes[1].routerKL, "\(part)")
            XCTAssertEqual(outcomes[0].start, outcomes[1].start, "\(part)")
            XCTAssertEqual(outcomes[0].best, outcomes[1].best, "\(part)")
        }
    }

    /// A prompt-set search keeps its checkpoint, so a later search of the same router file (as
    /// scripts/train_router.sh's steps 3-5 search the file step 2 wrote, with more rounds) finds
    /// its first round measured and ends exactly where a fresh search of the original ends.
    func testALaterSearchReusesTheFirstRoundsMeasurements() throws {
        let m = try TestSupport.model()
        let dm = try TestModules.withScorers(model: m, seed: 37)
        let budget = 0.1   // few layers run, so the ~60 measurements stay cheap
        let chained = try SavedModuleCopy(dm, model: m, tag: "prompt-sets-chained")
        let fresh = try SavedModuleCopy(dm, model: m, tag: "prompt-sets-fresh")
        defer { chained.remove(); fresh.remove() }
        let chat = chained.dir.appendingPathComponent("chat.jsonl").path
        try (#"{"question_id": "a", "category": "t", "turns": ["Name three colours."]}"# + "\n").write(toFile: chat, atomically: true, encoding: .utf8)
        func search(_ saved: SavedModuleCopy, rounds: Int, notes: @escaping (String) -> Void = { _ in }) throws -> PromptSetSearch.Outcome {
            var o = PromptSetSearch.Options(router: saved.path, chatData: chat, out: saved.path)
            o.split = .all; o.prompts = 1; o.replyTokens = 8; o.width = 1; o.budgets = [budget]; o.rounds = rounds; o.threads = 2
            return try XCTUnwrap(try PromptSetSearch.run(o, model: m, report: Reporter(line: { _ in }, note: notes, progress: { SilentProgress(total: $1) })).first)
        }
        func measured(_ saved: SavedModuleCopy) throws -> Int {
            let j = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: saved.path + ".prompt-sets.checkpoint.json"))) as? [String: Any]
            return try XCTUnwrap(j?["sums"] as? [String: [Double]]).count
        }

        // The chain's first file can be an older format (the shipped step 1 wrote version 5);
        // the search saves the latest, which must not make the next search start afresh.
        var older = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: chained.path))) as? [String: Any])
        older["version"] = RouterFile.decisionModuleVersion
        try JSONSerialization.data(withJSONObject: older).write(to: URL(fileURLWithPath: chained.path))
        let first = try search(chained, rounds: 1)
        let afterFirst = try measured(chained)
        XCTAssertGreaterThan(afterFirst, m.config.layers - 2, "one round measures every one-layer change")
        var notes: [String] = []
        let resumed = try search(chained, rounds: 2) { notes.append($0) }
        XCTAssertTrue(notes.contains("resuming: \(afterFirst) measurements from \(chained.path).prompt-sets.checkpoint.json"), "\(notes)")
        let direct = try search(fresh, rounds: 2)
        XCTAssertEqual(resumed.startKL, first.startKL)
        XCTAssertEqual(resumed.routerKL, direct.routerKL)
        XCTAssertEqual(resumed.startKL, direct.startKL)
        XCTAssertEqual(resumed.best, direct.best)
        XCTAssertEqual(resumed.bestKL, direct.bestKL)
        let a = try XCTUnwrap(RouterFile.load(path: chained.path, model: m) as? DecisionModule)
        let b = try XCTUnwrap(RouterFile.load(path: fresh.path, model: m) as? DecisionModule)
        XCTAssertEqual(a.promptSets, b.promptSets)
    }

    /// Prompt sets survive a round trip through a router file, for the Decision Module and for
    /// a static ranking; hostile entries are refused with an error naming the field; a version-5
    /// module (no prompt sets) still loads; and the evaluation's batching rules are unchanged.
    func testPromptSetsInRouterFiles() throws {
        let m = try TestSupport.model()
        let L = m.config.layers
        let dm = try TestModules.withScorers(model: m, seed: 5)
        try dm.promptSets.set(Array(1...22), kept: 22)
        try dm.promptSets.set(Array(3...22), kept: 20)
        let saved = try SavedModuleCopy(dm, model: m, tag: "prompt-sets")
        defer { saved.remove() }
        let back = try XCTUnwrap(RouterFile.load(path: saved.path, model: m) as? DecisionModule)
        XCTAssertEqual(back.promptSets, dm.promptSets)
        XCTAssertEqual(back.weights, dm.weights)

        let ranking = StaticRanking.dropLast(layers: L)
        try ranking.promptSets.set(Array(2...23), kept: 22)
        let rankPath = saved.dir.appendingPathComponent("k.json").path
        try RouterFile.save(ranking, model: m, notes: "t", to: rankPath)
        let rankBack = try XCTUnwrap(RouterFile.load(path: rankPath, model: m) as? StaticRanking)
        XCTAssertEqual(rankBack.promptSets.sets, [22: Array(2...23)])
        rankBack.budget = 0.8
        XCTAssertEqual(rankBack.promptMask(), LayerBudget.mask(layers: L, chosen: 2...23))
        XCTAssertEqual(rankBack.mask(budget: 0.8), ranking.mask(budget: 0.8), "decode steps still run the ranking's prefix")

        func refuses(_ edit: @escaping (inout [String: Any]) -> Void, _ contains: String, line: UInt = #line) throws {
            XCTAssertThrowsError(try RouterFile.load(path: try saved.edited(edit), model: m), line: line) { e in
                XCTAssertTrue("\(e)".contains(contains), "\(e)", line: line)
            }
        }
        try refuses({ $0["prompt_sets"] = [["kept": 22, "set": Array(1...21)]] }, "prompt_sets[0]: the set for k = 22 must hold 22 distinct routable layers")
        try refuses({ $0["prompt_sets"] = [["kept": 3, "set": [1, 2, 29]]] }, "distinct routable layers (1...28)")
        try refuses({ $0["prompt_sets"] = [["kept": 2, "set": [1, 2]], ["kept": 2, "set": [3, 4]]] }, "lists k = 2 twice")
        try refuses({ $0["prompt_sets"] = [["kept": 2]] }, "prompt_sets[0] needs \"kept\"")
        try refuses({ $0["prompt_sets"] = "all" }, "prompt_sets is not a list")
        try refuses({ $0["prompt_sets"] = [["kept": 0, "set": []]] }, "outside 1...28")
        // Version 5 (before prompt sets) is still read, without them.
        let v5 = try saved.edited { $0["version"] = 5; $0["prompt_sets"] = nil }
        let old = try XCTUnwrap(RouterFile.load(path: v5, model: m) as? DecisionModule)
        XCTAssertTrue(old.promptSets.isEmpty)
        // A reply teacher-forced in one batch is still per row: prompt sets do not change batching.
        XCTAssertTrue(Routers.canBatch(back, budget: 0.8))
    }

    /// A search of every budget with a set replaces the earlier record; a search of some budgets
    /// keeps it and follows it, replacing only an earlier follow-up over the same budgets.
    func testNotesRecordTheCommandsThatMadeTheSets() {
        var o = PromptSetSearch.Options(router: "sleb", chatData: "chat.jsonl", out: "routers/sleb-ranking.json")
        o.budgets = [0.8, 0.7]
        let first = PromptSetSearch.recordedNotes(old: "calibrated", oldKept: [], options: o, searchedKept: [22, 20], figures: "F1")
        let firstRecord = "prompt sets: buddy train prompt-sets --router sleb --chat-data chat.jsonl --prompts 40 --reply-tokens 64 --budgets 0.8,0.7 --out routers/sleb-ranking.json; F1 (chat KL, train split)"
        XCTAssertEqual(first, "calibrated; " + firstRecord)
        o.budgets = [0.8]; o.rounds = 4
        let second = PromptSetSearch.recordedNotes(old: first, oldKept: [22, 20], options: o, searchedKept: [22], figures: "F2")
        let secondRecord = "prompt sets: buddy train prompt-sets --router sleb --chat-data chat.jsonl --prompts 40 --reply-tokens 64 --budgets 0.8 --rounds 4 --out routers/sleb-ranking.json; F2 (chat KL, train split)"
        XCTAssertEqual(second, first + "; then " + secondRecord)
        let again = PromptSetSearch.recordedNotes(old: second, oldKept: [22, 20], options: o, searchedKept: [22], figures: "F3")
        XCTAssertEqual(again, first + "; then " + secondRecord.replacingOccurrences(of: "F2", with: "F3"), "a rerun over the same budgets replaces its own record")
        o.budgets = [0.8, 0.7]; o.rounds = 1
        XCTAssertEqual(PromptSetSearch.recordedNotes(old: again, oldKept: [22, 20], options: o, searchedKept: [22, 20], figures: "F4"),
                       "calibrated; " + firstRecord.replacingOccurrences(of: "F1", with: "F4"), "a search of every budget replaces both")

        // After a reply-set search its record and everything before it stay, in the order they
        // ran, even when the new search covers every budget; later prompt-set records over the
        // same budgets are still replaced.
        let reply = "reply sets: buddy train reply-sets --router sleb --budgets 0.5 --out routers/sleb-ranking.json; R"
        let withReply = second + "; then " + reply
        let afterReply = PromptSetSearch.recordedNotes(old: withReply, oldKept: [22, 20, 14], options: o, searchedKept: [22, 20, 14], figures: "F5")
        let fifthRecord = firstRecord.replacingOccurrences(of: "F1", with: "F5")
        XCTAssertEqual(afterReply, withReply + "; then " + fifthRecord)
        let rerun = PromptSetSearch.recordedNotes(old: afterReply, oldKept: [22, 20, 14], options: o, searchedKept: [22, 20, 14], figures: "F6")
        XCTAssertEqual(rerun, withReply + "; then " + firstRecord.replacingOccurrences(of: "F1", with: "F6"), "a rerun after the reply record replaces its own record")
        o.budgets = [0.8]; o.rounds = 4
        let narrower = PromptSetSearch.recordedNotes(old: rerun, oldKept: [22, 20, 14], options: o, searchedKept: [22], figures: "F7")
        XCTAssertEqual(narrower, rerun + "; then " + secondRecord.replacingOccurrences(of: "F2", with: "F7"), "other budgets' later records stay")
    }

    /// The shipped routers' prompt sets (the Decision Module's and the static baselines') run
    /// exactly k layers at every budget that has one, and each was searched on the train split
    /// by the commands its notes record.
    /// The search's start is the most frequent prompt decision; a tie goes to the mask that runs
    /// the earliest layers, whatever order the dictionary (seeded per process) lists them in.
    func testStartSetIsTheMostFrequentMaskWithADeterministicTieBreak() {
        let early: [Bool] = [true, true, true, false, true], late: [Bool] = [true, true, false, true, true]
        let rare: [Bool] = [true, false, true, true, true]
        XCTAssertEqual(PromptSetSearch.mostFrequent([late: 3, early: 2, rare: 1]), late)
        for _ in 0..<20 {
            var masks: [[Bool]: Int] = [:]
            for m in [rare, late, early].shuffled() { masks[m] = m == rare ? 1 : 2 }
            XCTAssertEqual(PromptSetSearch.mostFrequent(masks), early)
        }
        XCTAssertNil(PromptSetSearch.mostFrequent([:]))
    }

    func testShippedPromptSetsAreStrictAndReproducible() throws {
        let m = try TestSupport.model()
        let routable = m.config.layers - 2
        for name in ["buddy", "sleb", "shortgpt"] {
            let r = try XCTUnwrap(try Routers.make(name, model: m) as? PromptSetHolder, name)
            XCTAssertFalse(r.promptSets.isEmpty, "\(name) ships prompt sets")
            for (k, set) in r.promptSets.sets {
                XCTAssertEqual(set.count, k, name)
                XCTAssertTrue(set.allSatisfy { (1...routable).contains($0) }, name)
                r.budget = Double(k) / Double(routable)
                XCTAssertEqual(r.promptMask().map(Session.count), k + 2, "\(name) at k = \(k)")
            }
            let path = try XCTUnwrap(Routers.locate(name, model: m))
            let notes = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])?["notes"] as? String)
            // The first search (every budget), then each later search's record after the one before it.
            let command = "prompt sets: buddy train prompt-sets --router \(name) --chat-data ../shared/data/mt_bench_questions.jsonl "
            let first = try XCTUnwrap(notes.range(of: "; " + command), notes)
            let file = name == "buddy" ? "routers/buddy-router.json" : "routers/\(name)-ranking.json"
            var previous = first.upperBound
            for (budget, rounds) in [(0.8, 4), (0.7, 2), (0.5, 2)] {
                let b = String(format: "%.1f", budget), shown = String(format: "%.2f", budget)
                let record = notes.range(of: "; then " + command + "--prompts 40 --reply-tokens 64 --budgets \(b) --rounds \(rounds) --out \(file); \(shown): ",
                                         range: previous..<notes.endIndex)
                XCTAssertNotNil(record, "the \(b) sets come from a search of \(rounds) rounds, recorded after the earlier ones: \(notes)")
                previous = record?.upperBound ?? previous
            }
            XCTAssertFalse(notes.contains("/work/") || notes.contains(" /"), "the notes must not point outside the repository")
        }
    }
}

private extension Session {
    /// What the selector decides for `prompt` as a chunk, without prompt sets.
    func selectorPromptDecision(_ prompt: [Int32]) throws -> [Bool] {
        reset()
        try evaluate(prompt)
        return lastMask
    }
}

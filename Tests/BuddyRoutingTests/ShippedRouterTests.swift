import BuddyCore
import BuddyRouting
import BuddyTestSupport
import CAllocationCounter
import XCTest

/// The router and stand-ins users get by default (routers/ in the repository), under test.
final class ShippedRouterTests: XCTestCase {
    /// Every slider position: teacher-forcing a reply as one batch with one decision per row
    /// gives the same layer masks and the same logits, bit for bit, as decoding it token by token.
    func testShippedRouterBatchEqualsDecodeAtEverySliderPosition() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, vocab = m.config.vocabSize
        let standIns = try Routers.standIns(model: m)
        XCTAssertNotNil(standIns, "routers/\(StandInFile.defaultFileName) is missing")
        let prompt = m.tokenizer.encode("Question: why is the sky blue? Answer:", parseSpecial: false)
        let reply: [Int32] = m.tokenizer.encode(" Because sunlight is scattered by the air", parseSpecial: false)
        XCTAssertGreaterThanOrEqual(reply.count, 5)
        for slider in stride(from: 0.05, through: 1.0001, by: 0.05) {
            let budget = min(1, slider)
            let k = LayerBudget.routableCount(budget: budget, layers: L)
            func session() throws -> Session {
                let s = Session(model: m, capacity: 64, threads: 2, batchSize: 32)
                s.standIns = standIns
                s.selector = try Routers.make("buddy", model: m, budget: budget)
                return s
            }
            let decoded = try session(), batched = try session()
            try decoded.evaluate(prompt)
            var decodedMasks: [[Bool]] = []
            for t in reply {
                try decoded.step(t)
                decodedMasks.append(decoded.lastMask)
                XCTAssertEqual(Session.count(decoded.lastMask), k + 2, "budget \(budget): exactly k + 2 layers")
            }
            try batched.evaluate(prompt)
            try batched.evaluate(prompt + reply, as: .reply(oneDecisionPerToken: true))
            XCTAssertEqual(batched.lastMask, decodedMasks.last, "budget \(budget): last row's mask")
            let a = Array(UnsafeBufferPointer(start: decoded.decode.logits, count: vocab))
            let b = Array(UnsafeBufferPointer(start: batched.decode.logits, count: vocab))
            XCTAssertEqual(a, b, "budget \(budget): batched logits equal decoded logits")
            XCTAssertEqual(batched.layerTokenCount, (prompt.count + reply.count) * (k + 2), "budget \(budget): k + 2 layers for every token")
        }
    }

    /// `promptDepth = .full`: a prompt runs every layer (its logits and the reply's first token
    /// are the full model's, bit for bit), the reply still runs exactly k + 2 layers, and the
    /// router decides as it does after a prompt run at the budget (its inputs come from layer 0,
    /// which every token runs), while the reply's logits differ because the prompt's deeper
    /// K/V are now exact. A known reply fed back (teacher forcing) stays at the budget.
    func testPromptAtFullDepthRoutesOnlyTheReply() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, vocab = m.config.vocabSize
        let standIns = try Routers.standIns(model: m)
        let prompt = m.tokenizer.encode("Question: what is the capital of France? Answer:", parseSpecial: false)
        let reply = m.tokenizer.encode(" Paris, which is famous for", parseSpecial: false)
        func logits(_ s: Session) -> [Float] { Array(UnsafeBufferPointer(start: s.decode.logits, count: vocab)) }
        func session(budget: Double?, depth: PromptDepth) throws -> Session {
            let s = Session(model: m, capacity: 64, threads: 2, batchSize: 32)
            s.standIns = standIns
            s.promptDepth = depth
            if let budget { s.selector = try Routers.make("buddy", model: m, budget: budget) }
            return s
        }
        let full = try session(budget: nil, depth: .budget)
        try full.evaluate(prompt)
        let fullLogits = logits(full)
        for budget in [0.9, 0.5] {
            let k = LayerBudget.routableCount(budget: budget, layers: L)
            let wide = try session(budget: budget, depth: .full), narrow = try session(budget: budget, depth: .budget)
            try wide.evaluate(prompt)
            try narrow.evaluate(prompt)
            XCTAssertEqual(logits(wide), fullLogits, "\(budget): the prompt's logits are the full model's")
            XCTAssertEqual(wide.lastLayers.count, L, "\(budget): the prompt ran every layer")
            XCTAssertEqual(wide.layerTokenCount, prompt.count * L)
            XCTAssertEqual(Session.count(narrow.lastMask), k + 2, "\(budget): the budget's protocol is unchanged")
            XCTAssertNotEqual(logits(narrow), fullLogits)
            for t in reply {
                try wide.step(t)
                try narrow.step(t)
                XCTAssertEqual(Session.count(wide.lastMask), k + 2, "\(budget): the reply runs k + 2 layers")
                XCTAssertEqual(wide.lastMask, narrow.lastMask, "\(budget): the same decision either way")
            }
            XCTAssertNotEqual(logits(wide), logits(narrow), "\(budget): exact prompt K/V change the reply's logits")
            // The next message of a conversation runs at full depth as well; a fed-back reply does not.
            let before = wide.layerTokenCount
            let next = prompt + reply + m.tokenizer.encode(" Question: and of Spain?", parseSpecial: false)
            try wide.evaluate(next)
            XCTAssertEqual(wide.layerTokenCount - before, (next.count - prompt.count - reply.count) * L)
            let forced = try session(budget: budget, depth: .full)
            try forced.evaluate(prompt)
            try forced.evaluate(prompt + reply, as: .reply(oneDecisionPerToken: true))
            XCTAssertEqual(forced.layerTokenCount, prompt.count * L + reply.count * (k + 2), "\(budget): teacher forcing stays at the budget")
        }
    }

    /// The shipped router is the current format, says how to reproduce it from the repository
    /// alone, and is refused for another model (Gemma 3) with an error that says so.
    func testShippedRouterIsTiedToItsModelAndReproducible() throws {
        let m = try TestSupport.model()
        let path = try XCTUnwrap(Routers.locate("buddy", model: m))
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        XCTAssertEqual(j["version"] as? Int, RouterFile.version)
        let notes = try XCTUnwrap(j["notes"] as? String)
        XCTAssertTrue(notes.hasPrefix("buddy train router "), notes)
        XCTAssertFalse(notes.contains("/work/") || notes.contains(" /"), "the notes must not point outside the repository")
        // The stand-ins it was trained with are a file in the repository, for this model.
        let command = notes.split(separator: ";")[0].split(separator: " ").map(String.init)
        if let i = command.firstIndex(of: "--stand-ins") {
            let value = try XCTUnwrap(command.dropFirst(i + 1).first, "--stand-ins without a value in the router's notes")
            if !["on", "off", "auto"].contains(value) {
                let file = TestSupport.root.appendingPathComponent(value).path
                XCTAssertTrue(FileManager.default.fileExists(atPath: file), "\(value), named in the router's notes, is not in the repository")
                XCTAssertNotNil(try Routers.standIns(model: m, path: file))
            }
        }
        let module = try XCTUnwrap(try Routers.make("buddy", model: m) as? DecisionModule)
        XCTAssertEqual(module.weights.choices.count, m.config.layers - 2)
        // The candidate sets stand-in fitting learns from (`--scenarios buddy`): per budget every
        // set the module may pick, each running exactly k + 2 layers, the fixed set where there is one.
        for budget in stride(from: 0.5, through: 0.95, by: 0.05) {
            let k = LayerBudget.routableCount(budget: budget, layers: m.config.layers)
            let masks = module.candidateMasks(budget: budget)
            XCTAssertEqual(masks.count, module.choice(budget: budget).candidates, "\(budget)")
            XCTAssertEqual(Set(masks).count, masks.count, "\(budget): candidate sets repeat")
            for mask in masks {
                XCTAssertEqual(mask.filter { $0 }.count, k + 2, "\(budget)")
                XCTAssertTrue(mask.first! && mask.last!)
            }
            if let fixed = module.fixedMask(budget: budget) { XCTAssertEqual(masks, [fixed]) }
        }
        let gemma = try LanguageModel(path: GemmaSupport.modelPath)
        XCTAssertThrowsError(try RouterFile.load(path: path, model: gemma)) { e in
            XCTAssertTrue("\(e)".contains("was made for another model"), "\(e)")
        }
    }

    /// scripts/train_router.sh, the one command that reproduces the shipped router, runs the
    /// commands the file's notes record, in their order and word for word (step 1 adds the
    /// `--out` that the training command's own notes leave out).
    func testTrainRouterScriptRunsTheChainTheShippedNotesRecord() throws {
        let m = try TestSupport.model()
        let path = try XCTUnwrap(Routers.locate("buddy", model: m))
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        let notes = try XCTUnwrap(j["notes"] as? String)
        // Every recorded command starts "buddy train " and ends at the next "; ".
        var recorded: [String] = []
        var rest = Substring(notes)
        while let start = rest.range(of: "buddy train ") {
            let tail = rest[start.lowerBound...]
            let end = tail.range(of: "; ")?.lowerBound ?? tail.endIndex
            recorded.append(String(tail[..<end]).trimmingCharacters(in: .whitespaces))
            rest = tail[end...]
        }
        XCTAssertEqual(recorded.count, 6, notes)
        let script = try String(contentsOf: TestSupport.root.appendingPathComponent("scripts/train_router.sh"), encoding: .utf8)
        let steps = script.split(separator: "\n").filter { $0.hasPrefix("step ") && $0.contains("\"$buddy\" train ") }.map { line in
            String(line[line.range(of: "\"$buddy\" ")!.upperBound...]).replacingOccurrences(of: "'", with: "")
        }
        XCTAssertEqual(steps.count, recorded.count)
        for (i, (step, command)) in zip(steps, recorded).enumerated() {
            let out = " --out routers/buddy-router.json"
            XCTAssertTrue("buddy " + step == command || "buddy " + step == command + out,
                          "step \(i + 1) of scripts/train_router.sh is not the notes' command:\n\(step)\n\(command)")
        }
    }

    /// The shipped Budget Predictor runs the share rule between 0.8 and full depth, says how it
    /// was made without pointing outside the repository, and on real prompts picks one of the two;
    /// a request predicted above every recent one goes to full depth.
    func testShippedPredictorRunsTheShareRule() throws {
        let m = try TestSupport.model()
        let p = try Routers.predictor(model: m)
        XCTAssertEqual(p.choices, [0.8])
        XCTAssertEqual(p.fullDepthShare, 0.25)
        XCTAssertEqual(p.recentSeed.count, AutoBudget.window)
        let path = try XCTUnwrap(Routers.locate("budget-predictor", model: m))
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        let notes = try XCTUnwrap(j["notes"] as? String)
        XCTAssertTrue(notes.hasPrefix("buddy train predictor: 330 prompts"), notes)
        XCTAssertFalse(notes.contains("/work/") || notes.contains(" /"), "the notes must not point outside the repository")
        let auto = try AutoBudget(predictor: p, rule: .resolve(tolerance: nil, share: nil, predictor: p))
        XCTAssertEqual(auto.rule, .share(0.25))
        let session = Session(model: m, capacity: 256, threads: 2)
        var chosen: [Double] = []
        for text in ["Why is the sky blue?", "Write a haiku about autumn leaves.", "List three prime numbers.", "Summarise: the cat sat on the mat."] {
            chosen.append(try auto.chooseBudget(for: m.tokenizer.encode(text, parseSpecial: false), in: session))
            XCTAssertEqual(session.cache.count, 0, "choosing runs layer 0 only and keeps nothing")
        }
        XCTAssertTrue(chosen.allSatisfy { $0 == 0.8 || $0 == 1 }, "\(chosen)")
        XCTAssertEqual(auto.choose(predictedAtLowestChoice: 100), 1)
        XCTAssertEqual(auto.choose(predictedAtLowestChoice: 0), 0.8)
    }

    /// Gemma 3's router (routers/gemma-3-270m-q4_k_m/, made by the same command) loads for Gemma,
    /// beside Gemma's own stand-ins (refused for SmolLM2), says how it was made, runs exactly
    /// k + 2 of its 18 layers in prefill and decode, and routes a batch as it routes token by token.
    func testGemmaRouterIsStrict() throws {
        let gemma = try LanguageModel(path: GemmaSupport.modelPath)
        let router = try XCTUnwrap(try Routers.make("buddy", model: gemma) as? DecisionModule)
        XCTAssertEqual(router.weights.choices.count, 16)
        // Gemma has its own directory, so the default model's files in routers/ are not its own:
        // its own stand-ins (never a note that SmolLM2's do not fit), no budget predictor.
        XCTAssertTrue(try XCTUnwrap(Routers.locate("stand-ins", model: gemma)).hasSuffix("routers/gemma-3-270m-q4_k_m/stand-ins.bin"))
        XCTAssertNil(Routers.locate("budget-predictor", model: gemma))
        let auto = try Routers.autoStandIns(model: gemma)
        let standIns = try XCTUnwrap(auto.standIns); XCTAssertNil(auto.mismatch)
        XCTAssertEqual(standIns.layers.count, gemma.config.layers)
        XCTAssertTrue(standIns.notes.hasPrefix("buddy calibrate stand-ins --model models/gemma-3-270m-q4_k_m.gguf "), standIns.notes)
        XCTAssertNil(standIns.notes.range(of: #"(^|\s)(/\S|\.\./)"#, options: .regularExpression), "the notes must not point outside the repository")
        XCTAssertThrowsError(try Routers.standIns(model: try TestSupport.model(), path: Routers.locate("stand-ins", model: gemma))) { e in
            XCTAssertTrue("\(e)".contains("another model"), "\(e)")
        }
        XCTAssertTrue(try XCTUnwrap(Routers.locate("sleb", model: gemma)).hasSuffix("routers/gemma-3-270m-q4_k_m/sleb-ranking.json"))
        // Reproducible from the repository: its notes give the whole command, model included.
        let path = try XCTUnwrap(Routers.locate("buddy", model: gemma))
        let notes = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])["notes"] as? String
        XCTAssertTrue(notes?.hasPrefix("buddy train router --model models/gemma-3-270m-q4_k_m.gguf ") == true, notes ?? "no notes")
        XCTAssertFalse(notes?.contains("/work/") == true || notes?.contains(" /") == true, "the notes must not point outside the repository")
        let s = Session(model: gemma, capacity: 32, threads: 2, batchSize: 8)
        s.selector = router
        let prompt = gemma.tokenizer.encode("The capital of France is", parseSpecial: false)
        for budget in [0.9, 0.7, 0.5] {
            router.budget = budget
            s.reset(); router.resetContext()
            let k = LayerBudget.routableCount(budget: budget, layers: 18)
            try s.evaluate(prompt)
            XCTAssertEqual(s.lastLayers.count, k + 2, "prefill at \(budget)")
            try s.step(Sampler.argmax(s.decode.logits, count: gemma.config.vocabSize))
            XCTAssertEqual(s.lastLayers.count, k + 2, "decode at \(budget)")
            XCTAssertEqual(s.lastLayers.first, 0); XCTAssertEqual(s.lastLayers.last, 17)

            // Its per-token choices (scorers at 0.9 and 0.5) are the same whether a reply is
            // decoded token by token or teacher-forced as one batch, one decision per row.
            let reply = gemma.tokenizer.encode(" Paris, the city of light", parseSpecial: false)
            let decoded = Session(model: gemma, capacity: 32, threads: 2, batchSize: 16)
            let batched = Session(model: gemma, capacity: 32, threads: 2, batchSize: 16)
            for session in [decoded, batched] { session.selector = try Routers.make("buddy", model: gemma, budget: budget) }
            try decoded.evaluate(prompt)
            for t in reply { try decoded.step(t) }
            try batched.evaluate(prompt)   // the prompt as one chunk, as `decoded` ran it
            try batched.evaluate(prompt + reply, as: .reply(oneDecisionPerToken: true))
            XCTAssertEqual(batched.lastMask, decoded.lastMask, "last row's mask at \(budget)")
            let vocab = gemma.config.vocabSize
            XCTAssertEqual(Array(UnsafeBufferPointer(start: batched.decode.logits, count: vocab)),
                           Array(UnsafeBufferPointer(start: decoded.decode.logits, count: vocab)), "batched logits equal decoded logits at \(budget)")
        }
    }

    /// A decode step (the shipped router deciding, the layers it picks, stand-ins for the
    /// rest, the logits, from the screened head at 0.5 as the product reads it) allocates
    /// nothing on the heap, on any thread.
    func testDecodeStepAllocatesNothing() throws {
        guard bac_available() != 0 else { throw XCTSkip("allocation counting needs Linux/glibc") }
        // The counter itself sees an allocation.
        bac_start()
        let probe = [Int](repeating: 1, count: Int.random(in: 100...200))
        XCTAssertGreaterThan(bac_stop(), 0, "the counter must see an allocation (\(probe.count))")
        let m = try TestSupport.model()
        let vocab = m.config.vocabSize
        for (name, budget) in [("buddy", 1.0), ("buddy", 0.7), ("buddy", 0.5), ("sleb", 0.7)] {
            let s = Session(model: m, capacity: 128, threads: 2, batchSize: 16)
            s.standIns = try Routers.standIns(model: m)
            s.head = .standard
            s.selector = try Routers.make(name, model: m, budget: budget)
            try s.evaluate(m.tokenizer.encode("Once upon a time", parseSpecial: false))
            var token = Sampler.argmax(s.decode.logits, count: vocab)
            for _ in 0..<3 { try s.step(token); token = Sampler.argmax(s.decode.logits, count: vocab) }   // warm up
            bac_start()
            for _ in 0..<8 { try s.step(token); token = Sampler.argmax(s.decode.logits, count: vocab) }
            let allocations = bac_stop()
            XCTAssertEqual(allocations, 0, "\(name) at \(budget): heap allocations in 8 decode steps")
        }
    }

    /// A decode step that catches up a prompt's deferred K/V (as one batch, from 8 positions
    /// on) allocates nothing either: a prompt at the budget, then a token that runs every layer.
    func testCatchingUpDeferredKVAllocatesNothing() throws {
        guard bac_available() != 0 else { throw XCTSkip("allocation counting needs Linux/glibc") }
        let m = try TestSupport.model()
        let c = m.config, pool = ThreadPool.shared(threads: 2)
        let b = BatchState(config: c, maxTokens: 16, capacity: 64, pool: pool)
        let s = DecodeState(config: c, capacity: 64, pool: pool)
        s.catchUpBatch = b
        let cache = KVCache(layers: c.layers, capacity: 64, kvDim: c.kvDim, deferDim: c.dim)
        let tokens = m.tokenizer.encode("Rain fell on the roofs of the town all through the night, and in the morning the streets shone", parseSpecial: false)
        XCTAssertGreaterThan(tokens.count, 18)
        let skipping = (0..<c.layers).map { ![3, 9, 14].contains($0) }, all = m.transformer.fullDepthMask
        m.transformer.routedForward(tokens[0..<16], start: 0, b, cache, routing: .fixed(skipping), policy: .fill)
        m.transformer.routedForward(token: tokens[16], pos: 16, s, cache, routing: .fixed(skipping), policy: .fill)
        bac_start()
        m.transformer.routedForward(token: tokens[17], pos: 17, s, cache, routing: .fixed(all), policy: .fill)
        XCTAssertEqual(bac_stop(), 0, "heap allocations in a step that catches up 17 deferred positions of three layers")
    }
}

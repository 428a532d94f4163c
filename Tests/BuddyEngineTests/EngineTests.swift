import BuddyCore
import BuddyEngine
import BuddyRouting
import BuddyTestSupport
import Foundation
import XCTest

/// Collects events; lets a test react to them on the engine queue.
final class Recorder: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [EngineEvent] = []
    private var handler: ((EngineEvent) -> Void)?
    private weak var engineRef: ChatEngine?
    /// Set from the test thread while the engine queue may be posting: guarded by the lock
    /// (ThreadSanitizer caught the unguarded version).
    var onEvent: ((EngineEvent) -> Void)? {
        get { lock.lock(); defer { lock.unlock() }; return handler }
        set { lock.lock(); handler = newValue; lock.unlock() }
    }
    var engine: ChatEngine? {
        get { lock.lock(); defer { lock.unlock() }; return engineRef }
        set { lock.lock(); engineRef = newValue; lock.unlock() }
    }

    func post(_ e: EngineEvent) {
        lock.lock(); list.append(e); let f = handler; lock.unlock()
        f?(e)
    }
    var events: [EngineEvent] { lock.lock(); defer { lock.unlock() }; return list }
    func clear() { lock.lock(); list.removeAll(); lock.unlock() }

    var tokens: [(String, StepInfo)] {
        events.compactMap { if case let .token(t, s) = $0, !s.layers.isEmpty { return (t, s) }; return nil }
    }
    var done: ReplyRecord? {
        for e in events { if case let .done(r) = e { return r } }
        return nil
    }
    var notices: [String] { events.compactMap { if case let .notice(s) = $0 { return s }; return nil } }
    var errors: [String] { events.compactMap { if case let .error(s) = $0 { return s }; return nil } }
}

final class EngineTests: XCTestCase {
    /// Steering off unless asked: most tests here count the budget's exact k per step.
    func makeEngine(_ rec: Recorder, router: String = "even", maxTokens: Int = 10, fallBack: Bool = false, steering: Bool = false) throws -> ChatEngine {
        var o = EngineOptions()
        o.steering = steering
        o.router = router
        o.fallBackToEven = fallBack
        o.maxTokens = maxTokens
        o.context = 512
        o.sampling = .greedy
        let e = try ChatEngine(model: try TestSupport.model(), options: o, sink: { rec.post($0) })
        rec.engine = e
        return e
    }

    func name(_ e: EngineEvent) -> String {
        switch e {
        case .ready: return "ready"
        case .budget: return "budget"
        case .auto: return "auto"
        case .router: return "router"
        case .notice: return "notice"
        case .replyStarted: return "started"
        case .token: return "token"
        case .stats: return "stats"
        case .done: return "done"
        case .error: return "error"
        case .systemPrompt: return "system"
        case .conversationReset: return "reset"
        case .saved: return "saved"
        case .loaded: return "loaded"
        }
    }

    func testEventOrderAndLayersPerStep() throws {
        let rec = Recorder()
        let engine = try makeEngine(rec)
        engine.send(.send("Name three colours."))
        engine.drain()
        let names = rec.events.map(name)
        XCTAssertEqual(Array(names.prefix(3)), ["ready", "budget", "started"], "\(names)")
        XCTAssertEqual(names.last, "done")
        XCTAssertEqual(names.filter { $0 == "done" }.count, 1)
        // Every token is followed by its stats before the next token.
        let body = names.dropFirst(3).dropLast()
        XCTAssertTrue(body.allSatisfy { $0 == "token" || $0 == "stats" }, "\(body)")
        let toks = rec.tokens
        XCTAssertGreaterThan(toks.count, 0)
        XCTAssertEqual(toks.map(\.1.step), Array(0..<toks.count))
        let L = engine.layers
        for (_, s) in toks {
            XCTAssertEqual(s.layers.count, L, "budget 1 runs every layer")
            XCTAssertEqual(s.k, L - 2)
            XCTAssertEqual(s.layers.first, 0)
            XCTAssertEqual(s.layers.last, L - 1)
        }
        let r = try XCTUnwrap(rec.done)
        XCTAssertTrue(r.text.hasPrefix(toks.map(\.0).joined()))
        XCTAssertEqual(r.steps, toks.count)
        XCTAssertEqual(r.budgets, [1])
        XCTAssertEqual(r.layerUsage.count, L)
        XCTAssertEqual(r.layerUsage[0], toks.count)
        let stats = rec.events.compactMap { if case let .stats(s) = $0 { return s }; return nil }
        XCTAssertEqual(stats.last?.contextSize, 512)
        XCTAssertGreaterThan(stats.last?.contextUsed ?? 0, 10)
    }

    /// The chat runs a message at full depth by default, so the reply's first token (predicted
    /// by the message's last position) shows every layer and the rest run the budget; with
    /// `promptDepth = .budget` the message runs at the budget too.
    func testMessagesRunAtFullDepthByDefault() throws {
        for depth in [PromptDepth.full, .budget] {
            let rec = Recorder()
            var o = EngineOptions()
            XCTAssertEqual(o.promptDepth, .full)
            o.steering = false   // exact k per step
            o.router = "even"; o.fallBackToEven = false; o.maxTokens = 4; o.context = 512; o.sampling = .greedy
            o.budget = 0.5
            o.promptDepth = depth
            let engine = try ChatEngine(model: try TestSupport.model(), options: o, sink: { rec.post($0) })
            engine.send(.send("Count from one to ten in words."))
            engine.drain()
            let L = engine.layers, k = LayerBudget.routableCount(budget: 0.5, layers: L)
            let toks = rec.tokens
            XCTAssertGreaterThanOrEqual(toks.count, 2)
            XCTAssertEqual(toks[0].1.layers.count, depth == .full ? L : k + 2, "\(depth): the first token comes from the message's last position")
            for (_, s) in toks.dropFirst() { XCTAssertEqual(s.layers.count, k + 2, "\(depth): step \(s.step)") }
        }
    }

    /// A new conversation is routed from its own context: after a short exchange and a reset, the
    /// reply to a longer message (which runs at full depth, unseen by the router) runs exactly
    /// the layers a fresh engine's reply to it runs. Before the fix the Decision Module kept the
    /// short exchange's positions in its pooled context, and the replies differed.
    func testANewConversationIsRoutedFromItsOwnContext() throws {
        func engine(_ rec: Recorder) throws -> ChatEngine {
            var o = EngineOptions()
            o.steering = false; o.router = "buddy"; o.fallBackToEven = false
            o.maxTokens = 16; o.context = 512; o.sampling = .greedy; o.budget = 0.5
            return try ChatEngine(model: try TestSupport.model(), options: o, sink: { rec.post($0) })
        }
        let message = "Describe, in a few sentences, how a river carves a valley over thousands of years, and why the shape of the valley tells us about the rock beneath it."
        let fresh = Recorder()
        let first = try engine(fresh)
        first.send(.send(message))
        first.drain()
        let reused = Recorder()
        let second = try engine(reused)
        second.send(.send("Hi."))
        second.drain()
        second.send(.reset)
        second.drain()
        reused.clear()
        second.send(.send(message))
        second.drain()
        XCTAssertGreaterThan(fresh.tokens.count, 4)
        XCTAssertEqual(reused.tokens.map(\.1.layers), fresh.tokens.map(\.1.layers))
        XCTAssertEqual(reused.tokens.map(\.0), fresh.tokens.map(\.0))
    }

    /// By default the engine steers the router along the reply (`BudgetSteering.onByDefault`,
    /// by the reply's first sentence, sentence ends and entropy): the reply's record names the
    /// steered router; at 0.5 (below two thirds of the layers, no lead) a step whose input token
    /// ends a sentence runs every routable layer, and every other step after the first runs
    /// k + 3 or k − 1 (down to k − 4 while the sentence ends are paid back).
    func testTheChatSteersByDefault() throws {
        XCTAssertTrue(EngineOptions().steering)
        let (rec, k, routable) = try greedySteeredReply("Tell me about the history of Rome.", budget: 0.5, maxTokens: 40)
        XCTAssertEqual(rec.done?.router, "sleb" + BudgetSteering.productSignal.suffix)
        XCTAssertEqual(BudgetSteering.productSignal, .lead)
        let texts = rec.tokens.map(\.0)
        let steps = rec.tokens.dropFirst().map { $0.1.layers.count - 2 }
        XCTAssertGreaterThanOrEqual(steps.count, 12, "the reply ended too early to see the steering")
        var sentenceEnds = 0
        for (i, n) in steps.enumerated() {
            // Step i + 1 reads the token shown at step i.
            if LanguageModel.endsSentence(Array(texts[i].utf8)) {
                sentenceEnds += 1
                XCTAssertEqual(n, routable, "step \(i + 1) follows \(texts[i].debugDescription)")
            } else {
                XCTAssertTrue(n == k + 3 || (k - 4...k - 1).contains(n), "step \(i + 1) ran \(n) routable layers, k = \(k)")
            }
        }
        XCTAssertGreaterThan(sentenceEnds, 0, "the reply has a sentence end")
    }

    /// At 0.7 (k at least two thirds of the routable layers) the chat runs the reply's first
    /// sentence at every layer: each decode step up to and including the one that reads the
    /// first sentence end (at most `BudgetSteering.leadLimit` steps of lead) runs every routable
    /// layer, and the reply's later steps pay it back to about k.
    func testTheChatRunsTheReplysFirstSentenceAtEveryLayer() throws {
        let (rec, k, routable) = try greedySteeredReply("What is the capital of France?", budget: 0.7, maxTokens: 64)
        XCTAssertGreaterThanOrEqual(3 * k, 2 * routable)
        let texts = rec.tokens.map(\.0)
        let steps = rec.tokens.dropFirst().map { $0.1.layers.count - 2 }
        // Step i + 1 reads the token shown at step i; the lead lasts through the step that reads the first sentence end.
        guard let firstEnd = texts.firstIndex(where: { LanguageModel.endsSentence(Array($0.utf8)) }) else {
            return XCTFail("the reply has no sentence end: \(texts.joined())")
        }
        let lead = min(firstEnd + 1, BudgetSteering.leadLimit)
        XCTAssertGreaterThan(lead, 3, "the first sentence is longer than three tokens: \(texts.joined())")
        XCTAssertLessThan(lead, steps.count, "the reply goes on after its first sentence")
        for i in 0..<lead { XCTAssertEqual(steps[i], routable, "step \(i + 1) is in the first sentence: \(texts.joined())") }
        // After it only a step that reads a sentence end runs every layer; the others pay back.
        for i in lead..<steps.count where !LanguageModel.endsSentence(Array(texts[i].utf8)) {
            XCTAssertLessThan(steps[i], routable, "step \(i + 1) follows the first sentence: \(texts.joined())")
        }
    }

    /// One greedy reply to `message` from the engine with its default steering around SLEB's set
    /// at `budget`; with k and the routable layers at that budget.
    private func greedySteeredReply(_ message: String, budget: Double, maxTokens: Int) throws -> (Recorder, k: Int, routable: Int) {
        let rec = Recorder()
        var o = EngineOptions()
        o.router = "sleb"; o.fallBackToEven = false; o.maxTokens = maxTokens; o.context = 512; o.sampling = .greedy
        o.budget = budget
        let engine = try ChatEngine(model: try TestSupport.model(), options: o, sink: { rec.post($0) })
        engine.send(.send(message))
        engine.drain()
        return (rec, LayerBudget.routableCount(budget: budget, layers: engine.layers), LayerBudget.routable(layers: engine.layers))
    }

    func testBudgetChangeTakesEffectAtTheNextDecodeStep() throws {
        let rec = Recorder()
        let engine = try makeEngine(rec, maxTokens: 8)
        rec.onEvent = { e in
            if case let .token(_, s) = e, s.step == 2 { rec.engine?.send(.setBudget(0.5)) }
        }
        engine.send(.send("Count from one to twenty in words."))
        engine.drain()
        let toks = rec.tokens
        XCTAssertGreaterThanOrEqual(toks.count, 5, "the reply ended too early to see the change")
        let L = engine.layers
        let kHalf = LayerBudget.routableCount(budget: 0.5, layers: L)
        for (_, s) in toks {
            if s.step <= 2 {
                XCTAssertEqual(s.layers.count, L, "step \(s.step) ran before the change")
            } else {
                XCTAssertEqual(s.layers.count, kHalf + 2, "step \(s.step) should run k=\(kHalf) routable layers")
                XCTAssertEqual(s.k, kHalf)
                XCTAssertEqual(s.budget, 0.5)
            }
        }
        // The new budget is announced between step 2 and step 3.
        let names = rec.events.map(name)
        let tokenIdx = names.indices.filter { names[$0] == "token" }
        let budgetIdx = names.lastIndex(of: "budget")!
        XCTAssertTrue(budgetIdx > tokenIdx[2] && budgetIdx < tokenIdx[3], "\(names)")
        XCTAssertEqual(rec.done?.budgets, [1, 0.5])
    }

    func testStopKeepsThePartialReplyAndSaveLoadRoundTrip() throws {
        let rec = Recorder()
        let engine = try makeEngine(rec, maxTokens: 200)
        rec.onEvent = { e in
            if case let .token(_, s) = e, s.step == 3 { rec.engine?.send(.stop) }
        }
        engine.send(.send("Write a long story about a dragon."))
        engine.drain()
        let r = try XCTUnwrap(rec.done)
        XCTAssertEqual(r.stopReason, .cancelled)
        XCTAssertEqual(r.steps, 4, "stops at the next decode step")
        XCTAssertEqual(r.text, rec.tokens.map(\.0).joined())

        // The partial reply is part of the conversation: a save shows it.
        let dir = try TestSupport.scratchDirectory("engine")
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("chat.json").path
        try Data("old".utf8).write(to: URL(fileURLWithPath: path))
        engine.send(.save(path: path))
        engine.drain()
        let f = try ChatFile.read(path)
        XCTAssertEqual(f.messages.map(\.role), [.user, .assistant])
        XCTAssertEqual(f.messages[1].content, r.text)
        XCTAssertEqual(f.messages[1].record?.stopReason, .cancelled)
        XCTAssertEqual(f.messages[1].record?.budgets, [1])
        XCTAssertEqual(f.messages[1].record?.steps, 4)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path)
        XCTAssertEqual(leftovers, ["chat.json"], "no temporary file left behind")

        // A new reply after a stop starts clean; loading restores the saved conversation.
        rec.onEvent = nil
        rec.clear()
        engine.send(.reset)
        engine.send(.load(path: path))
        engine.drain()
        let loaded = rec.events.compactMap { if case let .loaded(_, m, recs) = $0 { return (m, recs) }; return nil }
        XCTAssertEqual(loaded.first?.0.count, 2)
        XCTAssertEqual(loaded.first?.1[1]?.steps, 4)
        engine.send(.load(path: dir.appendingPathComponent("missing.json").path))
        engine.drain()
        XCTAssertEqual(rec.errors.count, 1)
    }

    func testStopBeforeTheFirstTokenStillEndsTheReply() throws {
        let rec = Recorder()
        let engine = try makeEngine(rec, maxTokens: 50)
        engine.send(.send("Hello!"))
        engine.send(.stop)
        engine.drain()
        let r = try XCTUnwrap(rec.done, "a stopped reply still ends with done")
        XCTAssertEqual(r.stopReason, .cancelled)
        XCTAssertEqual(r.steps, 0)
        // And the next message is answered normally.
        rec.clear()
        engine.send(.send("Hello again!"))
        engine.drain()
        XCTAssertNotEqual(rec.done?.stopReason, .cancelled)
        XCTAssertGreaterThan(rec.tokens.count, 0)
    }

    func testRouterFallbackAutoAndErrors() throws {
        let rec = Recorder()
        XCTAssertThrowsError(try makeEngine(rec, router: "no-such-router", fallBack: false))
        let engine = try makeEngine(rec, router: "no-such-router", fallBack: true)
        engine.send(.setAuto(true))
        engine.send(.setRouter("also-missing"))
        engine.send(.setRouter("last"))
        engine.send(.setBudget(2))
        engine.drain()
        // Falls back to the best static ranking shipped in routers/ (sleb, else shortgpt).
        XCTAssertTrue(rec.notices.contains { $0.contains("router 'no-such-router' unavailable (unknown router") && ($0.hasSuffix("using the static sleb ranking") || $0.hasSuffix("using the static shortgpt ranking")) },
                      "\(rec.notices)")
        // The shipped budget predictor switches auto on.
        XCTAssertTrue(rec.events.contains { if case .auto(true) = $0 { return true }; return false }, "\(rec.events.map(name))")
        XCTAssertEqual(rec.errors.count, 1)
        XCTAssertTrue(rec.events.contains { if case .router("last") = $0 { return true }; return false })
        // Budgets are clamped to (0, 1]: 2 is 1, which is already in force, so no new event.
        let budgets = rec.events.compactMap { if case let .budget(b, _, _) = $0 { return b }; return nil }
        XCTAssertEqual(budgets, [1])
    }

    /// The engine clamps with `Budget.clamp`, the clamp the slider and /budget use: below the
    /// range is the smallest budget (one routable layer here), not a number is the full model.
    func testBudgetsAreClampedByTheOneClamp() throws {
        let rec = Recorder()
        let engine = try makeEngine(rec)
        engine.send(.setBudget(0.001))
        engine.drain()
        engine.send(.setBudget(.nan))
        engine.drain()
        engine.send(.setBudget(-3))
        engine.drain()
        let announced = rec.events.compactMap { if case let .budget(b, k, _) = $0 { return [b, Double(k)] }; return nil }
        XCTAssertEqual(announced, [[1, Double(engine.routable)], [Budget.minimum, 1], [1, Double(engine.routable)], [Budget.minimum, 1]])
        XCTAssertEqual(Budget.clamp(0.001), Budget.minimum)
    }

    /// An engine on the sleb ranking with the shipped budget predictor switched on (checked),
    /// and the recorder cleared.
    func makeAutoEngine(_ rec: Recorder, maxTokens: Int) throws -> ChatEngine {
        let engine = try makeEngine(rec, router: "sleb", maxTokens: maxTokens)
        engine.send(.setAuto(true))
        engine.drain()
        XCTAssertTrue(rec.events.contains { if case .auto(true) = $0 { return true }; return false }, "\(rec.events.map(name))")
        rec.clear()
        return engine
    }

    /// A budget set by hand ends the automatic budget (the engine owns the rule, so the
    /// slider, /budget in the TUI and /budget in line mode need not repeat it), and the next
    /// message runs under that budget instead of a predicted one.
    func testBudgetSetByHandEndsTheAutomaticBudget() throws {
        let rec = Recorder()
        let engine = try makeAutoEngine(rec, maxTokens: 4)
        engine.send(.setBudget(0.5))
        engine.drain()
        XCTAssertEqual(rec.events.map(name), ["budget", "auto"])
        guard case .auto(false)? = rec.events.last else { return XCTFail("auto should be switched off") }
        engine.send(.send("Say hello."))
        engine.drain()
        XCTAssertEqual(rec.done?.budgets, [0.5])
        // Without auto, a budget set by hand says nothing about auto.
        rec.clear()
        engine.send(.setBudget(0.6))
        engine.drain()
        XCTAssertEqual(rec.events.map(name), ["budget"])
    }

    /// Auto: the budget predicted for the prompt is announced before the first token and
    /// every decode step after it runs exactly its k layers; moving the slider overrides it mid-reply.
    /// Without a predictor file auto stays off with a notice.
    func testAutoBudgetFollowsThePredictor() throws {
        let rec = Recorder()
        let engine = try makeAutoEngine(rec, maxTokens: 12)
        engine.send(.send("Explain in two sentences why the sky is blue."))
        engine.drain()
        let names = rec.events.map(name)
        let firstToken = try XCTUnwrap(names.firstIndex(of: "token"))
        // The engine asks the predictor when the message arrives, before the prompt runs.
        let started = try XCTUnwrap(names.firstIndex(of: "started"))
        let budgetEvents = names.prefix(firstToken).indices.filter { names[$0] == "budget" }
        XCTAssertTrue(budgetEvents.allSatisfy { $0 == started + 1 }, "the chosen budget is announced right after the reply starts: \(names)")
        let announced = rec.events.prefix(firstToken).compactMap { if case let .budget(b, _, _) = $0 { return b }; return nil }
        let record = try XCTUnwrap(rec.done)
        let chosen = announced.last ?? 1
        XCTAssertEqual(record.budgets.first, chosen)
        let k = LayerBudget.routableCount(budget: chosen, layers: engine.layers)
        XCTAssertFalse(rec.tokens.isEmpty)
        // The first token comes from the message's last position, which runs at full depth.
        for (_, s) in rec.tokens { XCTAssertEqual(s.layers.count, s.step == 0 ? engine.layers : k + 2, "step \(s.step)"); XCTAssertEqual(s.budget, chosen) }

        var o = EngineOptions()
        o.predictorPath = "/nonexistent/predictor.json"
        o.router = "sleb"
        let rec2 = Recorder()
        let e2 = try ChatEngine(model: try TestSupport.model(), options: o, sink: { rec2.post($0) })
        e2.send(.setAuto(true))
        e2.drain()
        XCTAssertTrue(rec2.notices.contains { $0.contains("no budget predictor") }, "\(rec2.notices)")
        XCTAssertTrue(rec2.events.contains { if case .auto(false) = $0 { return true }; return false })
    }

    func testPromptLongerThanTheContextIsAnErrorAndLeavesNoTrace() throws {
        let rec = Recorder()
        var o = EngineOptions()
        o.router = "even"
        o.context = 64
        o.maxTokens = 8
        let engine = try ChatEngine(model: try TestSupport.model(), options: o, sink: { rec.post($0) })
        engine.send(.send(String(repeating: "word ", count: 200)))
        engine.drain()
        XCTAssertEqual(rec.errors.count, 1)
        XCTAssertNil(rec.done)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("buddy-empty-\(getpid()).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        engine.send(.save(path: path))
        engine.drain()
        XCTAssertEqual(try ChatFile.read(path).messages.count, 0)
    }
}

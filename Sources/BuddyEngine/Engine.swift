import BuddyCore
import BuddyRouting
import Foundation

/// What the engine was started with.
public struct EngineOptions: Sendable {
    /// Router spec for `Routers.make` ("buddy", "even", a path, ...).
    public var router: String = "buddy"
    /// When the router cannot be made: fall back to "even" with a notice (true) or fail (false).
    public var fallBackToEven = true
    public var budget: Double = 1
    /// Start with the automatic budget (Budget Predictor) on.
    public var auto = false
    /// How `auto` chooses (`AutoBudgetRule`): a tolerance (largest predicted mean KL per token
    /// from full depth accepted) or a share of messages at full depth; both nil: the
    /// predictor's default.
    public var qualityTolerance: Double?
    public var fullDepthShare: Double?
    /// Budget predictor file (nil: the one shipped in routers/ for this model).
    public var predictorPath: String?
    public var system: String?
    /// What a skipped layer leaves in the KV cache (fill: the router mixes sets token by token).
    public var kvPolicy: KVPolicy = .fill
    /// Whether the user's messages run at full depth (the budget covering replies only) or at the budget.
    public var promptDepth: PromptDepth = .full
    /// Whether the router spends the budget unevenly along the reply (`BudgetSteering`).
    public var steering = BudgetSteering.onByDefault
    /// What a skipped layer adds to the residual stream (nil: nothing).
    public var standIns: StandIns?
    /// The output head of tokens that run few layers.
    public var head: HeadChoice = .standard
    public var maxTokens = 512
    public var context = 2048
    public var threads = 2
    public var sampling = SamplingParameters()
    public init() {}
}

/// Commands the UI sends. Everything except `stop` and `setBudget` waits its turn on the
/// engine queue; those two also act on a reply that is streaming (at its next decode step).
/// A budget set by hand ends the automatic budget (the engine says so with `.auto(false)`).
public enum EngineCommand: Sendable, Equatable {
    case send(String)
    case setBudget(Double)
    case setAuto(Bool)
    case stop
    case reset
    case setSystemPrompt(String?)
    case setRouter(String)
    case save(path: String)
    case load(path: String)
}

/// One decode step as the routing panel sees it.
public struct StepInfo: Sendable, Equatable {
    /// Step index within the reply (0 = the token sampled right after the prompt).
    public var step: Int
    /// Layers that ran (0 ... L-1, including the fixed first and last layer).
    public var layers: [Int]
    /// Router scores of the routable layers (index i = layer i+1), when the router has them.
    public var scores: [Float]?
    /// Budget the step ran under, and the routable-layer count it implies.
    public var budget: Double
    public var k: Int
    /// Which table of layer sets the router used (a gated Decision Module), if it has several.
    public var layerSets: String?
    public init(step: Int, layers: [Int], scores: [Float]?, budget: Double, k: Int, layerSets: String? = nil) {
        self.step = step; self.layers = layers; self.scores = scores; self.budget = budget; self.k = k
        self.layerSets = layerSets
    }
}

public struct EngineStats: Sendable, Equatable {
    public var tokensPerSecond = 0.0
    public var contextUsed = 0
    public var contextSize = 0
    /// Fraction of decode time spent choosing layers.
    public var routerOverhead = 0.0
    public var generatedTokens = 0
    public var meanLayers = 0.0
    public init(tokensPerSecond: Double = 0, contextUsed: Int = 0, contextSize: Int = 0, routerOverhead: Double = 0,
                generatedTokens: Int = 0, meanLayers: Double = 0) {
        self.tokensPerSecond = tokensPerSecond
        self.contextUsed = contextUsed
        self.contextSize = contextSize
        self.routerOverhead = routerOverhead
        self.generatedTokens = generatedTokens
        self.meanLayers = meanLayers
    }
}

/// The record of one assistant reply: what it said and the depth it ran at.
public struct ReplyRecord: Sendable, Codable, Equatable {
    public var text: String
    public var router: String
    /// Budgets in force during the reply, in the order they were used.
    public var budgets: [Double]
    /// Mean layers run per generated token (of `totalLayers`).
    public var meanLayers: Double
    public var totalLayers: Int
    /// How many steps each layer ran in (index = layer).
    public var layerUsage: [Int]
    public var steps: Int
    public var stopReason: StopReason
    public init(text: String, router: String, budgets: [Double], meanLayers: Double, totalLayers: Int,
                layerUsage: [Int], steps: Int, stopReason: StopReason) {
        self.text = text; self.router = router; self.budgets = budgets; self.meanLayers = meanLayers
        self.totalLayers = totalLayers; self.layerUsage = layerUsage; self.steps = steps; self.stopReason = stopReason
    }
}

/// Events the engine emits, in order, on its own queue.
public enum EngineEvent: Sendable {
    /// Once, first: what the model and router are.
    case ready(model: String, layers: Int, contextSize: Int, router: String)
    /// The budget now in force: after a command, applied mid-reply, or chosen by the Budget
    /// Predictor for a message (announced before the reply's first token).
    case budget(Double, k: Int, routable: Int)
    /// The automatic budget was switched on or off.
    case auto(Bool)
    case router(String)
    case notice(String)
    case replyStarted(prompt: String)
    case token(text: String, step: StepInfo)
    case stats(EngineStats)
    case done(ReplyRecord)
    case error(String)
    case systemPrompt(String?)
    case conversationReset
    case saved(path: String)
    /// A conversation was loaded: its messages (and replies' records where known).
    case loaded(path: String, messages: [ChatMessage], records: [ReplyRecord?])
}

/// Wraps a router to time its decisions (the "router overhead" of the status bar).
final class TimedSelector: OutputWatchingSelector, InputWatchingSelector, ContextKeepingSelector {
    let inner: BudgetedLayerSelector
    var seconds = 0.0
    init(_ inner: BudgetedLayerSelector) { self.inner = inner }

    private func timed<T>(_ f: () -> T) -> T {
        let start = monotonicSeconds()
        let r = f()
        seconds += monotonicSeconds() - start
        return r
    }
    func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] {
        timed { inner.selectLayers(position: position, state: state, cache: cache) }
    }
    func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool] {
        timed { inner.selectLayers(chunkStart: chunkStart, count: count, batch: batch, cache: cache) }
    }
    /// A new conversation or a rewritten tail reaches the router (the Decision Module's pooled context).
    func cacheTruncated(to length: Int) {
        (inner as? ContextKeepingSelector)?.cacheTruncated(to: length)
    }
    /// A steered router is told whether each step's input ends a sentence.
    func willRun(sentenceEnd: Bool) {
        (inner as? InputWatchingSelector)?.willRun(sentenceEnd: sentenceEnd)
    }
    /// A steered router reads each step's logits; its entropy counts as routing time.
    func observe(logits: UnsafePointer<Float>, count: Int, replyStarts: Bool) {
        guard let watcher = inner as? OutputWatchingSelector else { return }
        timed { watcher.observe(logits: logits, count: count, replyStarts: replyStarts) }
    }
}

/// State shared between the UI thread and a streaming reply; everything else the engine
/// holds is touched only on its queue.
final class Control: @unchecked Sendable {
    private let lock = NSLock()
    private var _requestedBudget: Double
    private var requested = 0
    private var cancelledUpTo = 0
    init(budget: Double) { _requestedBudget = budget }

    /// The budget asked for last (by the UI, or by the engine's own prediction); the engine
    /// applies it at its next chance, which is the next decode step while a reply streams.
    var requestedBudget: Double {
        get { lock.lock(); defer { lock.unlock() }; return _requestedBudget }
        set { lock.lock(); _requestedBudget = Budget.clamp(newValue); lock.unlock() }
    }
    /// A new reply was requested; returns its id.
    func nextRequest() -> Int { lock.lock(); defer { lock.unlock() }; requested += 1; return requested }
    /// Cancels every reply requested so far (streaming or queued).
    func cancelAll() { lock.lock(); cancelledUpTo = requested; lock.unlock() }
    func isCancelled(_ id: Int) -> Bool { lock.lock(); defer { lock.unlock() }; return id <= cancelledUpTo }
}

/// Owns the model's Session on one serial queue. The UI sends commands and receives
/// `EngineEvent`s through `sink`, which is called on the engine queue.
public final class ChatEngine: @unchecked Sendable {
    public let model: LanguageModel
    public let options: EngineOptions
    public let layers: Int
    public var routable: Int { LayerBudget.routable(layers: layers) }

    private let queue = DispatchQueue(label: "buddy.engine", qos: .userInitiated)
    private let sink: @Sendable (EngineEvent) -> Void
    private let control: Control
    // Engine-queue state.
    private let session: Session
    private var conversation: Conversation
    private var records: [ReplyRecord?] = []
    private var router: BudgetedLayerSelector
    private var timed: TimedSelector
    /// The automatic budget's chooser, loaded on first use of auto (nil when this model has no
    /// predictor): one for the whole conversation, since under the share rule it compares each
    /// message with the ones before it.
    private var autoBudget: AutoBudget?
    private var predictorError: String?
    /// The automatic budget is on: each message's budget comes from `autoBudget`.
    private var auto = false
    private var sampler: Sampler
    /// The budget in force: the router runs under it, every `.budget` event announces it.
    private var budget: Double

    /// Makes the router (synchronously: a router that cannot be made and may not fall back
    /// throws here) and emits `.ready` and the initial `.budget`.
    public init(model: LanguageModel, options: EngineOptions = EngineOptions(), sink: @escaping @Sendable (EngineEvent) -> Void) throws {
        self.model = model
        self.options = options
        self.sink = sink
        layers = model.config.layers
        let budget = Budget.clamp(options.budget)
        control = Control(budget: budget)
        self.budget = budget
        var notice: String?
        do {
            router = try Routers.make(options.router, model: model, budget: budget)
        } catch {
            guard options.fallBackToEven else { throw error }
            // The best static ranking available; the evenly spread subset only as a last
            // resort (it drops deep layers, which this model cannot spare).
            let fallback = ["sleb", "shortgpt"].compactMap { try? Routers.make($0, model: model, budget: budget) }.first
            router = try fallback ?? Routers.make("even", model: model, budget: budget)
            // Say why (a missing file, or one made for another file of the model such as a
            // requantised copy) so the user knows which calibration command fixes it.
            notice = "router '\(options.router)' unavailable (\(error)); using the static \(router.name) ranking"
        }
        if options.steering { router = BudgetSteering.forProduct(router) }
        timed = TimedSelector(router)
        session = Session(model: model, capacity: options.context, threads: options.threads)
        session.selector = timed
        session.policy = options.kvPolicy
        session.promptDepth = options.promptDepth
        session.standIns = options.standIns
        session.head = options.head
        conversation = Conversation(template: model.template, system: options.system)
        sampler = Sampler(options.sampling)
        let name = URL(fileURLWithPath: model.path).deletingPathExtension().lastPathComponent
        let r = router.name, cap = session.capacity, L = layers
        let k = LayerBudget.routableCount(budget: budget, layers: L)
        let templateNotice = model.template.notice
        queue.async { [sink, routable, notice, templateNotice] in
            sink(.ready(model: name, layers: L, contextSize: cap, router: r))
            sink(.budget(budget, k: k, routable: routable))
            if let notice { sink(.notice(notice)) }
            if let templateNotice { sink(.notice(templateNotice)) }
        }
        if options.auto { queue.async { self.setAuto(true) } }
    }

    public func send(_ command: EngineCommand) {
        switch command {
        case .stop:
            control.cancelAll()
        case let .setBudget(b):
            control.requestedBudget = b
            queue.async {
                self.applyBudget()
                // A budget chosen by hand overrides the predictor for good, not just for now.
                if self.auto { self.setAuto(false) }
            }
        case let .send(text):
            let id = control.nextRequest()
            queue.async { self.reply(to: text, id: id) }
        default:
            queue.async { self.perform(command) }
        }
    }

    /// Blocks until every command sent so far has been handled (for tests and shutdown).
    public func drain() { queue.sync {} }

    // MARK: engine queue

    /// Makes the requested budget the one in force (router included) and announces a change.
    private func applyBudget() {
        let b = control.requestedBudget
        guard b != budget else { return }
        budget = b
        router.budget = b
        sink(.budget(b, k: LayerBudget.routableCount(budget: b, layers: layers), routable: routable))
    }

    private func setAuto(_ on: Bool) {
        if on && autoBudget == nil && predictorError == nil {
            do {
                let p = try Routers.predictor(model: model, path: options.predictorPath)
                try p.checkFits(model.config)
                autoBudget = try AutoBudget(predictor: p, rule: .resolve(tolerance: options.qualityTolerance, share: options.fullDepthShare, predictor: p))
            } catch {
                predictorError = "\(error)"
            }
        }
        if on, autoBudget == nil {
            sink(.notice("no budget predictor for this model (\(predictorError ?? "")); train one with `buddy train predictor`. The budget stays manual."))
            sink(.auto(false))
            return
        }
        auto = on
        sink(.auto(on))
        if on, let autoBudget { sink(.notice(Self.autoNotice(autoBudget))) }
    }

    /// What the chat says when the automatic budget comes on.
    static func autoNotice(_ auto: AutoBudget) -> String {
        switch auto.rule {
        case let .tolerance(t):
            return String(format: "auto budget: the smallest budget whose predicted drift stays under %.2f nats/token is chosen for each message", t)
        case let .share(s):
            return String(format: "auto budget: each message runs at %.0f %% or, if it is among the %.0f %% predicted to drift most (against your recent messages), at full depth",
                          100 * auto.predictor.choices[0], 100 * s)
        }
    }

    /// Under the automatic budget: asks the Budget Predictor for this prompt's budget and puts
    /// it in force (announced with `.budget`) before the prompt runs, so the whole reply,
    /// prompt included, runs under it.
    private func predictBudget(for prompt: [Int32]) throws {
        guard auto, let autoBudget else { return }
        control.requestedBudget = try autoBudget.chooseBudget(for: prompt, in: session)
        applyBudget()
    }

    private func perform(_ command: EngineCommand) {
        switch command {
        case .send, .stop, .setBudget: break
        case let .setAuto(on):
            setAuto(on)
        case .reset:
            conversation.reset()
            records.removeAll()
            session.reset()
            sink(.conversationReset)
        case let .setSystemPrompt(s):
            conversation.system = (s?.isEmpty ?? true) ? nil : s
            sink(.systemPrompt(conversation.system))
        case let .setRouter(spec):
            do {
                let made = try Routers.make(spec, model: model, budget: budget)
                let r: BudgetedLayerSelector = options.steering ? BudgetSteering.forProduct(made) : made
                router = r
                timed = TimedSelector(r)
                session.selector = timed
                sink(.router(r.name))
            } catch {
                sink(.error("\(error)"))
            }
        case let .save(path):
            do {
                try ChatFile.write(ChatFile(model: model, system: conversation.system, messages: conversation.messages, records: records), to: path)
                sink(.saved(path: path))
            } catch {
                sink(.error("cannot save \(path): \(error)"))
            }
        case let .load(path):
            do {
                let f = try ChatFile.read(path)
                var c = Conversation(template: model.template, system: f.system)
                var recs: [ReplyRecord?] = []
                for m in f.messages {
                    c.append(m.role, m.content)
                    recs.append(m.record)
                }
                conversation = c
                records = recs
                session.reset()
                sink(.systemPrompt(c.system))
                sink(.loaded(path: path, messages: c.messages, records: recs))
            } catch {
                sink(.error("cannot load \(path): \(error)"))
            }
        }
    }

    private func reply(to text: String, id: Int) {
        applyBudget()
        conversation.append(.user, text)
        records.append(nil)
        sink(.replyStarted(prompt: text))
        let maxTokens = options.maxTokens
        var answer = ""
        var budgets: [Double] = []
        var firstTokenTime = 0.0
        var routerAtFirst = 0.0
        let L = layers
        let routerName = router.name
        func record(_ usage: LayerUsage, _ reason: StopReason) -> ReplyRecord {
            ReplyRecord(text: answer, router: routerName, budgets: budgets, meanLayers: usage.meanLayers, totalLayers: L,
                        layerUsage: usage.counts, steps: usage.steps, stopReason: reason)
        }
        do {
            let prompt = try conversation.promptTokens(tokenizer: model.tokenizer, capacity: session.capacity,
                                                       reserve: min(maxTokens, session.capacity / 4))
            try predictBudget(for: prompt)
            budgets = [budget]
            let stats = try session.generate(prompt: prompt, maxTokens: maxTokens, sampler: &sampler) { tok, progress in
                // Stopped (even before the first token): keep what was said so far.
                if control.isCancelled(id) { return false }
                let t = monotonicSeconds()
                if tok.step == 0 { firstTokenTime = t; routerAtFirst = timed.seconds }
                // The layers of this token were chosen under the budget in force until now.
                let k = LayerBudget.routableCount(budget: budget, layers: L)
                let info = StepInfo(step: tok.step, layers: tok.layers, scores: router.lastScores, budget: budget, k: k, layerSets: router.layerSetLabel)
                answer += tok.text
                sink(.token(text: tok.text, step: info))
                let elapsed = t - firstTokenTime
                sink(.stats(EngineStats(
                    tokensPerSecond: elapsed > 0 ? Double(tok.step) / elapsed : 0,
                    contextUsed: session.tokens.count, contextSize: session.capacity,
                    routerOverhead: elapsed > 0 ? (timed.seconds - routerAtFirst) / elapsed : 0,
                    generatedTokens: progress.usage.steps, meanLayers: progress.usage.meanLayers)))
                // A budget set meanwhile takes effect at the very next decode step.
                applyBudget()
                if budgets.last != budget { budgets.append(budget) }
                return true
            }
            answer += stats.trailingText
            if !stats.trailingText.isEmpty { sink(.token(text: stats.trailingText, step: StepInfo(step: stats.usage.steps, layers: [], scores: nil, budget: budget, k: 0))) }
            finish(answer, record(stats.usage, stats.stopReason))
        } catch let interrupted as GenerationInterrupted {
            // A decode step failed mid-reply: keep what was said, as a full context would.
            finish(answer, record(interrupted.partial.usage, .contextFull))
            sink(.error("\(interrupted)"))
        } catch {
            // Nothing was said: forget the question so the conversation stays well-formed.
            conversation.removeLastUser()
            records.removeLast()
            session.reset()
            sink(.error("\(error)"))
        }
    }

    private func finish(_ answer: String, _ record: ReplyRecord) {
        conversation.append(.assistant, answer)
        records.append(record)
        sink(.done(record))
    }
}

extension Conversation {
    /// Drops a trailing user message (a question that could not be answered).
    mutating func removeLastUser() {
        guard messages.last?.role == .user else { return }
        let kept = Array(messages.dropLast())
        reset()
        for m in kept { append(m.role, m.content) }
    }
}

import Foundation

/// Chooses which layers run for a token. Called after the first layer has run (the routing
/// context needs its output and its K/V); the answer must include the first and last layer.
public protocol LayerSelector: AnyObject {
    /// For one decode token at `position`: s.x holds the hidden state after layer 0.
    func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool]
    /// For a prompt chunk (one decision for the whole chunk, so it runs as a batch).
    func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool]
}

/// A selector whose decision for a token depends only on layer 0's output and cache (the
/// Decision Module's view), so that for a chunk whose layer 0 has run it can say what each
/// row would get if the rows were decoded one at a time. Evaluations use it to teacher-force
/// whole sequences as one batch with exactly the decisions of token-by-token routing.
public protocol RowwiseLayerSelector: LayerSelector {
    /// Decisions for rows chunkStart ..< chunkStart+count, in order, each as a decode step at
    /// that position would make it (updating the selector's state the same way).
    func selectLayers(rowsFrom chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [[Bool]]
}

/// A selector that may run a set of its own for a prompt at the budget: for the current
/// budget, the mask every prompt chunk runs, or nil to decide as for any chunk. A prompt's
/// layers set the KV cache every reply token reads, so the set that serves a prompt best
/// need not be the one a decode step would pick (docs/TRAINING.md, "The prompt's own set").
public protocol PromptSetSelector: LayerSelector {
    func promptMask() -> [Bool]?
}

/// A selector that also reads the model's output: each token's logits as soon as they are
/// computed, before a sampler changes them (repetition penalty works in place). `replyStarts`
/// is true for the logits of a prompt's last token, which predict a new reply's first token.
public protocol OutputWatchingSelector: LayerSelector {
    func observe(logits: UnsafePointer<Float>, count: Int, replyStarts: Bool)
}

/// A selector told, before each decode step, whether the token about to run ends a sentence
/// or a line (`LanguageModel.sentenceEndTokens`): that step's output decides whether the reply
/// ends, and how the next sentence begins.
public protocol InputWatchingSelector: LayerSelector {
    func willRun(sentenceEnd: Bool)
}

extension LanguageModel {
    /// Tells `selector`, when it watches inputs, whether `token`, the input of the decode step
    /// about to run, ends a sentence: the one place every decode loop (a session's step, the
    /// perplexity loop) asks, so all of them steer on the same steps.
    @inline(__always)
    public func announceInput(_ token: Int32, to selector: LayerSelector?) {
        (selector as? InputWatchingSelector)?.willRun(sentenceEnd: sentenceEndTokens.contains(token))
    }
}

/// A selector that keeps what it has seen of the context between calls (the Decision Module
/// pools the first layer's K/V as positions arrive). It is not asked about a prompt that runs
/// at full depth or on a prompt set, so by itself it cannot tell that a new conversation began
/// or that a prompt rewrote the cache's tail; the session tells it whenever the cache loses
/// positions, and when it becomes the session's selector.
public protocol ContextKeepingSelector: LayerSelector {
    /// The cache now holds only positions 0..<length: forget anything kept about later ones.
    func cacheTruncated(to length: Int)
}

/// Errors a generation can end with, worded for users.
public enum SessionError: Error, CustomStringConvertible {
    case contextFull(needed: Int, capacity: Int)
    case emptyPrompt
    public var description: String {
        switch self {
        case let .contextFull(n, cap): return "the prompt needs \(n) tokens but the context holds \(cap) (use a larger --context or a shorter prompt)"
        case .emptyPrompt: return "the prompt is empty"
        }
    }
}

/// A model plus one conversation's KV cache and run state: evaluates prompts (reusing the
/// cached prefix) and produces tokens one at a time. Not thread-safe; one owner at a time.
public final class Session: @unchecked Sendable {
    public let model: LanguageModel
    public let capacity: Int
    public let cache: KVCache
    public let decode: DecodeState
    public let batch: BatchState
    public let pool: ThreadPool
    /// Tokens whose K/V are in the cache, in order.
    public private(set) var tokens: [Int32] = []
    /// Told the cache is empty when it is set: what it kept may come from another conversation.
    public var selector: LayerSelector? {
        didSet { (selector as? ContextKeepingSelector)?.cacheTruncated(to: 0) }
    }
    /// What skipped layers leave in the cache. fill by default: a router that changes the set
    /// from token to token needs earlier tokens' keys in layers they skipped.
    public var policy: KVPolicy = .fill
    /// Whether a prompt passed to `evaluate` runs at the budget or at full depth. `.budget` by
    /// default, so evaluations keep their protocol; the chat and `generate` choose `.full`.
    public var promptDepth: PromptDepth = .budget
    /// What a skipped layer adds to the residual stream instead of nothing (nil: plain skip).
    /// Budget 1 runs every layer, so it is unaffected.
    public var standIns: StandIns? {
        get { decode.standIns }
        set { decode.standIns = newValue; batch.standIns = newValue }
    }
    /// The output head of tokens that run few layers. `.exact` by default, as training measures;
    /// the product's commands pass `--head` (`HeadChoice.standard`, screened).
    public var head: HeadChoice = .exact {
        didSet {
            let screen = head.screen(for: model.transformer, pool: pool)
            decode.screen = screen; batch.screen = screen
        }
    }
    /// The mask the most recent token (decode) or chunk's last row (prefill) ran; kept as the
    /// router returned it, so a decode step allocates nothing for it.
    public private(set) var lastMask: [Bool] = []
    /// Layers run for the most recent token (decode) or chunk (prefill).
    public var lastLayers: [Int] { lastMask.indices.filter { lastMask[$0] } }
    /// Sum over processed tokens of the number of layers each ran.
    public private(set) var layerTokenCount = 0

    public init(model: LanguageModel, capacity: Int? = nil, threads: Int = 2, batchSize: Int = 256) {
        self.model = model
        let c = model.config
        self.capacity = min(capacity ?? 2048, c.contextLength)
        pool = ThreadPool.shared(threads: threads)
        cache = KVCache(layers: c.layers, capacity: self.capacity, kvDim: c.kvDim, deferDim: c.dim)
        decode = DecodeState(config: c, capacity: self.capacity, pool: pool)
        batch = BatchState(config: c, maxTokens: min(batchSize, self.capacity), capacity: self.capacity, pool: pool)
        decode.catchUpBatch = batch
        tokens.reserveCapacity(self.capacity)   // a decode step's append never grows it
    }

    public func reset() { tokens.removeAll(keepingCapacity: true); truncateCache(to: 0) }

    /// Every truncation of the cache goes through here, so the selector hears of it.
    private func truncateCache(to length: Int) {
        cache.truncate(to: length)
        (selector as? ContextKeepingSelector)?.cacheTruncated(to: length)
    }

    /// How the new tokens of `evaluate` are routed.
    public enum TokenRole: Sendable, Equatable {
        /// A prompt: at the budget (one decision per chunk) or at full depth, as `promptDepth` says.
        case prompt
        /// A known reply fed back (teacher forcing): always at the budget, as decoding it would
        /// be. With `oneDecisionPerToken` each token gets its own decision, as if decoded one at
        /// a time, still as one batch; the selector must then be a `RowwiseLayerSelector`.
        case reply(oneDecisionPerToken: Bool)
    }

    /// Make the cache hold exactly `prompt`, evaluating only what differs from what is
    /// cached. Leaves the logits of the last prompt token in decode.logits.
    public func evaluate(_ prompt: [Int32], as role: TokenRole = .prompt) throws {
        let common = try reusablePrefix(prompt)
        truncateCache(to: common)
        tokens.removeLast(tokens.count - common)   // keeps the reserved capacity
        var start = common
        let t = model.transformer
        let routing: LayerRouting
        switch role {
        case .prompt:
            if promptDepth == .full { routing = .allLayers }
            else if let mask = (selector as? PromptSetSelector)?.promptMask() { routing = .fixed(mask) }
            else { routing = .session(selector, perRow: false) }
        case let .reply(perToken): routing = .session(selector, perRow: perToken)
        }
        var lastCount = 0
        while start < prompt.count {
            let n = min(batch.maxTokens, prompt.count - start)
            let chunk = prompt[start..<start + n]
            let rows = t.routedForward(chunk, start: start, batch, cache, routing: routing, policy: policy)
            lastMask = rows[n - 1]
            layerTokenCount += rows.reduce(0) { $0 + Session.count($1) }
            tokens.append(contentsOf: chunk)
            start += n
            lastCount = n
        }
        t.batchLogits(row: lastCount - 1, batch, decode)
        if let watcher = selector as? OutputWatchingSelector {
            watcher.observe(logits: decode.logits, count: model.config.vocabSize, replyStarts: role == .prompt)
        }
    }

    /// How many leading tokens of `prompt` the cache already holds and `evaluate` keeps.
    private func reusablePrefix(_ prompt: [Int32]) throws -> Int {
        guard !prompt.isEmpty else { throw SessionError.emptyPrompt }
        guard prompt.count <= capacity else { throw SessionError.contextFull(needed: prompt.count, capacity: capacity) }
        var common = 0
        while common < min(tokens.count, prompt.count) && tokens[common] == prompt[common] { common += 1 }
        // Always re-evaluate at least the last token so its logits are fresh.
        if common == prompt.count { common -= 1 }
        return common
    }

    /// Runs only layer 0, which every router runs, over the part of `prompt` that `evaluate`
    /// would compute, in the same chunks, calling `visit(chunkStart, count)` after each chunk
    /// with its layer-0 output in `batch` and its K/V in `cache`. This lets a caller decide
    /// something about a prompt (the chat's automatic budget) before evaluating it, at the
    /// cost of one layer. Afterwards the session holds only the prefix `evaluate` keeps, so
    /// cache and tokens agree and `evaluate` recomputes the rest in full.
    public func runFirstLayer(over prompt: [Int32], visit: (_ chunkStart: Int, _ count: Int) -> Void) throws {
        let common = try reusablePrefix(prompt)
        truncateCache(to: common)
        tokens.removeLast(tokens.count - common)   // keeps the reserved capacity
        let t = model.transformer
        var start = common
        while start < prompt.count {
            let n = min(batch.maxTokens, prompt.count - start)
            t.routedForward(prompt[start..<start + n], start: start, batch, cache, endLayer: 1)
            visit(start, n)
            start += n
        }
        truncateCache(to: common)
    }

    /// Feed one token at the next position; returns its logits (decode.logits).
    @discardableResult
    public func step(_ token: Int32) throws -> UnsafeMutablePointer<Float> {
        let pos = tokens.count
        guard pos < capacity else { throw SessionError.contextFull(needed: pos + 1, capacity: capacity) }
        model.announceInput(token, to: selector)
        let runs = model.transformer.routedForward(token: token, pos: pos, decode, cache,
                                                   routing: .session(selector, perRow: false), policy: policy)
        tokens.append(token)
        // Copied element by element into the session's own buffer: keeping the router's array
        // would make its next in-place decision copy it.
        if lastMask.count != runs.count { lastMask = [Bool](repeating: false, count: runs.count) }
        for l in 0..<runs.count { lastMask[l] = runs[l] }
        layerTokenCount += Session.count(runs)
        if let watcher = selector as? OutputWatchingSelector {
            watcher.observe(logits: decode.logits, count: model.config.vocabSize, replyStarts: false)
        }
        return decode.logits
    }

    /// Layers a mask runs (a loop, not a filter: nothing allocated per token).
    @inline(__always) public static func count(_ mask: [Bool]) -> Int {
        var c = 0
        for run in mask where run { c += 1 }
        return c
    }
}

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
    public var selector: LayerSelector?
    /// What skipped layers leave in the cache. fill by default: a router that changes the set
    /// from token to token needs earlier tokens' keys in layers they skipped.
    public var policy: KVPolicy = .fill
    /// What a skipped layer adds to the residual stream instead of nothing (nil: plain skip).
    /// Budget 1 runs every layer, so it is unaffected.
    public var standIns: StandIns? {
        get { decode.standIns }
        set { decode.standIns = newValue; batch.standIns = newValue }
    }
    /// Layers run for the most recent token (decode) or chunk (prefill).
    public private(set) var lastLayers: [Int] = []
    /// Sum over processed tokens of the number of layers each ran.
    public private(set) var layerTokenCount = 0

    public init(model: LanguageModel, capacity: Int? = nil, threads: Int = 2, batchSize: Int = 256) {
        self.model = model
        let c = model.config
        self.capacity = min(capacity ?? 2048, c.contextLength)
        pool = ThreadPool.shared(threads: threads)
        cache = KVCache(layers: c.layers, capacity: self.capacity, kvDim: c.kvDim)
        decode = DecodeState(config: c, capacity: self.capacity, pool: pool)
        batch = BatchState(config: c, maxTokens: min(batchSize, self.capacity), capacity: self.capacity, pool: pool)
    }

    public func reset() { tokens.removeAll(); cache.truncate(to: 0) }

    private func mask(_ runs: [Bool]) -> [Int] { runs.indices.filter { runs[$0] } }

    /// Make the cache hold exactly `prompt`, evaluating only what differs from what is
    /// cached. Leaves the logits of the last prompt token in decode.logits.
    ///
    /// With `decideEveryToken` the new tokens get one routing decision each, as if they were
    /// decoded one at a time (teacher forcing), still as one batch; the selector must then
    /// be a `RowwiseLayerSelector`.
    public func evaluate(_ prompt: [Int32], decideEveryToken: Bool = false) throws {
        let common = try reusablePrefix(prompt)
        cache.truncate(to: common)
        tokens = Array(prompt[..<common])
        var start = common
        let t = model.transformer, L = model.config.layers
        var lastCount = 0
        while start < prompt.count {
            let n = min(batch.maxTokens, prompt.count - start)
            let chunk = prompt[start..<start + n]
            t.prefillEmbed(chunk, start: start, batch, cache)
            if let selector {
                // The routing context needs layer 0's output and K/V for the chunk first.
                t.prefillLayers(0..<1, n: n, start: start, batch, cache)
                let rows: [[Bool]]
                if decideEveryToken {
                    guard let rowwise = selector as? RowwiseLayerSelector else {
                        preconditionFailure("decideEveryToken needs a RowwiseLayerSelector")
                    }
                    rows = rowwise.selectLayers(rowsFrom: start, count: n, batch: batch, cache: cache)
                } else {
                    rows = [[Bool]](repeating: selector.selectLayers(chunkStart: start, count: n, batch: batch, cache: cache), count: n)
                }
                t.prefillLayers(1..<L, n: n, start: start, batch, cache, rowRuns: rows, policy: policy)
                lastLayers = mask(rows[n - 1])
                layerTokenCount += rows.reduce(0) { $0 + $1.filter { $0 }.count }
            } else {
                t.prefillLayers(0..<L, n: n, start: start, batch, cache)
                lastLayers = Array(0..<L)
                layerTokenCount += L * n
            }
            tokens.append(contentsOf: chunk)
            start += n
            lastCount = n
        }
        t.batchLogits(row: lastCount - 1, batch, decode)
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
        cache.truncate(to: common)
        tokens = Array(prompt[..<common])
        let t = model.transformer
        var start = common
        while start < prompt.count {
            let n = min(batch.maxTokens, prompt.count - start)
            t.prefillEmbed(prompt[start..<start + n], start: start, batch, cache)
            t.prefillLayers(0..<1, n: n, start: start, batch, cache)
            visit(start, n)
            start += n
        }
        cache.truncate(to: common)
    }

    /// Feed one token at the next position; returns its logits (decode.logits).
    @discardableResult
    public func step(_ token: Int32) throws -> UnsafeMutablePointer<Float> {
        let pos = tokens.count
        guard pos < capacity else { throw SessionError.contextFull(needed: pos + 1, capacity: capacity) }
        let t = model.transformer
        let s = decode
        t.embed(token, s)
        t.runLayer(0, pos: pos, s, cache)
        var runs = [Bool](repeating: true, count: model.config.layers)
        if let selector { runs = selector.selectLayers(position: pos, state: s, cache: cache) }
        for l in 1..<model.config.layers {
            if runs[l] { t.runLayer(l, pos: pos, s, cache) } else { t.skipLayer(l, pos: pos, policy: policy, s, cache) }
        }
        cache.count = pos + 1
        tokens.append(token)
        t.computeLogits(s)
        lastLayers = mask(runs)
        layerTokenCount += lastLayers.count
        return s.logits
    }
}

import Foundation

/// Perplexity with llama.cpp's protocol (`llama-perplexity`): the text is tokenized whole,
/// cut into chunks of `contextSize` tokens, each chunk is evaluated from an empty cache, and
/// only the second half is scored: logits at position j predict token j+1 for
/// j in contextSize/2 ..< contextSize-1.
public struct PerplexityResult: Sendable {
    public var chunks: [(nll: Double, count: Int)] = []
    public var totalTokensInText = 0
    public var nll: Double { chunks.reduce(0) { $0 + $1.nll } }
    public var count: Int { chunks.reduce(0) { $0 + $1.count } }
    public var perplexity: Double { count > 0 ? exp(nll / Double(count)) : .nan }
}

public final class PerplexityEvaluator {
    public let model: LanguageModel
    public let contextSize: Int
    public let batch: BatchState
    public let cache: KVCache
    public let decode: DecodeState
    /// What skipped layers add to the residual stream (nil: plain skip).
    public var standIns: StandIns? {
        get { decode.standIns }
        set { decode.standIns = newValue; batch.standIns = newValue }
    }
    /// As Session.head.
    public var head: HeadChoice = .exact {
        didSet {
            let screen = head.screen(for: model.transformer, pool: batch.pool)
            decode.screen = screen; batch.screen = screen
        }
    }
    /// [contextSize × vocab] logits of one chunk
    let logits: UnsafeMutablePointer<Float>

    public init(model: LanguageModel, contextSize: Int = 512, threads: Int = 2) {
        self.model = model
        self.contextSize = contextSize
        let c = model.config
        let pool = ThreadPool.shared(threads: threads)
        batch = BatchState(config: c, maxTokens: contextSize, capacity: contextSize, pool: pool)
        cache = KVCache(layers: c.layers, capacity: contextSize, kvDim: c.kvDim, deferDim: c.dim)
        decode = DecodeState(config: c, capacity: contextSize, pool: pool)
        logits = .allocate(capacity: contextSize * c.vocabSize)
    }
    deinit { logits.deallocate() }

    public func tokenize(_ text: String) -> [Int32] {
        var ids = model.tokenizer.encode(text, parseSpecial: false)
        if model.tokenizer.addBOS, let bos = model.tokenizer.bosID { ids.insert(bos, at: 0) }
        return ids
    }

    /// Negative log-likelihood summed over the scored part of one chunk: predictions from
    /// positions firstScored..<n-1 (default: the second half, llama.cpp's protocol).
    /// `runs` selects layers for the whole chunk (nil: all).
    public func scoreChunk(_ tokens: ArraySlice<Int32>, runs: ((Int) -> Bool)? = nil, policy: KVPolicy = .mask,
                           firstScored: Int? = nil) -> (nll: Double, count: Int) {
        let n = tokens.count
        precondition(n == contextSize)
        var chunk = Array(tokens)
        // llama.cpp puts BOS first in each chunk when the model wants one.
        if model.tokenizer.addBOS, let bos = model.tokenizer.bosID { chunk[0] = bos }
        cache.truncate(to: 0)
        let t = model.transformer
        t.routedForward(chunk[...], start: 0, batch, cache, routing: .fixed(layers: model.config.layers, runs: runs), policy: policy)
        t.batchLogitsAll(n: n, batch, logits)
        let vocab = model.config.vocabSize
        var nll = 0.0
        let first = firstScored ?? n / 2
        for j in first..<(n - 1) {
            nll += LogProbabilities.negativeLogProb(logits + j * vocab, count: vocab, target: Int(chunk[j + 1]))
        }
        return (nll, n - 1 - first)
    }


    /// Scores one chunk with a per-token router, as generation would use it: the unscored
    /// first half is a prompt (one decision, one batch), then every scored position is a
    /// decode step with its own decision from the context so far (run as one batch when the
    /// selector can make those decisions per row: the same numbers, several times faster).
    /// The first half is text to be continued, not a chat prompt, so a router's prompt sets
    /// (searched on chat prompts) do not apply to it: it is decided as any chunk is.
    public func scoreChunkRouted(_ tokens: ArraySlice<Int32>, selector: LayerSelector, policy: KVPolicy) -> (nll: Double, count: Int) {
        let n = tokens.count
        precondition(n == contextSize)
        var chunk = Array(tokens)
        if model.tokenizer.addBOS, let bos = model.tokenizer.bosID { chunk[0] = bos }
        cache.truncate(to: 0)
        let t = model.transformer, vocab = model.config.vocabSize
        let first = n / 2
        // The unscored first half is a prompt: one decision, one batch.
        t.routedForward(chunk[0..<first], start: 0, batch, cache, routing: .perChunk(selector), policy: policy)
        var nll = 0.0
        if let rowwise = selector as? RowwiseLayerSelector {
            // The same decisions as the decode loop below, made per row of one batch.
            let m = n - 1 - first
            t.routedForward(chunk[first..<(n - 1)], start: first, batch, cache, routing: .perRow(rowwise), policy: policy)
            t.batchLogitsAll(n: m, batch, logits)
            for j in 0..<m {
                nll += LogProbabilities.negativeLogProb(logits + j * vocab, count: vocab, target: Int(chunk[first + j + 1]))
            }
            return (nll, m)
        }
        // A selector that watches the output (BudgetSteering) sees every step's logits, as in
        // a Session: the prompt's last row first (the "reply" starts), then each decode step's.
        let watcher = selector as? OutputWatchingSelector
        if let watcher {
            t.batchLogits(row: first - 1, batch, decode)
            watcher.observe(logits: decode.logits, count: vocab, replyStarts: true)
        }
        for pos in first..<(n - 1) {
            model.announceInput(chunk[pos], to: selector)
            t.routedForward(token: chunk[pos], pos: pos, decode, cache, routing: .perChunk(selector), policy: policy)
            nll += LogProbabilities.negativeLogProb(decode.logits, count: vocab, target: Int(chunk[pos + 1]))
            watcher?.observe(logits: decode.logits, count: vocab, replyStarts: false)
        }
        return (nll, n - 1 - first)
    }

    /// Scores chunks firstChunk ..< firstChunk + maxChunks, reporting progress after each.
    /// With a `selector`, decisions are made per token (scoreChunkRouted); with `runs`, one
    /// fixed layer set serves every token and the whole chunk runs as one batch.
    public func evaluate(tokens: [Int32], maxChunks: Int?, firstChunk: Int = 0, runs: ((Int) -> Bool)? = nil,
                         selector: LayerSelector? = nil, policy: KVPolicy = .mask,
                         progress: ((Int, Int, PerplexityResult) -> Void)? = nil) -> PerplexityResult {
        var result = PerplexityResult()
        result.totalTokensInText = tokens.count
        let available = max(0, tokens.count / contextSize - firstChunk)
        let total = min(available, maxChunks ?? available)
        for i in 0..<total {
            let c = firstChunk + i
            let slice = tokens[(c * contextSize)..<((c + 1) * contextSize)]
            let r = selector.map { scoreChunkRouted(slice, selector: $0, policy: policy) } ?? scoreChunk(slice, runs: runs, policy: policy)
            result.chunks.append(r)
            progress?(i + 1, total, result)
        }
        return result
    }
}

import Foundation

/// One generated token, with the layers that ran to produce it.
public struct GeneratedToken: Sendable {
    public let step: Int
    public let id: Int32
    /// Text that became complete with this token (may be "" mid-character).
    public let text: String
    /// Layers executed for the step that produced this token (the prompt's last chunk for
    /// step 0, the previous token's decode step afterwards).
    public let layers: [Int]
}

public struct GenerationStats: Sendable {
    public enum StopReason: String, Sendable { case endOfTurn = "end_of_turn", maxTokens = "max_tokens", contextFull = "context_full", cancelled }
    public var promptTokens = 0
    public var generatedTokens = 0
    public var prefillSeconds = 0.0
    public var decodeSeconds = 0.0
    public var layerSum = 0
    public var stopReason = StopReason.maxTokens
    /// Bytes the streaming detokenizer still held at the end (an incomplete character).
    public var trailingText = ""
    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
    /// Decode speed counts the steps that fed a generated token back (all but the first).
    public var decodeTokensPerSecond: Double { decodeSeconds > 0 ? Double(max(generatedTokens - 1, 0)) / decodeSeconds : 0 }
    public var meanLayersPerToken: Double { generatedTokens > 0 ? Double(layerSum) / Double(generatedTokens) : 0 }
}

/// Seconds on the monotonic clock, for timing steps and runs.
@inline(__always) public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

extension Session {
    /// Evaluate `prompt` and sample up to `maxTokens` tokens, calling `onToken` for each
    /// (return false to stop). Stops at an end-of-turn token (not emitted) or a full context.
    public func generate(prompt: [Int32], maxTokens: Int, sampler: inout Sampler, includeSpecial: Bool = false,
                         onToken: (GeneratedToken) -> Bool) throws -> GenerationStats {
        var stats = GenerationStats()
        stats.promptTokens = prompt.count
        let t0 = monotonicSeconds()
        try evaluate(prompt)
        stats.prefillSeconds = monotonicSeconds() - t0
        var detok = StreamingDetokenizer(tokenizer: model.tokenizer, includeSpecial: includeSpecial)
        let vocab = model.config.vocabSize
        let t1 = monotonicSeconds()
        var step = 0
        while step < maxTokens {
            let layersUsed = lastLayers
            let id = sampler.sample(decode.logits, count: vocab, recent: tokens[...])
            if model.stopTokens.contains(id) { stats.stopReason = .endOfTurn; break }
            stats.generatedTokens += 1
            stats.layerSum += layersUsed.count
            let text = detok.append(id)
            if !onToken(GeneratedToken(step: step, id: id, text: text, layers: layersUsed)) { stats.stopReason = .cancelled; break }
            step += 1
            if step == maxTokens { break }
            if tokens.count >= capacity { stats.stopReason = .contextFull; break }
            try self.step(id)
        }
        stats.trailingText = detok.flush()
        stats.decodeSeconds = monotonicSeconds() - t1
        return stats
    }
}

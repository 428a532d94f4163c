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

/// Why a reply ended: the one list, shared by generation, the chat engine and saved chats.
public enum StopReason: String, Sendable, Codable {
    case endOfTurn = "end_of_turn", maxTokens = "max_tokens", contextFull = "context_full", cancelled
}

/// How often each layer ran over a run of decode steps: the one tally behind a reply's mean
/// layers per token, its saved per-layer usage and the routing panel's usage bars.
/// Recording a step writes into storage made once, so tallying adds no allocation per token.
public struct LayerUsage: Sendable, Equatable {
    /// counts[l]: steps in which layer l ran.
    public private(set) var counts: [Int]
    public private(set) var steps = 0
    /// Layers run, summed over the steps.
    public private(set) var layerSum = 0

    public init(layers: Int) { counts = [Int](repeating: 0, count: max(0, layers)) }

    public var layers: Int { counts.count }
    /// Mean layers run per step (0 before the first).
    public var meanLayers: Double { steps > 0 ? Double(layerSum) / Double(steps) : 0 }
    /// The share of steps in which `layer` ran (0 before the first step).
    public func fraction(_ layer: Int) -> Double { steps > 0 ? Double(counts[layer]) / Double(steps) : 0 }

    /// One step that ran `ran` (layer indices; any outside 0..<layers are not counted per layer).
    public mutating func record(_ ran: [Int]) {
        steps += 1
        layerSum += ran.count
        for l in ran where l >= 0 && l < counts.count { counts[l] += 1 }
    }

    /// Takes back a step recorded with `record(ran)`.
    public mutating func forget(_ ran: [Int]) {
        guard steps > 0 else { return }
        steps -= 1
        layerSum -= ran.count
        for l in ran where l >= 0 && l < counts.count { counts[l] -= 1 }
    }

    public mutating func reset() {
        for l in counts.indices { counts[l] = 0 }
        steps = 0
        layerSum = 0
    }
}

public struct GenerationStats: Sendable {
    /// Kept so code written against the nested name still compiles.
    public typealias StopReason = BuddyCore.StopReason
    public var promptTokens = 0
    public var generatedTokens = 0
    public var prefillSeconds = 0.0
    public var decodeSeconds = 0.0
    /// Layers that produced each generated token.
    public var usage = LayerUsage(layers: 0)
    public var layerSum: Int { usage.layerSum }
    public var stopReason = StopReason.maxTokens
    /// Bytes the streaming detokenizer still held at the end (an incomplete character).
    public var trailingText = ""
    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
    /// Decode speed counts the steps that fed a generated token back (all but the first).
    public var decodeTokensPerSecond: Double { decodeSeconds > 0 ? Double(max(generatedTokens - 1, 0)) / decodeSeconds : 0 }
    public var meanLayersPerToken: Double { usage.meanLayers }
}

/// A decode step failed after tokens were generated: what was generated so far comes along,
/// so a caller can keep the partial reply and its layer usage.
public struct GenerationInterrupted: Error, CustomStringConvertible {
    public let partial: GenerationStats
    public let underlying: Error
    public var description: String { "\(underlying)" }
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
        try generate(prompt: prompt, maxTokens: maxTokens, sampler: &sampler, includeSpecial: includeSpecial,
                     onProgress: { token, _ in onToken(token) })
    }

    /// `generate`, also showing `onProgress` the statistics so far (this token included), so
    /// a streaming caller reads the one layer tally instead of keeping its own. A decode step
    /// that fails after the first token throws `GenerationInterrupted` with those statistics.
    public func generate(prompt: [Int32], maxTokens: Int, sampler: inout Sampler, includeSpecial: Bool = false,
                         onProgress: (GeneratedToken, GenerationStats) -> Bool) throws -> GenerationStats {
        var stats = GenerationStats()
        stats.promptTokens = prompt.count
        stats.usage = LayerUsage(layers: model.config.layers)
        let t0 = monotonicSeconds()
        try evaluate(prompt)
        stats.prefillSeconds = monotonicSeconds() - t0
        var detok = StreamingDetokenizer(tokenizer: model.tokenizer, includeSpecial: includeSpecial)
        let vocab = model.config.vocabSize
        sampler.sequenceBreakers = model.controlTokens
        let t1 = monotonicSeconds()
        var step = 0
        while step < maxTokens {
            let layersUsed = lastLayers
            let id = sampler.sample(decode.logits, count: vocab, recent: tokens[...])
            if model.stopTokens.contains(id) { stats.stopReason = .endOfTurn; break }
            stats.generatedTokens += 1
            stats.usage.record(layersUsed)
            let text = detok.append(id)
            if !onProgress(GeneratedToken(step: step, id: id, text: text, layers: layersUsed), stats) {
                // A token the caller refuses was never shown: it is not counted either.
                stats.generatedTokens -= 1
                stats.usage.forget(layersUsed)
                stats.stopReason = .cancelled
                break
            }
            step += 1
            if step == maxTokens { break }
            if tokens.count >= capacity { stats.stopReason = .contextFull; break }
            do { try self.step(id) } catch {
                stats.decodeSeconds = monotonicSeconds() - t1
                throw GenerationInterrupted(partial: stats, underlying: error)
            }
        }
        stats.trailingText = detok.flush()
        stats.decodeSeconds = monotonicSeconds() - t1
        return stats
    }
}

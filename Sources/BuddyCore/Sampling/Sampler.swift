import Foundation

/// Sampling settings. Temperature 0 means greedy (argmax), whatever the other settings say.
public struct SamplingParameters: Sendable, Equatable {
    public var temperature: Float = 0.7
    /// Keep only the k most likely tokens (0 = off).
    public var topK: Int = 40
    /// Keep the smallest set whose probability reaches p (1 = off).
    public var topP: Float = 0.95
    /// Drop tokens whose probability is below minP × the top probability (0 = off).
    public var minP: Float = 0.05
    /// Divide positive logits (multiply negative ones) of recently seen tokens (1 = off).
    public var repetitionPenalty: Float = 1.0
    /// How many recent tokens the repetition penalty looks at.
    public var repetitionWindow: Int = 64
    /// "Don't repeat yourself" (DRY, as in llama.cpp and koboldcpp): a token that would extend
    /// a run of n tokens the context already holds, followed by that token, loses
    /// `dryMultiplier · dryBase^(n − dryAllowedLength)` from its logit when n ≥ the allowed
    /// length (multiplier 0 = off). Unlike the repetition penalty it leaves single words alone
    /// and grows with the length of the copy, so it stops a paragraph repeating verbatim.
    public var dryMultiplier: Float = 0
    public var dryBase: Float = 1.75
    /// 8, not llama.cpp's 2: chosen on training prompts (eval/NOTES.md, "A repetition guard"),
    /// where 2 spoilt ordinary replies by penalising every repeated pair of tokens.
    public var dryAllowedLength: Int = 8
    /// How many recent tokens DRY searches for earlier copies (0 = the whole context).
    public var dryWindow: Int = 0
    public var seed: UInt64 = 0

    public init() {}
    public static let greedy: SamplingParameters = { var p = SamplingParameters(); p.temperature = 0; return p }()
}

/// Turns logits into a token. The order follows llama.cpp's common chain:
/// repetition penalty, DRY, top-k, top-p, min-p, temperature, then a draw.
public struct Sampler: Sendable {
    public var parameters: SamplingParameters
    private var rng: SeededRNG
    /// Scratch of (id, logit) candidates; reused between calls.
    private var candidates: [(id: Int32, logit: Float)] = []
    /// Scratch of DRY's (token, longest run it would extend) pairs; reused between calls.
    private var dryRuns: [(id: Int32, run: Int)] = []
    /// Tokens a DRY run never crosses and that DRY never penalises: the chat template's
    /// control tokens, so that the start of a turn (or its end) is not taken for a copy.
    public var sequenceBreakers: Set<Int32> = []

    public init(_ parameters: SamplingParameters, sequenceBreakers: Set<Int32> = []) {
        self.parameters = parameters
        self.sequenceBreakers = sequenceBreakers
        rng = SeededRNG(seed: parameters.seed)
    }

    public static func argmax(_ logits: UnsafePointer<Float>, count: Int) -> Int32 {
        var best = 0
        var bestValue = -Float.infinity
        for i in 0..<count where logits[i] > bestValue { bestValue = logits[i]; best = i }
        return Int32(best)
    }

    /// Applies the repetition penalty in place (llama.cpp convention).
    public static func applyRepetitionPenalty(_ logits: UnsafeMutablePointer<Float>, recent: ArraySlice<Int32>, penalty: Float) {
        guard penalty != 1 else { return }
        for id in Set(recent) {
            let i = Int(id)
            logits[i] = logits[i] > 0 ? logits[i] / penalty : logits[i] * penalty
        }
    }

    /// Runs longer than this count as this long: the penalty is already prohibitive, and it
    /// bounds the search to window × 64 comparisons per token.
    public static let dryLongestRun = 64

    /// DRY: for each earlier position j whose token equals the newest one, the run is the
    /// number of tokens matching backwards from j and from the newest token (stopping at a
    /// breaker); the token after j would extend that run. Each such token loses
    /// multiplier · base^(run − allowed) for its longest run ≥ allowed.
    public mutating func applyDRY(_ logits: UnsafeMutablePointer<Float>, count: Int, recent: ArraySlice<Int32>) {
        let p = parameters
        guard p.dryMultiplier > 0, recent.count >= 2 else { return }
        let c = p.dryWindow > 0 ? recent.suffix(p.dryWindow) : recent
        let first = c.startIndex, last = c.endIndex - 1
        guard !sequenceBreakers.contains(c[last]) else { return }
        dryRuns.removeAll(keepingCapacity: true)
        for j in first..<last where c[j] == c[last] {
            let next = c[j + 1]
            guard !sequenceBreakers.contains(next), Int(next) >= 0, Int(next) < count else { continue }
            var run = 0
            while run < Sampler.dryLongestRun, j - run >= first, c[j - run] == c[last - run], !sequenceBreakers.contains(c[j - run]) { run += 1 }
            guard run >= p.dryAllowedLength else { continue }
            if let i = dryRuns.firstIndex(where: { $0.id == next }) {
                dryRuns[i].run = max(dryRuns[i].run, run)
            } else {
                dryRuns.append((next, run))
            }
        }
        for (id, run) in dryRuns {
            logits[Int(id)] -= p.dryMultiplier * powf(p.dryBase, Float(run - p.dryAllowedLength))
        }
    }

    /// The penalties, in place and in llama.cpp's order: repetition penalty over its window, then DRY.
    private mutating func penalise(_ logits: UnsafeMutablePointer<Float>, count: Int, recent: ArraySlice<Int32>) {
        Sampler.applyRepetitionPenalty(logits, recent: recent.suffix(parameters.repetitionWindow), penalty: parameters.repetitionPenalty)
        applyDRY(logits, count: count, recent: recent)
    }

    /// The distribution the draw is made from, as (id, probability) sorted by probability.
    /// Exposed for tests that check it against hand-computed values.
    public mutating func distribution(_ logits: UnsafeMutablePointer<Float>, count: Int, recent: ArraySlice<Int32> = []) -> [(id: Int32, p: Float)] {
        let p = parameters
        penalise(logits, count: count, recent: recent)
        candidates.removeAll(keepingCapacity: true)
        for i in 0..<count { candidates.append((Int32(i), logits[i])) }
        candidates.sort { $0.logit > $1.logit || ($0.logit == $1.logit && $0.id < $1.id) }
        if p.topK > 0 && p.topK < candidates.count { candidates.removeSubrange(p.topK...) }
        // Softmax at temperature 1 for the p-based filters, as llama.cpp does.
        var probs = softmax(candidates.map(\.logit), temperature: 1)
        if p.topP < 1 {
            var cum: Float = 0
            var keep = probs.count
            for (i, q) in probs.enumerated() {
                cum += q
                if cum >= p.topP { keep = i + 1; break }
            }
            candidates.removeSubrange(keep...)
            probs.removeSubrange(keep...)
        }
        if p.minP > 0, let top = probs.first {
            let keep = probs.firstIndex { $0 < p.minP * top } ?? probs.count
            candidates.removeSubrange(max(keep, 1)...)
        }
        let final = softmax(candidates.map(\.logit), temperature: max(p.temperature, 1e-6))
        return zip(candidates, final).map { ($0.id, $1) }
    }

    /// Picks the next token.
    public mutating func sample(_ logits: UnsafeMutablePointer<Float>, count: Int, recent: ArraySlice<Int32> = []) -> Int32 {
        if parameters.temperature <= 0 {
            penalise(logits, count: count, recent: recent)
            return Sampler.argmax(logits, count: count)
        }
        let dist = distribution(logits, count: count, recent: recent)
        let r = rng.nextUnitFloat()
        var cum: Float = 0
        for (id, p) in dist {
            cum += p
            if r < cum { return id }
        }
        return dist.last!.id
    }
}

/// Numerically stable softmax of logits / temperature.
public func softmax(_ logits: [Float], temperature: Float) -> [Float] {
    guard let m = logits.max() else { return [] }
    let e = logits.map { expf(($0 - m) / temperature) }
    let s = e.reduce(0, +)
    return e.map { $0 / s }
}

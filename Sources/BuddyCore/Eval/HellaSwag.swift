import Foundation

/// One HellaSwag task in llama.cpp's 6-lines-per-task layout:
/// `activity_label: ctx`, the gold ending's index, then the four endings.
public struct HellaSwagTask: Sendable, Equatable {
    public let context: String
    public let gold: Int
    public let endings: [String]

    public init(context: String, gold: Int, endings: [String]) {
        self.context = context
        self.gold = gold
        self.endings = endings
    }

    public struct ParseError: Error, CustomStringConvertible {
        public let line: Int
        public let reason: String
        public var description: String { "HellaSwag file, line \(line): \(reason)" }
    }

    public static func parse(_ text: String) throws -> [HellaSwagTask] {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        while lines.last == "" { lines.removeLast() }
        guard lines.count % 6 == 0 else { throw ParseError(line: lines.count, reason: "\(lines.count) lines is not a multiple of 6") }
        return try stride(from: 0, to: lines.count, by: 6).map { i in
            guard let g = Int(lines[i + 1].trimmingCharacters(in: .whitespaces)), (0..<4).contains(g) else {
                throw ParseError(line: i + 2, reason: "gold ending index must be 0-3, found '\(lines[i + 1])'")
            }
            return HellaSwagTask(context: lines[i], gold: g, endings: Array(lines[(i + 2)..<(i + 6)]))
        }
    }
}

/// acc_norm as llama.cpp computes it: each ending (prefixed by a space) is scored by the mean
/// log-probability of its tokens after the context; the highest mean wins. The context is
/// evaluated once per task (the session reuses its cache for the four endings), and ending
/// tokens are fed one at a time, so a router decides per token as it does in generation.
public final class HellaSwagEvaluator {
    public let session: Session
    /// Score each ending as one batch after its context (exactly the per-token result for
    /// the full model, a static layer set or a `RowwiseLayerSelector`; other per-token
    /// routers need batched = false).
    public let batched: Bool
    /// [session.batch.maxTokens × vocab] logits of an ending's rows (batched mode)
    private let rows: UnsafeMutablePointer<Float>

    public init(session: Session, batched: Bool = false) {
        self.session = session
        self.batched = batched
        rows = .allocate(capacity: batched ? session.batch.maxTokens * session.model.config.vocabSize : 1)
    }
    deinit { rows.deallocate() }

    /// Mean log-probability of each ending; returns the index of the best.
    public func score(_ task: HellaSwagTask) throws -> (best: Int, scores: [Double]) {
        let tok = session.model.tokenizer
        var ctx = tok.encode(task.context, parseSpecial: false)
        if tok.addBOS, let bos = tok.bosID { ctx.insert(bos, at: 0) }
        let vocab = session.model.config.vocabSize
        var scores: [Double] = []
        for ending in task.endings {
            let ids = tok.encode(" " + ending, parseSpecial: false)
            guard !ids.isEmpty else { scores.append(-.infinity); continue }
            try session.evaluate(ctx)
            var sum = -LogProbabilities.negativeLogProb(session.decode.logits, count: vocab, target: Int(ids[0]))
            if batched && ids.count > 1 && ids.count - 1 <= session.batch.maxTokens {
                // The cache holds ctx, so exactly the ending's first m-1 tokens run as one chunk.
                let m = ids.count - 1
                try session.evaluate(ctx + ids[0..<m], as: .reply(oneDecisionPerToken: session.selector is RowwiseLayerSelector))
                session.model.transformer.batchLogitsAll(n: m, session.batch, rows)
                for i in 0..<m { sum -= LogProbabilities.negativeLogProb(rows + i * vocab, count: vocab, target: Int(ids[i + 1])) }
            } else {
                for i in 1..<ids.count {
                    try session.step(ids[i - 1])
                    sum -= LogProbabilities.negativeLogProb(session.decode.logits, count: vocab, target: Int(ids[i]))
                }
            }
            scores.append(sum / Double(ids.count))
        }
        let best = scores.indices.max { scores[$0] < scores[$1] || (scores[$0] == scores[$1] && $0 > $1) }!
        return (best, scores)
    }
}

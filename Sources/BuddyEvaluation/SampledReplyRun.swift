import BuddyCore
import BuddyRouting
import Foundation

/// `buddy eval replies`: replies sampled as the chat writes them (its sampler, the prompt at full
/// depth), per method and budget: how long they run, how often they stop only at the token
/// limit, how much of them repeats earlier parts of themselves, and how the full model rates
/// them. The teacher-forced evaluations (`buddy eval chat`) never sample, so they cannot see a
/// reply that falls into a loop; this one can, and it is what a sampler setting is chosen on.
public enum SampledReplyRun {
    /// A reply token is "repeated" when the run of this many tokens ending at it already
    /// appeared earlier in the same reply: a sentence or more copied, not a common phrase.
    public static let repeatRun = 12

    /// One reply's figures.
    public struct Reply: Sendable, Equatable {
        public var tokens = 0
        public var hitLimit = false
        public var repeatedTokens = 0
        /// Σ −log p(token) under the full model, over the reply's tokens, and over those that do
        /// not repeat (a copied token is nearly free to the judge, so a reply that loops reads as
        /// fluent; this sum judges only the text a reply adds).
        public var judgeNLLSum = 0.0
        public var judgeNewNLLSum = 0.0
        /// Whether the full model, reading the reply, would have ended the turn somewhere in it
        /// (its end-of-turn probability reaches `endProbability` before some reply token).
        public var fullModelWouldEnd = false
        /// Layers run for the reply's tokens (the first one's from the prompt's last position).
        public var layerSum = 0
        public var text = ""
        /// For a prompt with known answers, whether the reply gives one (`ReplyAnswer`).
        public var right: Bool?
    }

    /// Per token of `reply`: whether it ends a run of `run` tokens that already ended earlier in it.
    public static func repeated(_ reply: [Int32], run: Int = repeatRun) -> [Bool] {
        var flags = [Bool](repeating: false, count: reply.count)
        guard run >= 1, reply.count > run else { return flags }
        var seen = Set<ArraySlice<Int32>>()
        for end in run...reply.count where !seen.insert(reply[end - run..<end]).inserted { flags[end - 1] = true }
        return flags
    }

    /// How many tokens of `reply` end a run of `run` tokens that already ended earlier in it.
    public static func repeatedTokens(_ reply: [Int32], run: Int = repeatRun) -> Int { repeated(reply, run: run).filter { $0 }.count }

    /// The end-of-turn probability at which the full model counts as ending a reply.
    public static let endProbability = 0.5

    /// One reply token as the full model judges it: −log p(token), and the probability it gives
    /// ending the turn there instead.
    public struct JudgedToken: Sendable, Equatable {
        public var nll: Double
        public var end: Double
    }

    public static let itemHeader = "method,budget,kv_policy,stand_ins,prompt,tokens,hit_limit,repeated_tokens,judge_nll_sum,judge_nll_new_sum,full_would_end"

    /// The table (repeated_share, limit_share, tokens, judge_nll, judge_nll_new, limit_full_would_end), the number of prompts, one
    /// `itemHeader` row per cell and prompt (header first), and one JSON line per cell and
    /// prompt with the reply's text.
    public static func run(prompts selection: ChatPromptSelection, grid: EvalGrid, sampling: SamplingParameters, maxTokens: Int, lanes: Int,
                           model loadModel: () throws -> LanguageModel, report: Reporter) throws -> (table: EvalTable, prompts: Int, items: [String], replies: [String]) {
        guard selection.turn == .first else { throw ToolError.usage("buddy eval replies samples first turns only") }
        let prompts = try selection.load()
        let model = try loadModel()
        var cells: [(method: String, budget: Double, standIns: (label: String, weights: StandIns?))] = []
        try grid.forEachCell(model: model, note: report.note) { mode, method, b in cells.append((method, b, mode)) }
        let laneCount = max(1, min(lanes, prompts.count * cells.count))
        let capacity = 2048, batchSize = 256
        // Per lane: a single-threaded session that samples as the chat does (prompt at full
        // depth) and one that judges at full depth.
        let samplers = (0..<laneCount).map { _ in
            let session = Session(model: model, capacity: capacity, threads: 1, batchSize: batchSize)
            session.policy = grid.kvPolicy
            session.promptDepth = .full
            session.head = grid.head
            return session
        }
        let judges = (0..<laneCount).map { _ in Session(model: model, capacity: capacity, threads: 1, batchSize: batchSize) }
        let promptIDs = prompts.map { model.chatPromptTokens(selection.messages($0.text)) }
        for (p, ids) in zip(prompts, promptIDs) where ids.count + maxTokens > capacity {
            throw ToolError("prompt \(p.id) is too long (\(ids.count) tokens) for a reply of \(maxTokens)")
        }
        let vocab = model.config.vocabSize
        let rows = (0..<laneCount).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: batchSize * vocab) }
        defer { rows.forEach { $0.deallocate() } }

        let bar = report.progress("replies", prompts.count * cells.count)
        let measured = try ThreadPool.mapItems(prompts.count * cells.count, lanes: laneCount, done: { bar.update($0, detail: "replies") }) { item, lane -> Reply in
            let (c, p) = (item / prompts.count, item % prompts.count)
            let session = samplers[lane]
            session.reset()
            session.standIns = cells[c].standIns.weights
            // A router of its own per reply, as a new chat starts: a steered router remembers
            // the entropies of earlier replies, which would tie each reply to the ones before it.
            session.selector = try grid.selector(method: cells[c].method, budget: cells[c].budget, model: model)
            var sampler = Sampler(sampling)
            var reply: [Int32] = []
            let stats = try session.generate(prompt: promptIDs[p], maxTokens: maxTokens, sampler: &sampler) { token in
                reply.append(token.id)
                return true
            }
            var r = Reply()
            r.tokens = reply.count
            r.hitLimit = stats.stopReason != .endOfTurn
            r.layerSum = stats.layerSum
            let copied = repeated(reply)
            r.repeatedTokens = copied.filter { $0 }.count
            let judged = try judge(prompt: promptIDs[p], reply: reply, judge: judges[lane], rows: rows[lane])
            r.judgeNLLSum = judged.reduce(0) { $0 + $1.nll }
            r.judgeNewNLLSum = zip(judged, copied).reduce(0) { $0 + ($1.1 ? 0 : $1.0.nll) }
            r.fullModelWouldEnd = judged.contains { $0.end >= endProbability }
            r.text = model.tokenizer.decode(reply)
            if !prompts[p].answers.isEmpty { r.right = ReplyAnswer.gives(r.text, anyOf: prompts[p].answers) }
            return r
        }

        // Prompts with known answers add the share of replies that give one.
        let answered = prompts.contains { !$0.answers.isEmpty }
        var table = EvalTable(metrics: ["repeated_share", "limit_share", "tokens", "judge_nll", "judge_nll_new", "limit_full_would_end", "layers"] + (answered ? ["answers_right"] : []),
                              headers: ["repeated tokens", "replies at the token limit", "mean reply tokens", "full model's NLL (nats/token)", "the same, tokens not repeated",
                                        "of those at the limit, the full model would have ended", "layers per reply token"]
                                  + (answered ? ["answers right (first \(ReplyAnswer.window) words)"] : []),
                              formats: ["%.4f", "%.3f", "%.1f", "%.4f", "%.4f", "%.3f", "%.2f"] + (answered ? ["%.3f"] : []), kvPolicy: grid.kvPolicy.rawValue)
        var items = [itemHeader], replies: [String] = []
        for (c, cell) in cells.enumerated() {
            let rs = measured[c * prompts.count..<(c + 1) * prompts.count]
            let tokens = rs.reduce(0) { $0 + $1.tokens }
            let repeated = rs.reduce(0) { $0 + $1.repeatedTokens }
            let nll = rs.reduce(0) { $0 + $1.judgeNLLSum }, newNLL = rs.reduce(0) { $0 + $1.judgeNewNLLSum }
            let limited = rs.filter(\.hitLimit).count, missedEnds = rs.filter { $0.hitLimit && $0.fullModelWouldEnd }.count
            let layers = rs.reduce(0) { $0 + $1.layerSum }
            table.add(cell.method, cell.budget, [Double(repeated) / Double(max(tokens, 1)), Double(limited) / Double(rs.count),
                                                 Double(tokens) / Double(rs.count), nll / Double(max(tokens, 1)),
                                                 newNLL / Double(max(tokens - repeated, 1)), Double(missedEnds) / Double(max(limited, 1)),
                                                 Double(layers) / Double(max(tokens, 1))]
                                                 + (answered ? [Double(rs.filter { $0.right == true }.count) / Double(max(rs.filter { $0.right != nil }.count, 1))] : []),
                      standIns: cell.standIns.label)
            for (p, r) in zip(prompts, rs) {
                items.append(String(format: "%@,%.2f,%@,%@,%@,%d,%d,%d,%.6f,%.6f,%d", cell.method, cell.budget, grid.kvPolicy.rawValue, cell.standIns.label,
                                    selection.itemKey(p), r.tokens, r.hitLimit ? 1 : 0, r.repeatedTokens, r.judgeNLLSum, r.judgeNewNLLSum, r.fullModelWouldEnd ? 1 : 0))
                replies.append("{\"method\":\(jsonString(cell.method)),\"budget\":\(cell.budget),\"stand_ins\":\(jsonString(cell.standIns.label)),"
                               + "\"prompt\":\(jsonString(p.id)),\"tokens\":\(r.tokens),\"hit_limit\":\(r.hitLimit),\"repeated_tokens\":\(r.repeatedTokens),"
                               + (r.right.map { "\"right\":\($0)," } ?? "") + "\"text\":\(jsonString(r.text))}")
            }
        }
        return (table, prompts.count, items, replies)
    }

    /// Each reply token under the full model (every layer, no stand-ins), teacher-forced in
    /// batches: the judge of whether a reply still reads as the model's own language, and of
    /// where the full model would have ended it.
    public static func judge(prompt: [Int32], reply: [Int32], judge: Session, rows: UnsafeMutablePointer<Float>) throws -> [JudgedToken] {
        guard !reply.isEmpty else { return [] }
        judge.selector = nil
        judge.standIns = nil
        judge.reset()
        let vocab = judge.model.config.vocabSize
        let stops = judge.model.stopTokens
        func nll(_ logits: UnsafePointer<Float>, _ token: Int32) -> JudgedToken {
            let lse = LogProbabilities.logSumExp(logits, count: vocab)
            return JudgedToken(nll: lse - Double(logits[Int(token)]), end: stops.reduce(0) { $0 + exp(Double(logits[Int($1)]) - lse) })
        }
        try judge.evaluate(prompt)
        var out = [nll(judge.decode.logits, reply[0])]
        // Rows of the chunk reply[s..<e] predict reply[s + 1 ..< e + 1].
        var s = 0
        while s + 1 < reply.count {
            let e = min(s + judge.batch.maxTokens, reply.count - 1)
            try judge.evaluate(prompt + reply[0..<e])
            judge.model.transformer.batchLogitsAll(n: e - s, judge.batch, rows)
            for i in 0..<(e - s) { out.append(nll(rows + i * vocab, reply[s + i + 1])) }
            s = e
        }
        return out
    }
}

import Foundation

/// A chat prompt set such as MT-Bench's questions (JSON lines with `question_id` and `turns`);
/// only first turns are used. The set splits in two by position in the file: even positions
/// train (router and budget predictor), odd positions are held out for evaluation, so every
/// category of MT-Bench (blocks of ten) appears on both sides.
public struct ChatPrompt: Sendable, Equatable {
    public let id: String
    public let category: String
    public let text: String
    /// The question's second user turn, if it has one (MT-Bench asks a follow-up).
    public let followUp: String?
    /// Short answers any of which makes a reply right (`"answers"`, a set of simple questions
    /// with known answers); empty for open prompts such as MT-Bench's.
    public var answers: [String] = []
}

public enum ChatPromptSplit: String, Sendable, CaseIterable {
    case train, heldout, all
}

public enum ChatPromptSet {
    public struct ParseError: Error, CustomStringConvertible {
        public let line: Int
        public let reason: String
        public var description: String { "chat prompt file, line \(line): \(reason)" }
    }

    public static func parse(_ text: String, split: ChatPromptSplit = .all) throws -> [ChatPrompt] {
        var prompts: [ChatPrompt] = []
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            guard let obj = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8)) as? [String: Any] else {
                throw ParseError(line: i + 1, reason: "not a JSON object")
            }
            guard let turns = obj["turns"] as? [String], let first = turns.first, !first.isEmpty else {
                throw ParseError(line: i + 1, reason: "missing a non-empty \"turns\" list of strings")
            }
            let id = (obj["question_id"] as? NSNumber)?.stringValue ?? (obj["question_id"] as? String) ?? "\(i + 1)"
            let second = turns.count > 1 && !turns[1].isEmpty ? turns[1] : nil
            var prompt = ChatPrompt(id: id, category: obj["category"] as? String ?? "", text: first, followUp: second)
            if let answers = obj["answers"] {
                guard let list = answers as? [String], !list.isEmpty,
                      list.allSatisfy({ !ReplyAnswer.words($0).isEmpty }) else {
                    throw ParseError(line: i + 1, reason: "\"answers\" must be a non-empty list of strings with letters or digits")
                }
                prompt.answers = list
            }
            prompts.append(prompt)
        }
        switch split {
        case .all: return prompts
        case .train: return prompts.indices.filter { $0 % 2 == 0 }.map { prompts[$0] }
        case .heldout: return prompts.indices.filter { $0 % 2 == 1 }.map { prompts[$0] }
        }
    }
}

/// How far a routed model's next-token distributions are from the full model's along a
/// fixed reply (teacher-forced): KL(full ‖ routed) in nats and top-1 agreement.
public struct ChatDivergence: Sendable {
    public var klSum = 0.0
    public var agreements = 0
    public var tokens = 0
    public init(klSum: Double = 0, agreements: Int = 0, tokens: Int = 0) {
        self.klSum = klSum; self.agreements = agreements; self.tokens = tokens
    }
    public var meanKL: Double { tokens > 0 ? klSum / Double(tokens) : .nan }
    public var top1Agreement: Double { tokens > 0 ? Double(agreements) / Double(tokens) : .nan }
    public mutating func add(_ o: ChatDivergence) { klSum += o.klSum; agreements += o.agreements; tokens += o.tokens }
}

/// One reply position of a comparison, kept when `ChatEvaluator.recordsPositions` is set (what
/// `buddy eval chat --positions` writes): the divergence there and what a running model could
/// see of its own output without the full model.
public struct ChatPosition: Sendable, Equatable {
    /// KL(full ‖ routed) in nats
    public let kl: Double
    /// entropy of the routed distribution, nats
    public let routedEntropy: Double
    /// the routed log-probability of the reference reply's token at this position
    public let routedLogProbability: Double
    /// entropy of the full model's distribution, nats
    public let referenceEntropy: Double
}

/// The full model's greedy reply to a prompt and its distributions along it; the reference a
/// routed model is compared with. Rows are log-softmax over the vocabulary.
public struct ChatReference {
    public let prompt: [Int32]
    public let reply: [Int32]
    /// [reply.count × vocab] full-depth log-probabilities predicting reply[t]
    public let logProbs: [Float]
    /// [reply.count] argmax of each full-depth row
    public let argmax: [Int32]
}

/// Builds chat references and compares routed runs with them. The prompt is evaluated as in
/// generation (one routing decision per prompt chunk); every reply token is a decode step
/// with its own decision, as in the chat.
public final class ChatEvaluator {
    public let session: Session
    /// Keep every reply position of the last `compare` in `positions` (off by default: it costs
    /// two more passes over the vocabulary per position).
    public var recordsPositions = false
    /// The last `compare`'s positions, in reply order, when `recordsPositions` is set.
    public private(set) var positions: [ChatPosition] = []
    /// [session.batch.maxTokens × vocab] logits of a reply's rows (batched comparisons)
    private let rows: UnsafeMutablePointer<Float>

    public init(session: Session) {
        self.session = session
        rows = .allocate(capacity: session.batch.maxTokens * session.model.config.vocabSize)
    }
    deinit { rows.deallocate() }

    /// Token ids of one user turn in the model's chat template (with its default system prompt).
    public func promptTokens(_ text: String) -> [Int32] { promptTokens([ChatMessage(role: .user, content: text)]) }

    /// A follow-up turn: the question, the assistant's first reply (token ids, as the model
    /// wrote them), then the follow-up question, ready for the assistant's second reply.
    public func followUpTokens(question: String, firstReply: [Int32], followUp: String, system: String? = nil) -> [Int32] {
        promptTokens(ChatMessage.opening(system: system, user: question)
                     + [ChatMessage(role: .assistant, content: session.model.tokenizer.decode(firstReply)),
                        ChatMessage(role: .user, content: followUp)])
    }

    /// A conversation so far, rendered with the model's template and ready for the assistant's turn.
    public func promptTokens(_ messages: [ChatMessage]) -> [Int32] { session.model.chatPromptTokens(messages) }

    /// The full-depth greedy reply (up to maxTokens, ending before an end-of-turn token) and
    /// the distributions along it. Runs with the session's selector removed.
    public func reference(prompt: [Int32], maxTokens: Int) throws -> ChatReference {
        let saved = session.selector
        session.selector = nil
        defer { session.selector = saved }
        session.reset()
        let vocab = session.model.config.vocabSize
        var reply: [Int32] = [], rows: [Float] = [], argmax: [Int32] = []
        rows.reserveCapacity(maxTokens * vocab)
        try session.evaluate(prompt)
        while reply.count < maxTokens {
            let logits = session.decode.logits
            var best = 0
            for i in 1..<vocab where logits[i] > logits[best] { best = i }
            if session.model.stopTokens.contains(Int32(best)) { break }
            let lse = LogProbabilities.logSumExp(logits, count: vocab)
            for i in 0..<vocab { rows.append(Float(Double(logits[i]) - lse)) }
            reply.append(Int32(best))
            argmax.append(Int32(best))
            if session.tokens.count >= session.capacity { break }
            if reply.count < maxTokens { try session.step(Int32(best)) }
        }
        return ChatReference(prompt: prompt, reply: reply, logProbs: rows, argmax: argmax)
    }

    /// Teacher-forces the reference reply through the session as configured (selector,
    /// policy) and measures its divergence from the reference. `batched` runs the reply as
    /// one chunk after the prompt: the same numbers for the full model, a static layer set or
    /// a `RowwiseLayerSelector` (one decision per row), but not for other per-token routers.
    public func compare(_ ref: ChatReference, batched: Bool = false) throws -> ChatDivergence {
        session.reset()
        positions.removeAll(keepingCapacity: true)
        var d = ChatDivergence()
        guard !ref.reply.isEmpty else { return d }
        let vocab = session.model.config.vocabSize
        try session.evaluate(ref.prompt)
        // Reply token 0 is predicted by the prompt's last position.
        add(session.decode.logits, t: 0, ref, &d)
        let m = ref.reply.count - 1
        guard m >= 1 else { return d }
        if batched && m <= session.batch.maxTokens {
            try session.evaluate(ref.prompt + ref.reply[0..<m], as: .reply(oneDecisionPerToken: session.selector is RowwiseLayerSelector))
            session.model.transformer.batchLogitsAll(n: m, session.batch, rows)
            for t in 1...m { add(rows + (t - 1) * vocab, t: t, ref, &d) }
        } else {
            for t in 1...m {
                try session.step(ref.reply[t - 1])
                add(session.decode.logits, t: t, ref, &d)
            }
        }
        return d
    }

    /// Which part of a conversation the layer sets of `compare(_:sets:part:)` serve.
    public enum SetPart: Sendable {
        /// Each set is the prompt's; the reply is routed row by row by the session's selector,
        /// which decides once, on the first set's run, for every set (its decisions read only
        /// layer 0, which every set runs alike).
        case prompt
        /// The prompt runs at full depth, once; every reply row runs the set.
        case reply
    }

    /// `compare` for several layer sets (masks over every layer) on one conversation, with the
    /// work they share done once: the first set runs in full, keeping the residual streams
    /// before every layer, and each other set restarts from the streams before the first layer
    /// where it differs from the first (below it the cache holds the same values for both).
    /// Each divergence equals `compare`'s with that set alone: as the prompt set of the
    /// session's selector (`.prompt`), or as the selector's one choice for the reply with the
    /// prompt at full depth (`.reply`). Nil when this cannot share (a prompt or reply longer
    /// than one batch, a reply of one token, a selector that watches outputs or does not
    /// decide row by row, positions being recorded): call `compare` per set then.
    public func compare(_ ref: ChatReference, sets: [[Bool]], part: SetPart) -> [ChatDivergence]? {
        let t = session.model.transformer, b = session.batch, cache = session.cache
        let L = session.model.config.layers, dim = session.model.config.dim, vocab = session.model.config.vocabSize
        let p = ref.prompt.count, m = ref.reply.count - 1
        guard let base = sets.first, sets.allSatisfy({ $0.count == L && $0[0] && $0[L - 1] }),
              p >= 1, p <= b.maxTokens, m >= 1, m <= b.maxTokens, !recordsPositions,
              !(session.selector is OutputWatchingSelector), part == .reply || session.selector is RowwiseLayerSelector else { return nil }
        // The token positions exactly as `compare` hands them to the model.
        let tokens = ref.prompt + ref.reply[0..<m]
        // [layers × rows × dim] the streams entering each layer, prompt and reply
        let promptStreams = UnsafeMutablePointer<Float>.allocate(capacity: L * p * dim)
        let replyStreams = UnsafeMutablePointer<Float>.allocate(capacity: L * m * dim)
        defer { promptStreams.deallocate(); replyStreams.deallocate() }
        func keep(_ streams: UnsafeMutablePointer<Float>, _ n: Int) -> (Int) -> Void {
            { l in (streams + l * n * dim).update(from: b.x, count: n * dim) }
        }
        func restore(_ streams: UnsafeMutablePointer<Float>, _ n: Int, before l: Int) {
            b.x.update(from: streams + l * n * dim, count: n * dim)
        }
        func replyRows(_ d: inout ChatDivergence) {
            t.batchLogitsAll(n: m, b, rows)
            for i in 1...m { add(rows + (i - 1) * vocab, t: i, ref, &d) }
        }

        // The first set, in full, as `compare` runs it.
        session.reset()
        var first = ChatDivergence()
        t.routedForward(tokens[0..<p], start: 0, b, cache, routing: part == .prompt ? .fixed(base) : .allLayers, policy: session.policy,
                        beforeLayer: keep(promptStreams, p))
        t.batchLogits(row: p - 1, b, session.decode)
        add(session.decode.logits, t: 0, ref, &first)
        let afterPrompt = first
        let decided = t.routedForward(tokens[p..<p + m], start: p, b, cache,
                                      routing: part == .prompt ? .session(session.selector, perRow: true) : .fixed(base),
                                      policy: session.policy, beforeLayer: keep(replyStreams, m))
        replyRows(&first)

        var out = [first]
        for set in sets.dropFirst() {
            guard let f = LayerBudget.firstDifference(set, base) else { out.append(first); continue }
            var d = ChatDivergence()
            switch part {
            case .prompt:
                restore(promptStreams, p, before: f)
                t.routedForward(tokens[0..<p], start: 0, b, cache, routing: .fixed(set), policy: session.policy, fromLayer: f)
                t.batchLogits(row: p - 1, b, session.decode)
                add(session.decode.logits, t: 0, ref, &d)
                restore(replyStreams, m, before: f)
                t.routedForward(tokens[p..<p + m], start: p, b, cache, routing: .rows(decided), policy: session.policy, fromLayer: f)
            case .reply:
                // The prompt is the same for every set, and so is the row predicting reply token 0.
                d = afterPrompt
                restore(replyStreams, m, before: f)
                t.routedForward(tokens[p..<p + m], start: p, b, cache, routing: .fixed(set), policy: session.policy, fromLayer: f)
            }
            replyRows(&d)
            out.append(d)
        }
        // The cache now holds the last set's conversation, which the session's tokens do not
        // describe: start the next use afresh.
        session.reset()
        return out
    }

    /// KL(reference row t ‖ logits) and top-1 agreement for one reply position.
    private func add(_ logits: UnsafePointer<Float>, t: Int, _ ref: ChatReference, _ d: inout ChatDivergence) {
        let vocab = session.model.config.vocabSize
        var best = 0
        let kl = ref.logProbs.withUnsafeBufferPointer {
            LogProbabilities.divergence(referenceLogProbs: $0.baseAddress! + t * vocab, logits: logits, count: vocab)
        }
        for i in 1..<vocab where logits[i] > logits[best] { best = i }
        d.klSum += max(0, kl)
        if Int32(best) == ref.argmax[t] { d.agreements += 1 }
        d.tokens += 1
        if recordsPositions {
            let lse = LogProbabilities.logSumExp(logits, count: vocab)
            let routedEntropy = LogProbabilities.entropy(logits, count: vocab)
            var referenceEntropy = 0.0
            for i in 0..<vocab {
                let lp = Double(ref.logProbs[t * vocab + i])
                if lp > -30 { referenceEntropy -= exp(lp) * lp }
            }
            positions.append(ChatPosition(kl: max(0, kl), routedEntropy: routedEntropy,
                                          routedLogProbability: Double(logits[Int(ref.reply[t])]) - lse, referenceEntropy: referenceEntropy))
        }
    }

}

extension LanguageModel {
    /// A conversation so far, rendered with the model's chat template and ready for the
    /// assistant's turn, as token ids (BOS first where the tokenizer adds one).
    public func chatPromptTokens(_ messages: [ChatMessage]) -> [Int32] {
        var ids = tokenizer.encode(template.render(messages), parseSpecial: true)
        if tokenizer.addBOS, let bos = tokenizer.bosID { ids.insert(bos, at: 0) }
        return ids
    }
}

/// Whether a reply gives a known short answer: one of the answers, as whole words (letters and
/// digits, case ignored), among the reply's first `window` words. A small model restates the
/// question and then answers ("The capital of France is Paris, …"), so the answer comes early;
/// a reply that names it only later, after a wrong one, does not count.
public enum ReplyAnswer {
    public static let window = 40

    /// Lower-cased runs of letters and digits.
    public static func words(_ text: String) -> [Substring] {
        text.lowercased().split { !($0.isLetter || $0.isNumber) }
    }

    public static func gives(_ reply: String, anyOf answers: [String], window: Int = ReplyAnswer.window) -> Bool {
        let head = Array(words(reply).prefix(window))
        return answers.contains { answer in
            let w = words(answer)
            guard !w.isEmpty, head.count >= w.count else { return false }
            return (0...(head.count - w.count)).contains { start in head[start..<start + w.count].elementsEqual(w) }
        }
    }
}

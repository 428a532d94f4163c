import BuddyCore
import BuddyRouting
import Foundation

/// `buddy train gate`: one table of layer sets for prose and one for conversation, and the
/// context gate that picks between them (docs/TRAINING.md).
public enum GateTraining {
    public struct Options {
        public var data: String
        public var chatData: String
        public var textCandidates: String?
        public var chatCandidates: String?
        public var gateTextChunks: Int = 16
        public var gateChatPrompts: Int = 16
        public var validationSkipChunks: Int = 16
        public var validationChunks: Int = 4
        public var validationChatSkip: Int = 16
        public var validationChatPrompts: Int = 24
        public var replyTokens: Int = 48
        public var gateExtraChunks: String?
        public var validationExtraChunks: String?
        public var conversationWeight: Double = 0.5
        public var extraProse: String?
        public var extraProseSkip: Int = 1000
        public var extraProseCount: Int = 400
        public var tablesFrom: String?
        public var minKept: Int = 14
        public var base: String = "buddy"
        public var out: String
        public var threads: Int = 2
        public init(data: String, chatData: String, textCandidates: String? = nil, chatCandidates: String? = nil, gateTextChunks: Int = 16, gateChatPrompts: Int = 16, validationSkipChunks: Int = 16, validationChunks: Int = 4, validationChatSkip: Int = 16, validationChatPrompts: Int = 24, replyTokens: Int = 48, gateExtraChunks: String? = nil, validationExtraChunks: String? = nil, conversationWeight: Double = 0.5, extraProse: String? = nil, extraProseSkip: Int = 1000, extraProseCount: Int = 400, tablesFrom: String? = nil, minKept: Int = 14, base: String = "buddy", out: String, threads: Int = 2) {
            self.data = data
            self.chatData = chatData
            self.textCandidates = textCandidates
            self.chatCandidates = chatCandidates
            self.gateTextChunks = gateTextChunks
            self.gateChatPrompts = gateChatPrompts
            self.validationSkipChunks = validationSkipChunks
            self.validationChunks = validationChunks
            self.validationChatSkip = validationChatSkip
            self.validationChatPrompts = validationChatPrompts
            self.replyTokens = replyTokens
            self.gateExtraChunks = gateExtraChunks
            self.validationExtraChunks = validationExtraChunks
            self.conversationWeight = conversationWeight
            self.extraProse = extraProse
            self.extraProseSkip = extraProseSkip
            self.extraProseCount = extraProseCount
            self.tablesFrom = tablesFrom
            self.minKept = minKept
            self.base = base
            self.out = out
            self.threads = threads
        }

        public func validate() throws {
            guard gateTextChunks >= 1, gateChatPrompts >= 1 else { throw ToolError.usage("--gate-text-chunks and --gate-chat-prompts must be at least 1") }
            guard validationSkipChunks >= 0, validationChunks >= 1, validationChatSkip >= 0, validationChatPrompts >= 1 else {
                throw ToolError.usage("validation ranges must be non-negative and not empty")
            }
            guard (1...256).contains(replyTokens) else { throw ToolError.usage("--reply-tokens must be 1...256") }
            if tablesFrom == nil {
                guard textCandidates != nil, chatCandidates != nil else { throw ToolError.usage("--text-candidates and --chat-candidates are needed (or --tables-from)") }
            } else {
                guard textCandidates == nil, chatCandidates == nil else { throw ToolError.usage("--tables-from keeps its tables: give no --text-candidates or --chat-candidates") }
            }
            guard extraProseSkip >= 0, extraProseCount >= 1 else { throw ToolError.usage("--extra-prose-skip must be >= 0 and --extra-prose-count >= 1") }
            guard conversationWeight > 0, conversationWeight < 1 else { throw ToolError.usage("--conversation-weight must be between 0 and 1") }
            guard minKept >= 1 else { throw ToolError.usage("--min-kept must be at least 1") }
            _ = try gateExtraChunks.map { try TrainingData.chunkRange($0, "--gate-extra-chunks") }
            _ = try validationExtraChunks.map { try TrainingData.chunkRange($0, "--validation-extra-chunks") }
            try validateThreads(threads)
        }
    }

    /// Chooses the tables (or keeps those of --tables-from), fits the gate and writes the router.
    public static func run(_ o: Options, model: LanguageModel, report: Reporter) throws {
        let c = model.config, L = c.layers, routable = L - 2, minKept = o.minKept, threads = o.threads
        guard minKept < routable else { throw ToolError("--min-kept must be below the \(routable) routable layers") }
        guard let baseModule = try Routers.make(o.base, model: model) as? DecisionModule else { throw ToolError("--base must be a decision module") }
        /// Each k's set among the candidates' by validation KL on `seqs`, reported as a table.
        func validatedTable(_ label: String, _ cands: [(name: String, sets: [Int: [Int]])], _ seqs: [SearchSequence]) -> [Float] {
            let ks = Array((minKept..<routable).reversed())
            let search = TrainingData.search(model: model, sequences: seqs, threads: threads, label: label, report: report)
            let distinct = ks.reduce(0) { n, k in n + Set(cands.map { $0.sets[k]! }).count }
            let bar = report.progress("validating \(label) sets", distinct)
            let choice = ContextGateTraining.chooseSets(search: search, candidates: cands.map(\.sets), ks: ks) { bar.update($0, detail: "") }
            bar.update(distinct, detail: "\(search.scoredCount) positions")
            report.line("\(label): validation KL from full depth (mean per scored position), chosen set marked *")
            report.line("| k | budget | " + cands.map(\.name).joined(separator: " | ") + " |")
            report.line("|---|---|" + String(repeating: "---|", count: cands.count))
            var sets = cands[0].sets
            for k in ks {
                let ch = choice[k]!
                sets[k] = cands[ch.chosen].sets[k]
                let cells = ch.kl.indices.map { String(format: "%.4f", ch.kl[$0]) + ($0 == ch.chosen ? "*" : "") }
                report.line(String(format: "| %d | %.2f | ", k, Double(k) / Double(routable)) + cells.joined(separator: " | ") + " |")
            }
            return DecisionModule.priorTable(sets: sets, fallback: baseModule.weights.prior, routable: routable)
        }

        // Candidates or kept tables first, so that a bad name fails before any work.
        var kept: (prose: [Float], conversation: [Float])?
        if let tablesFrom = o.tablesFrom {
            guard let m = try Routers.make(tablesFrom, model: model) as? DecisionModule, let p = m.weights.priorByCount, let g = m.weights.gate else {
                throw ToolError("--tables-from must be a decision module with a context gate")
            }
            kept = (p, g.priorByCount)
        }
        let competing = kept != nil ? nil : (prose: try TrainingData.candidateSets(o.textCandidates!, flag: "--text-candidates", model: model),
                                             conversation: try TrainingData.candidateSets(o.chatCandidates!, flag: "--chat-candidates", model: model))
        let t0 = Date()

        // 1. Validation: one set per k and kind of context (or the tables of --tables-from).
        let ids = try TrainingData.textTokens(o.data, model: model)
        let valText = try TrainingData.textSequences(ids, chunks: o.validationSkipChunks..<(o.validationSkipChunks + o.validationChunks),
                                                     length: 512, firstScored: 256, path: o.data)
        let valChat = try TrainingData.chatSequences(model: model, path: o.chatData, prompts: o.validationChatSkip..<(o.validationChatSkip + o.validationChatPrompts),
                                                     replyTokens: o.replyTokens, threads: threads, report: report)
        let tables = kept ?? (validatedTable("prose", competing!.prose, valText),
                              validatedTable("conversation", competing!.conversation, valChat))

        // 2. The gate.
        let scratch = PerplexityEvaluator(model: model, contextSize: 512, threads: threads)
        func pooled(_ seqs: [SearchSequence], stride: Int) -> [[Float]] {
            seqs.flatMap { ContextGateTraining.pooledInputs(model: model, tokens: $0.tokens, first: 0, stride: stride, scratch: scratch) }
        }
        let gateText = try TrainingData.textSequences(ids, chunks: 0..<o.gateTextChunks, length: 512, firstScored: 256, path: o.data)
        let gateChat = try TrainingData.chatSequences(model: model, path: o.chatData, prompts: 0..<o.gateChatPrompts, replyTokens: o.replyTokens,
                                                      threads: threads, report: report)
        var prose = pooled(gateText, stride: 8)
        if let gateExtraChunks = o.gateExtraChunks {
            let extra = try TrainingData.textSequences(ids, chunks: try TrainingData.chunkRange(gateExtraChunks, "--gate-extra-chunks"), length: 512, firstScored: 256, path: o.data)
            prose += pooled(extra, stride: 8)
        }
        let conversation = pooled(gateChat, stride: 2)
        if let extraProse = o.extraProse {
            guard let text = try? String(contentsOfFile: extraProse, encoding: .utf8) else { throw ToolError("cannot read '\(extraProse)'") }
            let tasks: [HellaSwagTask]
            do { tasks = try HellaSwagTask.parse(text) } catch { throw ToolError("\(extraProse): \(error)") }
            let chosen = tasks.dropFirst(o.extraProseSkip).prefix(o.extraProseCount)
            guard !chosen.isEmpty else { throw ToolError("'\(extraProse)' has no tasks after the first \(o.extraProseSkip)") }
            for t in chosen {
                let ids = Array(model.tokenizer.encode(t.context + " " + t.endings[t.gold], parseSpecial: false).prefix(512))
                guard ids.count >= 2 else { continue }
                prose += ContextGateTraining.pooledInputs(model: model, tokens: ids, first: 0, stride: 4, scratch: scratch)
            }
        }
        let fit = ContextGateTraining.fitGate(module: baseModule, positives: conversation, negatives: prose, positiveWeight: Float(o.conversationWeight))
        // Every position of each validation conversation; its replies' positions are a suffix.
        let valChatRows = valChat.map { ContextGateTraining.pooledInputs(model: model, tokens: $0.tokens, first: 0, stride: 1, scratch: scratch) }
        let valChatPooled = valChatRows.flatMap { $0 }
        let valRates = ContextGateTraining.hitRates(gate: fit.gate, module: baseModule, positives: valChatPooled, negatives: pooled(valText, stride: 1))
        let valAccuracy = (valRates.positives + valRates.negatives) / 2
        report.line(String(format: "gate: %d prose and %d conversation positions; balanced accuracy %.4f (train), %.4f (validation, every position: prose %.4f, conversation %.4f right)",
                           prose.count, conversation.count, fit.trainAccuracy, valAccuracy, valRates.negatives, valRates.positives))
        let replies = zip(valChat, valChatRows).flatMap { s, rows in rows[s.scored.lowerBound...] }
        let replyRate = ContextGateTraining.hitRates(gate: fit.gate, module: baseModule, positives: Array(replies), negatives: []).positives
        var findings = [String(format: "conversation %.4f right at validation reply positions", replyRate)]
        if let validationExtraChunks = o.validationExtraChunks {
            let range = try TrainingData.chunkRange(validationExtraChunks, "--validation-extra-chunks")
            let extra = try TrainingData.textSequences(ids, chunks: range, length: 512, firstScored: 256, path: o.data)
            let prose = ContextGateTraining.hitRates(gate: fit.gate, module: baseModule, positives: [], negatives: pooled(extra, stride: 4)).negatives
            findings.append(String(format: "prose %.4f right on text chunks %@", prose, validationExtraChunks))
        }
        for f in findings { report.line("gate: " + f) }

        // 3. The module.
        var w = baseModule.weights
        w.priorByCount = tables.prose
        w.gate = DecisionModule.ContextGate(weights: fit.gate.weights, bias: fit.gate.bias, priorByCount: tables.conversation)
        let module = try DecisionModule(name: "buddy", layers: L, dim: c.dim, kvDim: c.kvDim, hidden: baseModule.hidden, weights: w)
        let sources = o.tablesFrom.map { "--tables-from \($0)" } ?? "--text-candidates \(o.textCandidates!) --chat-candidates \(o.chatCandidates!)"
        let notes = String(format: "buddy train gate %@ --gate-text-chunks %d --gate-chat-prompts %d --validation-skip-chunks %d --validation-chunks %d --validation-chat-skip %d --validation-chat-prompts %d --reply-tokens %d --conversation-weight %g --min-kept %d --base %@; gate balanced accuracy %.4f train, %.4f validation; %.0f s",
                           sources, o.gateTextChunks, o.gateChatPrompts, o.validationSkipChunks, o.validationChunks, o.validationChatSkip,
                           o.validationChatPrompts, o.replyTokens, o.conversationWeight, minKept, o.base, fit.trainAccuracy, valAccuracy, Date().timeIntervalSince(t0))
        let moreText = o.gateExtraChunks.map { "; more gate text: chunks \($0)" } ?? ""
        let hellaSwag = o.extraProse.map { String(format: "; extra prose: %@ tasks %d..<%d", $0, o.extraProseSkip, o.extraProseSkip + o.extraProseCount) } ?? ""
        let extras = moreText + findings.map { "; " + $0 }.joined() + hellaSwag
        try RouterFile.save(module, model: model, notes: notes + extras, to: o.out)
        report.line("written to \(o.out)")
    }
}

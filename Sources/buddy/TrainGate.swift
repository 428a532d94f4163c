import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

struct TrainGate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gate",
        abstract: "Give the Decision Module one table of layer sets for prose and one for conversation, and the gate that picks between them.",
        discussion: """
            Which layers a budget should drop depends on the kind of context: a
            conversation can spare layers that running prose cannot
            (docs/TRAINING.md). This command
            1. picks, for every k from --min-kept to all-but-one, the prose
               table's set among the --text-candidates routers' sets by mean KL
               from full depth on validation text (--validation-chunks
               WikiText-2 chunks of 512 tokens after --validation-skip-chunks,
               second halves scored, as perplexity scores them), and the
               conversation table's set among the --chat-candidates on the full
               model's greedy replies to the train-split prompts after
               --validation-chat-skip (--validation-chat-prompts of them);
            2. fits the gate, a logistic regression on the pooled first-layer
               keys and values (the Decision Module's context summary), on
               every 8th position of --gate-text-chunks text chunks (prose) and
               every 2nd position of the first --gate-chat-prompts train-split
               conversations;
            3. writes --base's module with the two tables and the gate (router
               format 3 and later).
            Below --min-kept both tables take their first candidate's sets.
            The shipped router was made with (the candidate files come from
            three runs of `buddy train sets`, docs/TRAINING.md):
              buddy train gate --data ../shared/data/wikitext2_valid.txt \\
                --chat-data ../shared/data/mt_bench_questions.jsonl \\
                --base sets-mixed.json \\
                --text-candidates sets-text.json,sleb,shortgpt,sets-mixed.json \\
                --chat-candidates sets-chat.json,sets-mixed.json,sleb,shortgpt \\
                --gate-text-chunks 14 --validation-skip-chunks 14 \\
                --validation-chunks 6 --out routers/buddy-router.json
            """)

    @Option(name: .long, help: "WikiText-2 validation file (gate training and validation text).")
    var data: String
    @Option(name: .long, help: "Chat prompts (MT-Bench JSON lines); the train split (even positions) is used.")
    var chatData: String
    @Option(name: .long, help: "Comma-separated routers (names or files) whose sets compete for the prose table; the first also fills k below --min-kept.")
    var textCandidates: String?
    @Option(name: .long, help: "Comma-separated routers whose sets compete for the conversation table.")
    var chatCandidates: String?
    @Option(name: .long, help: "Text chunks of 512 tokens (from the start of --data) for fitting the gate.")
    var gateTextChunks: Int = 16
    @Option(name: .long, help: "Train-split conversations (from the first) for fitting the gate.")
    var gateChatPrompts: Int = 16
    @Option(name: .long, help: "512-token chunks of --data skipped before the validation text.")
    var validationSkipChunks: Int = 16
    @Option(name: .long, help: "512-token chunks of validation text.")
    var validationChunks: Int = 4
    @Option(name: .long, help: "Train-split prompts skipped before the validation conversations.")
    var validationChatSkip: Int = 16
    @Option(name: .long, help: "Validation conversations.")
    var validationChatPrompts: Int = 24
    @Option(name: .long, help: "Reply tokens per conversation.")
    var replyTokens: Int = 48
    @Option(name: .long, help: "More 512-token chunks of --data as prose for fitting the gate, as FIRST..<END (e.g. 84..<164, past the chunks the evaluation scores).")
    var gateExtraChunks: String?
    @Option(name: .long, help: "More 512-token chunks of --data on which the gate's accuracy is validated, as FIRST..<END.")
    var validationExtraChunks: String?
    @Option(name: .long, help: "Share of the gate's training loss on the conversation class (the prose class has the rest).")
    var conversationWeight: Double = 0.5
    @Option(name: .long, help: "HellaSwag tasks file whose contexts (with their gold endings) are more prose for fitting the gate.")
    var extraProse: String?
    @Option(name: .long, help: "Tasks of --extra-prose skipped first (the evaluation uses the first 400).")
    var extraProseSkip: Int = 1000
    @Option(name: .long, help: "Tasks of --extra-prose used.")
    var extraProseCount: Int = 400
    @Option(name: .long, help: "A gated router whose two tables are kept as they are (skips the validation step; only the gate is refitted).")
    var tablesFrom: String?
    @Option(name: .long, help: "Smallest number of routable layers whose set is chosen on validation data.")
    var minKept: Int = 14
    @Option(name: .long, help: "Decision module whose normalisation and learned part are kept.")
    var base: String = "buddy"
    @Option(name: .long, help: "Where to write the router (written atomically).")
    var out: String
    @OptionGroup var modelOptions: ModelOptions

    func validate() throws {
        guard gateTextChunks >= 1, gateChatPrompts >= 1 else { throw ValidationError("--gate-text-chunks and --gate-chat-prompts must be at least 1") }
        guard validationSkipChunks >= 0, validationChunks >= 1, validationChatSkip >= 0, validationChatPrompts >= 1 else {
            throw ValidationError("validation ranges must be non-negative and not empty")
        }
        guard (1...256).contains(replyTokens) else { throw ValidationError("--reply-tokens must be 1...256") }
        if tablesFrom == nil {
            guard textCandidates != nil, chatCandidates != nil else { throw ValidationError("--text-candidates and --chat-candidates are needed (or --tables-from)") }
        } else {
            guard textCandidates == nil, chatCandidates == nil else { throw ValidationError("--tables-from keeps its tables: give no --text-candidates or --chat-candidates") }
        }
        guard extraProseSkip >= 0, extraProseCount >= 1 else { throw ValidationError("--extra-prose-skip must be >= 0 and --extra-prose-count >= 1") }
        guard conversationWeight > 0, conversationWeight < 1 else { throw ValidationError("--conversation-weight must be between 0 and 1") }
        guard minKept >= 1 else { throw ValidationError("--min-kept must be at least 1") }
        _ = try gateExtraChunks.map { try TrainingData.chunkRange($0, "--gate-extra-chunks") }
        _ = try validationExtraChunks.map { try TrainingData.chunkRange($0, "--validation-extra-chunks") }
        try modelOptions.validateThreads()
    }

    func run() throws {
        let model = try modelOptions.load()
        let c = model.config, L = c.layers, routable = L - 2
        guard minKept < routable else { throw CLIError("--min-kept must be below the \(routable) routable layers") }
        guard let baseModule = try Routers.make(base, model: model) as? DecisionModule else { throw CLIError("--base must be a decision module") }
        /// Each k's set among the candidates' by validation KL on `seqs`, reported as a table.
        func validatedTable(_ label: String, _ cands: [(name: String, sets: [Int: [Int]])], _ seqs: [SearchSequence]) -> [Float] {
            let ks = Array((minKept..<routable).reversed())
            let search = TrainingData.search(model: model, sequences: seqs, threads: modelOptions.threads, label: label)
            let distinct = ks.reduce(0) { n, k in n + Set(cands.map { $0.sets[k]! }).count }
            let bar = ProgressBar("validating \(label) sets", total: distinct)
            let choice = ContextGateTraining.chooseSets(search: search, candidates: cands.map(\.sets), ks: ks) { bar.update($0) }
            bar.update(distinct, detail: "\(search.scoredCount) positions")
            print("\(label): validation KL from full depth (mean per scored position), chosen set marked *")
            print("| k | budget | " + cands.map(\.name).joined(separator: " | ") + " |")
            print("|---|---|" + String(repeating: "---|", count: cands.count))
            var sets = cands[0].sets
            for k in ks {
                let ch = choice[k]!
                sets[k] = cands[ch.chosen].sets[k]
                let cells = ch.kl.indices.map { String(format: "%.4f", ch.kl[$0]) + ($0 == ch.chosen ? "*" : "") }
                print(String(format: "| %d | %.2f | ", k, Double(k) / Double(routable)) + cells.joined(separator: " | ") + " |")
            }
            return DecisionModule.priorTable(sets: sets, fallback: baseModule.weights.prior, routable: routable)
        }

        // Candidates or kept tables first, so that a bad name fails before any work.
        var kept: (prose: [Float], conversation: [Float])?
        if let tablesFrom {
            guard let m = try Routers.make(tablesFrom, model: model) as? DecisionModule, let p = m.weights.priorByCount, let g = m.weights.gate else {
                throw CLIError("--tables-from must be a decision module with a context gate")
            }
            kept = (p, g.priorByCount)
        }
        let competing = kept != nil ? nil : (prose: try TrainingData.candidateSets(textCandidates!, flag: "--text-candidates", model: model),
                                             conversation: try TrainingData.candidateSets(chatCandidates!, flag: "--chat-candidates", model: model))
        let t0 = Date()

        // 1. Validation: one set per k and kind of context (or the tables of --tables-from).
        let ids = try TrainingData.textTokens(data, model: model)
        let valText = try TrainingData.textSequences(ids, chunks: validationSkipChunks..<(validationSkipChunks + validationChunks),
                                                     length: 512, firstScored: 256, path: data)
        let valChat = try TrainingData.chatSequences(model: model, path: chatData, prompts: validationChatSkip..<(validationChatSkip + validationChatPrompts),
                                                     replyTokens: replyTokens, threads: modelOptions.threads)
        let tables = kept ?? (validatedTable("prose", competing!.prose, valText),
                              validatedTable("conversation", competing!.conversation, valChat))

        // 2. The gate.
        let scratch = PerplexityEvaluator(model: model, contextSize: 512, threads: modelOptions.threads)
        func pooled(_ seqs: [SearchSequence], stride: Int) -> [[Float]] {
            seqs.flatMap { ContextGateTraining.pooledInputs(model: model, tokens: $0.tokens, first: 0, stride: stride, scratch: scratch) }
        }
        let gateText = try TrainingData.textSequences(ids, chunks: 0..<gateTextChunks, length: 512, firstScored: 256, path: data)
        let gateChat = try TrainingData.chatSequences(model: model, path: chatData, prompts: 0..<gateChatPrompts, replyTokens: replyTokens, threads: modelOptions.threads)
        var prose = pooled(gateText, stride: 8)
        if let gateExtraChunks {
            let extra = try TrainingData.textSequences(ids, chunks: try TrainingData.chunkRange(gateExtraChunks, "--gate-extra-chunks"), length: 512, firstScored: 256, path: data)
            prose += pooled(extra, stride: 8)
        }
        let conversation = pooled(gateChat, stride: 2)
        if let extraProse {
            guard let text = try? String(contentsOfFile: extraProse, encoding: .utf8) else { throw CLIError("cannot read '\(extraProse)'") }
            let tasks: [HellaSwagTask]
            do { tasks = try HellaSwagTask.parse(text) } catch { throw CLIError("\(extraProse): \(error)") }
            let chosen = tasks.dropFirst(extraProseSkip).prefix(extraProseCount)
            guard !chosen.isEmpty else { throw CLIError("'\(extraProse)' has no tasks after the first \(extraProseSkip)") }
            for t in chosen {
                let ids = Array(model.tokenizer.encode(t.context + " " + t.endings[t.gold], parseSpecial: false).prefix(512))
                guard ids.count >= 2 else { continue }
                prose += ContextGateTraining.pooledInputs(model: model, tokens: ids, first: 0, stride: 4, scratch: scratch)
            }
        }
        let fit = ContextGateTraining.fitGate(module: baseModule, positives: conversation, negatives: prose, positiveWeight: Float(conversationWeight))
        // Every position of each validation conversation; its replies' positions are a suffix.
        let valChatRows = valChat.map { ContextGateTraining.pooledInputs(model: model, tokens: $0.tokens, first: 0, stride: 1, scratch: scratch) }
        let valChatPooled = valChatRows.flatMap { $0 }
        let valRates = ContextGateTraining.hitRates(gate: fit.gate, module: baseModule, positives: valChatPooled, negatives: pooled(valText, stride: 1))
        let valAccuracy = (valRates.positives + valRates.negatives) / 2
        print(String(format: "gate: %d prose and %d conversation positions; balanced accuracy %.4f (train), %.4f (validation, every position: prose %.4f, conversation %.4f right)",
                     prose.count, conversation.count, fit.trainAccuracy, valAccuracy, valRates.negatives, valRates.positives))
        let replies = zip(valChat, valChatRows).flatMap { s, rows in rows[s.scored.lowerBound...] }
        let replyRate = ContextGateTraining.hitRates(gate: fit.gate, module: baseModule, positives: Array(replies), negatives: []).positives
        var findings = [String(format: "conversation %.4f right at validation reply positions", replyRate)]
        if let validationExtraChunks {
            let range = try TrainingData.chunkRange(validationExtraChunks, "--validation-extra-chunks")
            let extra = try TrainingData.textSequences(ids, chunks: range, length: 512, firstScored: 256, path: data)
            let prose = ContextGateTraining.hitRates(gate: fit.gate, module: baseModule, positives: [], negatives: pooled(extra, stride: 4)).negatives
            findings.append(String(format: "prose %.4f right on text chunks %@", prose, validationExtraChunks))
        }
        for f in findings { print("gate: " + f) }

        // 3. The module.
        var w = baseModule.weights
        w.priorByCount = tables.prose
        w.gate = DecisionModule.ContextGate(weights: fit.gate.weights, bias: fit.gate.bias, priorByCount: tables.conversation)
        let module = try DecisionModule(name: "buddy", layers: L, dim: c.dim, kvDim: c.kvDim, hidden: baseModule.hidden, weights: w)
        let sources = tablesFrom.map { "--tables-from \($0)" } ?? "--text-candidates \(textCandidates!) --chat-candidates \(chatCandidates!)"
        let notes = String(format: "buddy train gate %@ --gate-text-chunks %d --gate-chat-prompts %d --validation-skip-chunks %d --validation-chunks %d --validation-chat-skip %d --validation-chat-prompts %d --reply-tokens %d --conversation-weight %g --min-kept %d --base %@; gate balanced accuracy %.4f train, %.4f validation; %.0f s",
                           sources, gateTextChunks, gateChatPrompts, validationSkipChunks, validationChunks, validationChatSkip,
                           validationChatPrompts, replyTokens, conversationWeight, minKept, base, fit.trainAccuracy, valAccuracy, Date().timeIntervalSince(t0))
        let moreText = gateExtraChunks.map { "; more gate text: chunks \($0)" } ?? ""
        let hellaSwag = extraProse.map { String(format: "; extra prose: %@ tasks %d..<%d", $0, extraProseSkip, extraProseSkip + extraProseCount) } ?? ""
        let extras = moreText + findings.map { "; " + $0 }.joined() + hellaSwag
        try RouterFile.save(module, model: model, notes: notes + extras, to: out)
        print("written to \(out)")
    }
}

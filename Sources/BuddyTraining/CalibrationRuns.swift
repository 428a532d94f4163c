import BuddyCore
import BuddyRouting
import Foundation

/// `buddy calibrate`: a static ranking (shortgpt, sleb) or stand-ins for skipped layers.
public enum CalibrationRun {
    public enum Method: String, CaseIterable, Sendable { case shortgpt, sleb, standIns = "stand-ins" }

    public struct Options {
        public var method: Method
        public var data: String
        public var out: String
        public var tokens: Int = 2048
        public var chunk: Int = 256
        public var withStandIns: String?
        public var standIns: StandInFitting = StandInFitting()
        public var threads: Int = 2
        public init(method: Method, data: String, out: String, tokens: Int = 2048, chunk: Int = 256, withStandIns: String? = nil, standIns: StandInFitting = StandInFitting(), threads: Int = 2) {
            self.method = method
            self.data = data
            self.out = out
            self.tokens = tokens
            self.chunk = chunk
            self.withStandIns = withStandIns
            self.standIns = standIns
            self.threads = threads
        }

        public func validate() throws {
            guard chunk >= 16, chunk <= 2048 else { throw ToolError.usage("--chunk must be between 16 and 2048") }
            guard tokens >= chunk else { throw ToolError.usage("--tokens must be at least --chunk (\(chunk))") }
        }
    }

    /// Calibrates and writes the ranking or stand-in file; `model` is loaded once --data has been read.
    public static func run(_ o: Options, model loadModel: () throws -> LanguageModel, report: Reporter) throws {
        guard let text = try? String(contentsOfFile: o.data, encoding: .utf8) else { throw ToolError("cannot read data file '\(o.data)' as UTF-8 text") }
        let model = try loadModel()
        if o.method == .standIns { return try o.standIns.run(model: model, data: o.data, out: o.out, threads: o.threads, report: report) }
        let ids = Array(model.tokenizer.encode(text, parseSpecial: false).prefix(o.tokens))
        guard ids.count >= o.chunk else { throw ToolError("'\(o.data)' has only \(ids.count) tokens") }
        let cal = Calibrator(model: model, chunkSize: o.chunk, threads: o.threads)
        if let withStandIns = o.withStandIns { cal.standIns = try StandInChoice.file(withStandIns).resolve(model: model, note: report.note) }
        let ranking: StaticRanking
        switch o.method {
        case .shortgpt:
            let bar = report.progress("shortgpt", ids.count / o.chunk)
            ranking = try cal.shortGPTRanking(tokens: ids) { done, _ in bar.update(done, detail: "") }
        case .standIns:
            preconditionFailure("handled above")
        case .sleb:
            let routable = model.config.layers - 2
            let bar = report.progress("sleb", routable * (routable + 1) / 2 - 1)
            ranking = try cal.slebRanking(tokens: ids) { done, _, detail in bar.update(done, detail: detail) }
        }
        let notes = "buddy calibrate \(o.method.rawValue) --data \(URL(fileURLWithPath: o.data).lastPathComponent) --tokens \(ids.count) --chunk \(o.chunk)"
            + (o.withStandIns.map { " --with-stand-ins \(URL(fileURLWithPath: $0).lastPathComponent)" } ?? "")
        try RouterFile.save(ranking, model: model, notes: notes, to: o.out)
        report.line("\(o.method.rawValue) ranking (most important first): \(ranking.ranking.map(String.init).joined(separator: " "))")
        report.line("written to \(o.out)")
    }
}

/// `buddy calibrate stand-ins`: which text and chat data fit and validate the stand-ins, and
/// which routed scenarios they learn to serve.
public struct StandInFitting {
    public var trainChunks: String = "0..<14,84..<104"
    public var validationChunks: String = "14..<20"
    public var chatData: String?
    public var chatPrompts: String = "0..<16"
    public var chatValidationPrompts: String = "16..<24"
    public var replyTokens: Int = 96
    /// Also each chat prompt's follow-up turn (after the full model's first reply), for fitting and validation.
    public var secondTurns: Bool = false
    public var scenarios: String = "sleb,shortgpt"
    public var scenarioBudgets: String = "0.9,0.8,0.7,0.6,0.5"
    public var rowStride: Int = 2
    public var relativeError: Bool = true
    public var ranks: String = "0,16,32,64,128"
    public var ridges: String = "0.001,0.01,0.1"
    /// Stage two (StandInTuning): epochs of tuning on KL from full depth (0: closed form only).
    public var tuneEpochs: Int = 1
    public var tuneLearningRate: Double = 1e-4
    /// Text chunks stage two trains on (with the chat sequences of `chatPrompts`); it validates
    /// on `validationChunks` and `chatValidationPrompts`.
    public var tuneChunks: String = "0..<14,84..<116"
    /// Routers whose layer sets at `tuneBudgets` stage two trains (a Decision Module: every candidate set).
    public var tuneSets: String = "sleb,shortgpt,buddy"
    public var tuneBudgets: String = "0.9,0.8"
    /// Budgets whose sets (of the `tuneSets` routers) keep their stand-ins: no layer they skip
    /// is tuned (empty: every layer the tuned sets skip moves).
    public var tuneKeepBudgets: String = ""
    /// How stage two runs a chat sequence's prompt (text chunks are routed throughout).
    public var tunePromptDepth: PromptDepth = .budget
    /// Start stage two from this stand-in file instead of fitting stage one (for experiments:
    /// the notes then name the file, so a shipped file should come from the full command).
    public var initial: String?
    public init(trainChunks: String = "0..<14,84..<104", validationChunks: String = "14..<20", chatData: String? = nil, chatPrompts: String = "0..<16", chatValidationPrompts: String = "16..<24", replyTokens: Int = 96, scenarios: String = "sleb,shortgpt", scenarioBudgets: String = "0.9,0.8,0.7,0.6,0.5", rowStride: Int = 2, relativeError: Bool = true, ranks: String = "0,16,32,64,128", ridges: String = "0.001,0.01,0.1") {
        self.trainChunks = trainChunks
        self.validationChunks = validationChunks
        self.chatData = chatData
        self.chatPrompts = chatPrompts
        self.chatValidationPrompts = chatValidationPrompts
        self.replyTokens = replyTokens
        self.scenarios = scenarios
        self.scenarioBudgets = scenarioBudgets
        self.rowStride = rowStride
        self.relativeError = relativeError
        self.ranks = ranks
        self.ridges = ridges
    }

    /// The 512-token chunks to fit on and to validate on; refused when they overlap each other or
    /// the chunks 20-83 that EVAL.md's perplexity scores.
    public func chunkLists() throws -> (train: [Int], validation: [Int], tune: [Int]) {
        let trainIDs = try TrainingData.chunkRanges(trainChunks, "--train-chunks"), valIDs = try TrainingData.chunkRanges(validationChunks, "--validation-chunks")
        let tuneIDs = tuneEpochs > 0 ? try TrainingData.chunkRanges(tuneChunks, "--tune-chunks") : []
        guard Set(trainIDs).isDisjoint(with: valIDs) else { throw ToolError("--train-chunks and --validation-chunks overlap") }
        guard Set(tuneIDs).isDisjoint(with: valIDs) else { throw ToolError("--tune-chunks and --validation-chunks overlap") }
        guard Set(trainIDs + valIDs + tuneIDs).isDisjoint(with: 20..<84) else {
            throw ToolError("calibration chunks overlap chunks 20-83, which EVAL.md's perplexity scores")
        }
        return (trainIDs, valIDs, tuneIDs)
    }

    /// The layer sets `routers` (comma-separated; a Decision Module contributes every candidate
    /// set it may pick) run at `budgets`, without repeats.
    static func layerSets(_ routers: String, budgets: String, model: LanguageModel, flag: String) throws -> [[Bool]] {
        var masks: [[Bool]] = []
        for name in routers.split(separator: ",").map(String.init) {
            for b in try parseBudgets(budgets) {
                let r = try Routers.make(name, model: model, budget: b)
                let sets: [[Bool]]
                if let m = Routers.fixedMask(r, budget: b) { sets = [m] }
                else if let module = r as? DecisionModule { sets = module.candidateMasks(budget: b) }
                else { throw ToolError("\(flag): '\(name)' does not run fixed layer sets") }
                for m in sets where !masks.contains(m) { masks.append(m) }
            }
        }
        return masks
    }

    /// Fits the stand-ins on --data (and chat replies) and writes them to `out`.
    public func run(model: LanguageModel, data: String, out: String, threads: Int, report: Reporter) throws {
        let L = model.config.layers, chunk = 512
        let (trainIDs, valIDs, tuneIDs) = try chunkLists()
        guard tuneEpochs >= 0, tuneLearningRate > 0 else { throw ToolError.usage("--tune-epochs must be ≥ 0 and --tune-learning-rate positive") }
        let rankList = try ranks.split(separator: ",").map { s -> Int in
            guard let r = Int(s), r >= 0, r <= model.config.dim else { throw ToolError.usage("--ranks must be integers in 0...\(model.config.dim)") }
            return r
        }
        let ridgeList = try ridges.split(separator: ",").map { s -> Double in
            guard let r = Double(s), r > 0 else { throw ToolError.usage("--ridges must be positive numbers") }
            return r
        }
        var ids = try TrainingData.textTokens(data, model: model)
        if model.tokenizer.addBOS, let bos = model.tokenizer.bosID { ids.insert(bos, at: 0) }
        let needed = (trainIDs + valIDs + tuneIDs).max()! + 1
        guard ids.count >= needed * chunk else { throw ToolError("'\(data)' holds \(ids.count) tokens, fewer than \(needed) chunks of \(chunk)") }
        // Chunks as the perplexity evaluation cuts them (BOS first when the model wants one).
        func chunks(_ list: [Int]) -> [[Int32]] {
            list.map { i in
                var c = Array(ids[(i * chunk)..<((i + 1) * chunk)])
                if model.tokenizer.addBOS, let bos = model.tokenizer.bosID { c[0] = bos }
                return c
            }
        }
        var train = chunks(trainIDs), validation = chunks(valIDs)
        var chatTrain: [SearchSequence] = [], chatValidation: [SearchSequence] = []
        if let chatData {
            let fit = try TrainingData.chunkRange(chatPrompts, "--chat-prompts"), val = try TrainingData.chunkRange(chatValidationPrompts, "--chat-validation-prompts")
            guard !fit.overlaps(val) else { throw ToolError("--chat-prompts and --chat-validation-prompts overlap") }
            chatTrain = try TrainingData.chatSequences(model: model, path: chatData, prompts: fit, replyTokens: replyTokens, threads: threads, secondTurns: secondTurns, report: report)
            chatValidation = try TrainingData.chatSequences(model: model, path: chatData, prompts: val, replyTokens: replyTokens, threads: threads, secondTurns: secondTurns, report: report)
            train += chatTrain.map(\.tokens)
            validation += chatValidation.map(\.tokens)
        }
        let masks = scenarios == "none" ? [] : try Self.layerSets(scenarios, budgets: scenarioBudgets, model: model, flag: "--scenarios")
        let tuneSetMasks = tuneEpochs > 0 ? try Self.layerSets(tuneSets, budgets: tuneBudgets, model: model, flag: "--tune-sets") : []
        let keptLayers = tuneEpochs > 0 && !tuneKeepBudgets.isEmpty
            ? Set(try Self.layerSets(tuneSets, budgets: tuneKeepBudgets, model: model, flag: "--tune-keep-budgets").flatMap { m in (0..<L).filter { !m[$0] } })
            : []
        // The model is named when it is not the default, so the notes' command reproduces the file.
        let modelFile = URL(fileURLWithPath: model.path).lastPathComponent
        let modelArgument = modelFile == ModelLocator.defaultFileName ? "" : " --model models/\(modelFile)"
        let command = "buddy calibrate stand-ins\(modelArgument) --data \(URL(fileURLWithPath: data).lastPathComponent) --train-chunks \(trainChunks) --validation-chunks \(validationChunks)"
            + (chatData.map { " --chat-data \(URL(fileURLWithPath: $0).lastPathComponent) --chat-prompts \(chatPrompts) --chat-validation-prompts \(chatValidationPrompts) --reply-tokens \(replyTokens)" + (secondTurns ? " --second-turns" : "") } ?? "")
            + " --scenarios \(scenarios) --scenario-budgets \(scenarioBudgets) --row-stride \(rowStride) --relative-error \(relativeError) --ranks \(ranks) --ridges \(ridges)"
            + " --tune-epochs \(tuneEpochs)" + (tuneEpochs > 0 ? " --tune-learning-rate \(tuneLearningRate) --tune-chunks \(tuneChunks) --tune-sets \(tuneSets) --tune-budgets \(tuneBudgets) --tune-prompt-depth \(tunePromptDepth.rawValue)" + (tuneKeepBudgets.isEmpty ? "" : " --tune-keep-budgets \(tuneKeepBudgets)") : "")
        var standIns: StandIns
        var notes: String
        let start = Date()
        if let initial {
            standIns = try StandInFile.load(path: initial, config: model.config, fingerprint: model.fingerprint)
            notes = "\(command) (stage one replaced by --initial \(URL(fileURLWithPath: initial).lastPathComponent))\nstage one (\(URL(fileURLWithPath: initial).lastPathComponent)): \(standIns.notes)"
        } else {
            let bar = report.progress("stand-ins", L)
            let cal = StandInCalibration(model: model, threads: threads, maxTokens: max(chunk, (train + validation).map(\.count).max() ?? chunk))
            let fitted = try cal.fit(train: train, validation: validation, scenarios: masks, ridges: ridgeList, ranks: rankList,
                                    rowStride: rowStride, relativeError: relativeError) { done, _ in bar.update(done, detail: "") }
            let rows = fitted.report.map { String(format: "%d:r%d/λ%g/R²%.3f", $0.layer, $0.rank, $0.ridge, $0.validationR2) }.joined(separator: " ")
            notes = "\(command)\n\(train.count) fit / \(validation.count) validation sequences, \(masks.count) routed scenarios; per layer rank/ridge/validation R²: \(rows)"
            standIns = fitted.standIns
            report.line("| layer | rank | ridge | validation R² | bias-only R² | fit rows | validation rows |")
            report.line("|---|---|---|---|---|---|---|")
            for r in fitted.report {
                report.line(String(format: "| %d | %d | %g | %.4f | %.4f | %d | %d |", r.layer, r.rank, r.ridge, r.validationR2, r.biasOnlyR2, r.trainRows, r.validationRows))
            }
        }
        if tuneEpochs > 0 {
            // Stage two: every position of a text chunk is scored; a chat sequence scores its reply.
            let tuneTrain = chunks(tuneIDs).map { SearchSequence(tokens: $0, scored: 0..<$0.count) } + chatTrain
            let tuneValidation = chunks(valIDs).map { SearchSequence(tokens: $0, scored: 0..<$0.count) } + chatValidation
            let tuning = StandInTuning(transformer: model.transformer, maxTokens: (tuneTrain + tuneValidation).map(\.tokens.count).max()!,
                                       maxRank: standIns.maxRank)
            let bar = report.progress("tune on KL", tuneEpochs * tuneTrain.count * tuneSetMasks.count)
            let (tuned, r) = try tuning.tune(standIns, sets: tuneSetMasks, train: tuneTrain, validation: tuneValidation,
                                             options: .init(epochs: tuneEpochs, learningRate: Float(tuneLearningRate), promptDepth: tunePromptDepth, keptLayers: keptLayers)) { done, _, kl in
                bar.update(done, detail: String(format: "train KL %.4f", kl))
            }
            standIns = tuned
            let names = tuneSetMasks.map { m in "{" + (0..<L).filter { !m[$0] }.map(String.init).joined(separator: ",") + "}" }
            let rows = r.validation.enumerated().map { e, v in
                (e == 0 ? "closed form" : "epoch \(e)") + String(format: " %.4f (", StandInTuning.Report.mean(v)) + v.map { String(format: "%.3f", $0) }.joined(separator: " ") + ")"
            }
            notes += "\nstage two: tuned on KL from full depth, \(tuneEpochs) epoch(s), Adam learning rate \(tuneLearningRate), chat prompts at \(tunePromptDepth == .full ? "full depth" : "the set's depth"), \(tuneTrain.count) training / \(tuneValidation.count) validation sequences, skipped sets "
                + names.joined(separator: " ") + "; mean validation KL per set: " + rows.joined(separator: "; ")
                + (keptLayers.isEmpty ? "" : "; stand-ins kept as they were for layers " + keptLayers.sorted().map(String.init).joined(separator: ","))
                + "; kept: " + (r.chosen == 0 ? "closed form" : "epoch \(r.chosen)")
            report.line("stage two (KL) validation, mean over sets: " + rows.joined(separator: "; "))
            report.line(String(format: "kept %@; %.0f s", r.chosen == 0 ? "the closed-form stand-ins" : "epoch \(r.chosen)", r.seconds))
        }
        standIns = try StandIns(dim: standIns.dim, eps: standIns.eps, layers: standIns.layers, notes: notes)
        try StandInFile.save(standIns, fingerprint: model.fingerprint, to: out)
        let cost = standIns.layers.compactMap { $0?.cost }
        report.line(String(format: "mean stand-in cost %.0f multiply-adds per skipped layer; %.0f s", Double(cost.reduce(0, +)) / Double(max(cost.count, 1)), Date().timeIntervalSince(start)))
        report.line("written to \(out)")
    }
}

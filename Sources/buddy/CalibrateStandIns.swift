import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

/// The options of `buddy calibrate stand-ins`: which text and chat data fit and validate the
/// stand-ins, and which routed scenarios they learn to serve.
struct StandInCalibrationOptions: ParsableArguments {
    @Option(name: .long, help: "(stand-ins) 512-token chunks of --data to fit on, comma-separated FIRST..<END ranges (evaluation scores chunks 20-83).")
    var trainChunks: String = "0..<14,84..<104"
    @Option(name: .long, help: "(stand-ins) chunks of --data that choose rank and ridge per layer.")
    var validationChunks: String = "14..<20"
    @Option(name: .long, help: "(stand-ins) JSON-lines chat prompts (MT-Bench layout): the full model's greedy replies to train-split prompts join the fit.")
    var chatData: String?
    @Option(name: .long, help: "(stand-ins) train-split chat prompts to fit on, FIRST..<END.")
    var chatPrompts: String = "0..<16"
    @Option(name: .long, help: "(stand-ins) train-split chat prompts for validation, FIRST..<END.")
    var chatValidationPrompts: String = "16..<24"
    @Option(name: .long, help: "(stand-ins) reply tokens of each chat sequence.")
    var replyTokens: Int = 96
    @Option(name: .long, help: "(stand-ins) static rankings whose layer sets at --scenario-budgets give the routed inputs (comma-separated; 'none' fits on full-depth inputs only).")
    var scenarios: String = "sleb,shortgpt"
    @Option(name: .long, help: "(stand-ins) budgets of the routed scenarios.")
    var scenarioBudgets: String = "0.9,0.8,0.7,0.6,0.5"
    @Option(name: .long, help: "(stand-ins) use every N-th token of each sequence as a regression row.")
    var rowStride: Int = 2
    @Option(name: .long, help: "(stand-ins) weigh each token by 1/mean square of its residual stream (errors relative to the stream's scale) or not.")
    var relativeError: Bool = true
    @Option(name: .long, help: "(stand-ins) ranks to choose from per layer.")
    var ranks: String = "0,16,32,64,128"
    @Option(name: .long, help: "(stand-ins) relative ridge penalties to choose from per layer.")
    var ridges: String = "0.001,0.01,0.1"

    static func ranges(_ text: String, _ flag: String) throws -> [Int] {
        try text.split(separator: ",").flatMap { try TrainingData.chunkRange(String($0).trimmingCharacters(in: .whitespaces), flag) }
    }

    func run(model: LanguageModel, data: String, out: String, threads: Int) throws {
        let L = model.config.layers, chunk = 512
        let trainIDs = try Self.ranges(trainChunks, "--train-chunks"), valIDs = try Self.ranges(validationChunks, "--validation-chunks")
        guard Set(trainIDs).isDisjoint(with: valIDs) else { throw CLIError("--train-chunks and --validation-chunks overlap") }
        guard Set(trainIDs + valIDs).isDisjoint(with: 20..<84) else {
            throw CLIError("calibration chunks overlap chunks 20-83, which EVAL.md's perplexity scores")
        }
        let rankList = try ranks.split(separator: ",").map { s -> Int in
            guard let r = Int(s), r >= 0, r <= model.config.dim else { throw ValidationError("--ranks must be integers in 0...\(model.config.dim)") }
            return r
        }
        let ridgeList = try ridges.split(separator: ",").map { s -> Double in
            guard let r = Double(s), r > 0 else { throw ValidationError("--ridges must be positive numbers") }
            return r
        }
        var ids = try TrainingData.textTokens(data, model: model)
        if model.tokenizer.addBOS, let bos = model.tokenizer.bosID { ids.insert(bos, at: 0) }
        let needed = (trainIDs + valIDs).max()! + 1
        guard ids.count >= needed * chunk else { throw CLIError("'\(data)' holds \(ids.count) tokens, fewer than \(needed) chunks of \(chunk)") }
        // Chunks as the perplexity evaluation cuts them (BOS first when the model wants one).
        func chunks(_ list: [Int]) -> [[Int32]] {
            list.map { i in
                var c = Array(ids[(i * chunk)..<((i + 1) * chunk)])
                if model.tokenizer.addBOS, let bos = model.tokenizer.bosID { c[0] = bos }
                return c
            }
        }
        var train = chunks(trainIDs), validation = chunks(valIDs)
        if let chatData {
            let fit = try TrainingData.chunkRange(chatPrompts, "--chat-prompts"), val = try TrainingData.chunkRange(chatValidationPrompts, "--chat-validation-prompts")
            guard !fit.overlaps(val) else { throw CLIError("--chat-prompts and --chat-validation-prompts overlap") }
            train += try TrainingData.chatSequences(model: model, path: chatData, prompts: fit, replyTokens: replyTokens, threads: threads).map(\.tokens)
            validation += try TrainingData.chatSequences(model: model, path: chatData, prompts: val, replyTokens: replyTokens, threads: threads).map(\.tokens)
        }
        var masks: [[Bool]] = []
        if scenarios != "none" {
            for name in scenarios.split(separator: ",").map(String.init) {
                for b in try parseBudgets(scenarioBudgets) {
                    let r = try Routers.make(name, model: model, budget: b)
                    guard let m = Routers.fixedMask(r, budget: b) else { throw CLIError("--scenarios: '\(name)' does not run one set per budget") }
                    if !masks.contains(m) { masks.append(m) }
                }
            }
        }
        let command = "buddy calibrate stand-ins --data \(URL(fileURLWithPath: data).lastPathComponent) --train-chunks \(trainChunks) --validation-chunks \(validationChunks)"
            + (chatData.map { " --chat-data \(URL(fileURLWithPath: $0).lastPathComponent) --chat-prompts \(chatPrompts) --chat-validation-prompts \(chatValidationPrompts) --reply-tokens \(replyTokens)" } ?? "")
            + " --scenarios \(scenarios) --scenario-budgets \(scenarioBudgets) --row-stride \(rowStride) --relative-error \(relativeError) --ranks \(ranks) --ridges \(ridges)"
        let bar = ProgressBar("stand-ins", total: L)
        let start = Date()
        let cal = StandInCalibration(model: model, threads: threads, maxTokens: max(chunk, (train + validation).map(\.count).max() ?? chunk))
        let fitted = try cal.fit(train: train, validation: validation, scenarios: masks, ridges: ridgeList, ranks: rankList,
                                rowStride: rowStride, relativeError: relativeError) { done, _ in bar.update(done) }
        let rows = fitted.report.map { String(format: "%d:r%d/λ%g/R²%.3f", $0.layer, $0.rank, $0.ridge, $0.validationR2) }.joined(separator: " ")
        let notes = "\(command)\n\(train.count) fit / \(validation.count) validation sequences, \(masks.count) routed scenarios; per layer rank/ridge/validation R²: \(rows)"
        let standIns = try StandIns(dim: fitted.standIns.dim, eps: fitted.standIns.eps, layers: fitted.standIns.layers, notes: notes)
        try StandInFile.save(standIns, fingerprint: model.fingerprint, to: out)
        print("| layer | rank | ridge | validation R² | bias-only R² | fit rows | validation rows |")
        print("|---|---|---|---|---|---|---|")
        for r in fitted.report {
            print(String(format: "| %d | %d | %g | %.4f | %.4f | %d | %d |", r.layer, r.rank, r.ridge, r.validationR2, r.biasOnlyR2, r.trainRows, r.validationRows))
        }
        let cost = standIns.layers.compactMap { $0?.cost }
        print(String(format: "mean stand-in cost %.0f multiply-adds per skipped layer; %.0f s", Double(cost.reduce(0, +)) / Double(max(cost.count, 1)), Date().timeIntervalSince(start)))
        print("written to \(out)")
    }
}

import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

/// The training and validation data of the one-budget refits (`train switches`, `train swap`):
/// prose from WikiText-2 and conversations from the train split of the chat prompts.
struct RefitDataOptions: ParsableArguments {
    @Option(name: .long, help: "WikiText-2 validation file (training and validation text).")
    var data: String
    @Option(name: .long, help: "Chat prompts (MT-Bench JSON lines); the train split (even positions) is used.")
    var chatData: String
    @Option(name: .long, help: "Training text chunks of 512 tokens (from the start of --data).")
    var textChunks: Int = 14
    @Option(name: .long, help: "First scored position in each training text chunk.")
    var textFirstScored: Int = 128
    @Option(name: .long, help: "512-token chunks of --data skipped before the validation text.")
    var validationSkipChunks: Int = 14
    @Option(name: .long, help: "512-token chunks of validation text.")
    var validationChunks: Int = 6
    @Option(name: .long, help: "More 512-token training chunks of --data, as FIRST..<END (e.g. 84..<124, past the chunks the evaluation scores), scored like --text-chunks.")
    var textExtraChunks: String?
    @Option(name: .long, help: "More 512-token validation chunks of --data, as FIRST..<END (e.g. 164..<204), second halves scored.")
    var validationExtraChunks: String?
    @Option(name: .long, help: ArgumentHelp("Windows taken from the start of every 512-token text chunk, training and validation alike, as a list (e.g. 512,128: long contexts and short ones like HellaSwag's).",
                                            discussion: "Each chunk gives one sequence per window. In training the whole chunk (512) is scored from --text-first-scored and a shorter window from position 1, so a shorter window may not reach past --text-first-scored when 512 is listed too; in validation every window scores its second half."))
    var textWindows: String = "512"
    @Flag(name: .long, help: "Also use each train-split question's follow-up turn (after the full model's first reply) as a conversation, for training and validation.")
    var secondTurns = false
    @Option(name: .long, help: "Train-split conversations (from the first) for training.")
    var chatPrompts: Int = 16
    @Option(name: .long, help: "Train-split prompts skipped before the validation conversations.")
    var validationChatSkip: Int = 16
    @Option(name: .long, help: "Validation conversations.")
    var validationChatPrompts: Int = 24
    @Option(name: .long, help: "Reply tokens per conversation.")
    var replyTokens: Int = 48

    func validate() throws {
        guard textChunks >= 1, textFirstScored >= 1, textFirstScored < 511 else { throw ValidationError("--text-chunks must be >= 1 and --text-first-scored in 1...510") }
        _ = try windows()
        guard validationSkipChunks >= 0, validationChunks >= 1, chatPrompts >= 1, validationChatSkip >= 0, validationChatPrompts >= 1 else {
            throw ValidationError("data ranges must be non-negative and not empty")
        }
        guard (1...256).contains(replyTokens) else { throw ValidationError("--reply-tokens must be 1...256") }
        _ = try textExtraChunks.map { try TrainingData.chunkRange($0, "--text-extra-chunks") }
        _ = try validationExtraChunks.map { try TrainingData.chunkRange($0, "--validation-extra-chunks") }
    }

    typealias Split = (train: [SearchSequence], validation: [SearchSequence])

    /// The parsed --text-windows, longest first.
    func windows() throws -> [Int] {
        let parts = textWindows.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let ws = parts.compactMap { Int($0) }
        guard !ws.isEmpty, ws.count == parts.count, ws.allSatisfy({ (8...512).contains($0) }), Set(ws).count == ws.count else {
            throw ValidationError("--text-windows must list distinct token counts in 8...512, not '\(textWindows)'")
        }
        if ws.contains(512), let w = ws.first(where: { $0 < 512 && $0 - 1 > textFirstScored }) {
            throw ValidationError("--text-windows: window \(w) would score positions the 512-token chunk scores from --text-first-scored \(textFirstScored) again")
        }
        return ws.sorted(by: >)
    }

    /// Training and validation text (empty unless `prose`; the file is read only then).
    func text(model: LanguageModel, prose: Bool) throws -> Split {
        guard prose else { return ([], []) }
        let ids = try TrainingData.textTokens(data, model: model)
        let windows = try windows()
        // Chunks stay numbered in 512-token units whatever the window, so a window never reaches
        // into the chunks the evaluation scores.
        func chunks(_ range: Range<Int>, validation: Bool) throws -> [SearchSequence] {
            let whole = try TrainingData.textSequences(ids, chunks: range, length: 512, firstScored: 1, path: data)
            return windows.flatMap { w in
                let first = validation ? w / 2 : (w == 512 ? textFirstScored : 1)
                return whole.map { SearchSequence(tokens: Array($0.tokens.prefix(w)), scored: first..<(w - 1)) }
            }
        }
        var train = try chunks(0..<textChunks, validation: false)
        var validation = try chunks(validationSkipChunks..<(validationSkipChunks + validationChunks), validation: true)
        if let textExtraChunks { train += try chunks(try TrainingData.chunkRange(textExtraChunks, "--text-extra-chunks"), validation: false) }
        if let validationExtraChunks {
            validation += try chunks(try TrainingData.chunkRange(validationExtraChunks, "--validation-extra-chunks"), validation: true)
        }
        return (train, validation)
    }

    /// Training and validation conversations with the full model's replies (empty unless `conversation`).
    func chat(model: LanguageModel, conversation: Bool, threads: Int) throws -> Split {
        guard conversation else { return ([], []) }
        return (try TrainingData.chatSequences(model: model, path: chatData, prompts: 0..<chatPrompts, replyTokens: replyTokens,
                                               threads: threads, secondTurns: secondTurns),
                try TrainingData.chatSequences(model: model, path: chatData, prompts: validationChatSkip..<(validationChatSkip + validationChatPrompts),
                                               replyTokens: replyTokens, threads: threads, secondTurns: secondTurns))
    }

    /// The options as a command line fragment, for a router's `notes`.
    var commandLine: String {
        String(format: "--text-chunks %d --text-first-scored %d --validation-skip-chunks %d --validation-chunks %d", textChunks, textFirstScored, validationSkipChunks, validationChunks)
            + (textExtraChunks.map { " --text-extra-chunks \"\($0)\"" } ?? "") + (validationExtraChunks.map { " --validation-extra-chunks \"\($0)\"" } ?? "")
            + String(format: " --chat-prompts %d --validation-chat-skip %d --validation-chat-prompts %d --reply-tokens %d", chatPrompts, validationChatSkip, validationChatPrompts, replyTokens)
            + (textWindows == "512" ? "" : " --text-windows \(textWindows)") + (secondTurns ? " --second-turns" : "")
    }
}

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
    @Option(name: .long, help: "Tokens used from the start of every 512-token text chunk, training and validation alike (e.g. 128 for short contexts, like HellaSwag's); validation then scores the window's second half.")
    var textWindow: Int = 512
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
        guard (8...512).contains(textWindow) else { throw ValidationError("--text-window must be 8...512") }
        guard textChunks >= 1, textFirstScored >= 1, textFirstScored < textWindow - 1 else {
            throw ValidationError("--text-chunks must be >= 1 and --text-first-scored in 1...\(textWindow - 2)")
        }
        guard validationSkipChunks >= 0, validationChunks >= 1, chatPrompts >= 1, validationChatSkip >= 0, validationChatPrompts >= 1 else {
            throw ValidationError("data ranges must be non-negative and not empty")
        }
        guard (1...256).contains(replyTokens) else { throw ValidationError("--reply-tokens must be 1...256") }
        _ = try textExtraChunks.map { try TrainingData.chunkRange($0, "--text-extra-chunks") }
        _ = try validationExtraChunks.map { try TrainingData.chunkRange($0, "--validation-extra-chunks") }
    }

    typealias Split = (train: [SearchSequence], validation: [SearchSequence])

    /// Training and validation text (empty unless `prose`; the file is read only then).
    func text(model: LanguageModel, prose: Bool) throws -> Split {
        guard prose else { return ([], []) }
        let ids = try TrainingData.textTokens(data, model: model)
        // Chunks stay numbered in 512-token units whatever the window, so a window never reaches
        // into the chunks the evaluation scores.
        func chunks(_ range: Range<Int>, firstScored: Int) throws -> [SearchSequence] {
            try TrainingData.textSequences(ids, chunks: range, length: 512, firstScored: firstScored, path: data).map {
                SearchSequence(tokens: Array($0.tokens.prefix(textWindow)), scored: firstScored..<(textWindow - 1))
            }
        }
        var train = try chunks(0..<textChunks, firstScored: textFirstScored)
        var validation = try chunks(validationSkipChunks..<(validationSkipChunks + validationChunks), firstScored: textWindow / 2)
        if let textExtraChunks { train += try chunks(try TrainingData.chunkRange(textExtraChunks, "--text-extra-chunks"), firstScored: textFirstScored) }
        if let validationExtraChunks {
            validation += try chunks(try TrainingData.chunkRange(validationExtraChunks, "--validation-extra-chunks"), firstScored: textWindow / 2)
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
            + (textWindow == 512 ? "" : " --text-window \(textWindow)") + (secondTurns ? " --second-turns" : "")
    }
}

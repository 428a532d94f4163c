import ArgumentParser
import BuddyCore
import BuddyRouting
import BuddyTraining
import Foundation

/// The training and validation data of `buddy train router`'s scorers: prose from WikiText-2
/// and conversations from the train split of the chat prompts.
struct RefitDataOptions: ParsableArguments {
    @Option(name: .long, help: "WikiText-2 validation file (training and validation text).") var data: String
    @Option(name: .long, help: "Chat prompts (MT-Bench JSON lines); the train split (even positions) is used.") var chatData: String
    @Option(name: .long, help: "Training text chunks of 512 tokens (from the start of --data).") var textChunks: Int = 8
    @Option(name: .long, help: "First scored position in each training text chunk.") var textFirstScored: Int = 128
    @Option(name: .long, help: "512-token chunks of --data skipped before the validation text.") var validationSkipChunks: Int = 12
    @Option(name: .long, help: "512-token chunks of validation text.") var validationChunks: Int = 8
    @Option(name: .long, help: "More 512-token training chunks of --data, as FIRST..<END (e.g. 84..<124, past the chunks the evaluation scores), scored like --text-chunks.") var textExtraChunks: String?
    @Option(name: .long, help: "More 512-token validation chunks of --data, as FIRST..<END (e.g. 164..<204), second halves scored.") var validationExtraChunks: String?
    @Option(name: .long, help: ArgumentHelp("Windows taken from the start of every 512-token text chunk, training and validation alike, as a list (e.g. 512,128: long contexts and short ones like HellaSwag's).",
                                            discussion: "Each chunk gives one sequence per window. In training the whole chunk (512) is scored from --text-first-scored and a shorter window from position 1, so a shorter window may not reach past --text-first-scored when 512 is listed too; in validation every window scores its second half."))
    var textWindows: String = "512"
    @Flag(name: .long, help: "Also use each train-split question's follow-up turn (after the full model's first reply) as a conversation, for training and validation.") var secondTurns = false
    @Option(name: .long, help: "Train-split conversations (from the first) for training.") var chatPrompts: Int = 16
    @Option(name: .long, help: "Train-split prompts skipped before the validation conversations.") var validationChatSkip: Int = 16
    @Option(name: .long, help: "Validation conversations.") var validationChatPrompts: Int = 24
    @Option(name: .long, help: "Reply tokens per conversation.") var replyTokens: Int = 64

    var refit: RefitData {
        RefitData(data: data, chatData: chatData, textChunks: textChunks, textFirstScored: textFirstScored, validationSkipChunks: validationSkipChunks,
                  validationChunks: validationChunks, textExtraChunks: textExtraChunks, validationExtraChunks: validationExtraChunks, textWindows: textWindows,
                  secondTurns: secondTurns, chatPrompts: chatPrompts, validationChatSkip: validationChatSkip, validationChatPrompts: validationChatPrompts,
                  replyTokens: replyTokens)
    }
    func validate() throws { try validating(refit.validate) }
}

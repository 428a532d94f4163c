import BuddyCore
import BuddyRouting
import Foundation

/// The training and validation data of `buddy train router`'s scorers:
/// prose from WikiText-2 and conversations from the train split of the chat prompts.
public struct RefitData: Sendable {
    public var data: String
    public var chatData: String
    public var textChunks: Int = 14
    public var textFirstScored: Int = 128
    public var validationSkipChunks: Int = 14
    public var validationChunks: Int = 6
    public var textExtraChunks: String?
    public var validationExtraChunks: String?
    public var textWindows: String = "512"
    public var secondTurns: Bool = false
    public var chatPrompts: Int = 16
    public var validationChatSkip: Int = 16
    public var validationChatPrompts: Int = 24
    public var replyTokens: Int = 48
    public init(data: String, chatData: String, textChunks: Int = 14, textFirstScored: Int = 128, validationSkipChunks: Int = 14, validationChunks: Int = 6, textExtraChunks: String? = nil, validationExtraChunks: String? = nil, textWindows: String = "512", secondTurns: Bool = false, chatPrompts: Int = 16, validationChatSkip: Int = 16, validationChatPrompts: Int = 24, replyTokens: Int = 48) {
        self.data = data
        self.chatData = chatData
        self.textChunks = textChunks
        self.textFirstScored = textFirstScored
        self.validationSkipChunks = validationSkipChunks
        self.validationChunks = validationChunks
        self.textExtraChunks = textExtraChunks
        self.validationExtraChunks = validationExtraChunks
        self.textWindows = textWindows
        self.secondTurns = secondTurns
        self.chatPrompts = chatPrompts
        self.validationChatSkip = validationChatSkip
        self.validationChatPrompts = validationChatPrompts
        self.replyTokens = replyTokens
    }

    public func validate() throws {
        guard textChunks >= 1, textFirstScored >= 1, textFirstScored < 511 else { throw ToolError.usage("--text-chunks must be >= 1 and --text-first-scored in 1...510") }
        _ = try windows()
        guard validationSkipChunks >= 0, validationChunks >= 1, chatPrompts >= 1, validationChatSkip >= 0, validationChatPrompts >= 1 else {
            throw ToolError.usage("data ranges must be non-negative and not empty")
        }
        guard (1...256).contains(replyTokens) else { throw ToolError.usage("--reply-tokens must be 1...256") }
        _ = try textExtraChunks.map { try TrainingData.chunkRange($0, "--text-extra-chunks") }
        _ = try validationExtraChunks.map { try TrainingData.chunkRange($0, "--validation-extra-chunks") }
    }

    public typealias Split = (train: [SearchSequence], validation: [SearchSequence])

    /// The parsed --text-windows, longest first.
    public func windows() throws -> [Int] {
        let parts = textWindows.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let ws = parts.compactMap { Int($0) }
        guard !ws.isEmpty, ws.count == parts.count, ws.allSatisfy({ (8...512).contains($0) }), Set(ws).count == ws.count else {
            throw ToolError.usage("--text-windows must list distinct token counts in 8...512, not '\(textWindows)'")
        }
        if ws.contains(512), let w = ws.first(where: { $0 < 512 && $0 - 1 > textFirstScored }) {
            throw ToolError.usage("--text-windows: window \(w) would score positions the 512-token chunk scores from --text-first-scored \(textFirstScored) again")
        }
        return ws.sorted(by: >)
    }

    /// Training and validation sequences cut from the tokens `ids` of --data.
    public func text(ids: [Int32]) throws -> Split {
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

    /// Training and validation conversations with the full model's replies.
    public func chat(model: LanguageModel, threads: Int, report: Reporter) throws -> Split {
        (try TrainingData.chatSequences(model: model, path: chatData, prompts: 0..<chatPrompts, replyTokens: replyTokens,
                                               threads: threads, secondTurns: secondTurns, report: report),
                try TrainingData.chatSequences(model: model, path: chatData, prompts: validationChatSkip..<(validationChatSkip + validationChatPrompts),
                                               replyTokens: replyTokens, threads: threads, secondTurns: secondTurns, report: report))
    }

    /// The options as a command line fragment, for a router's `notes`.
    public var commandLine: String {
        String(format: "--text-chunks %d --text-first-scored %d --validation-skip-chunks %d --validation-chunks %d", textChunks, textFirstScored, validationSkipChunks, validationChunks)
            + (textExtraChunks.map { " --text-extra-chunks \"\($0)\"" } ?? "") + (validationExtraChunks.map { " --validation-extra-chunks \"\($0)\"" } ?? "")
            + String(format: " --chat-prompts %d --validation-chat-skip %d --validation-chat-prompts %d --reply-tokens %d", chatPrompts, validationChatSkip, validationChatPrompts, replyTokens)
            + (textWindows == "512" ? "" : " --text-windows \(textWindows)") + (secondTurns ? " --second-turns" : "")
    }
}

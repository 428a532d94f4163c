import BuddyCore
import BuddyRouting
import Foundation

/// The text and chat sequences that `buddy train router` and `buddy calibrate stand-ins` measure on.
public enum TrainingData {
    /// The whole text file as tokens (a trailing newline dropped, as the evaluation reads it).
    public static func textTokens(_ path: String, model: LanguageModel) throws -> [Int32] {
        guard var text = try? String(contentsOfFile: path, encoding: .utf8) else { throw ToolError("cannot read data file '\(path)'") }
        if text.hasSuffix("\n") { text.removeLast() }
        return model.tokenizer.encode(text, parseSpecial: false)
    }

    /// A layer-set search over `sequences`, its full-depth reference pass shown as progress.
    public static func search(model: LanguageModel, sequences: [SearchSequence], threads: Int, label: String, report: Reporter) -> LayerSetSearch {
        let bar = report.progress("full-depth references (\(label))", sequences.count)
        return LayerSetSearch(model: model, sequences: sequences, threads: threads) { bar.update($0, detail: "of \($1) sequences") }
    }

    /// A range of chunks given on the command line as FIRST..<END; `flag` names the option in the error.
    public static func chunkRange(_ text: String, _ flag: String) throws -> Range<Int> {
        let parts = text.components(separatedBy: "..<")
        guard parts.count == 2, let a = Int(parts[0]), let b = Int(parts[1]), a >= 0, a < b else {
            throw ToolError.usage("\(flag) must be FIRST..<END with 0 <= FIRST < END, not '\(text)'")
        }
        return a..<b
    }

    /// Comma-separated FIRST..<END ranges, concatenated in order.
    public static func chunkRanges(_ text: String, _ flag: String) throws -> [Int] {
        try text.split(separator: ",").flatMap { try chunkRange(String($0).trimmingCharacters(in: .whitespaces), flag) }
    }

    /// Chunks `chunks` of `length` tokens, each scored from position `firstScored` on.
    public static func textSequences(_ ids: [Int32], chunks: Range<Int>, length: Int, firstScored: Int, path: String) throws -> [SearchSequence] {
        guard ids.count >= chunks.upperBound * length else {
            throw ToolError("'\(path)' holds \(ids.count) tokens, fewer than \(chunks.upperBound) chunks of \(length)")
        }
        return chunks.map { i in SearchSequence(tokens: Array(ids[(i * length)..<((i + 1) * length)]), scored: firstScored..<(length - 1)) }
    }

    /// Train-split chat prompts `prompts` with the full model's greedy replies of up to
    /// `replyTokens`; the positions that predict the reply are scored. With `secondTurns`, each
    /// prompt that has a follow-up question adds a second conversation: first question, the
    /// full model's reply to it, the follow-up, and the full model's reply to that (scored).
    public static func chatSequences(model: LanguageModel, path: String, split: ChatPromptSplit = .train, prompts range: Range<Int>, replyTokens: Int, threads: Int,
                                     secondTurns: Bool = false, report: Reporter) throws -> [SearchSequence] {
        guard let chatText = try? String(contentsOfFile: path, encoding: .utf8) else { throw ToolError("cannot read chat prompts '\(path)'") }
        let all = try ChatPromptSet.parse(chatText, split: split)
        let prompts = all[min(range.lowerBound, all.count)..<min(range.upperBound, all.count)]
        guard !prompts.isEmpty || range.isEmpty else { throw ToolError("'\(path)' has only \(all.count) \(split.rawValue)-split prompts") }
        var sequences: [SearchSequence] = []
        guard !prompts.isEmpty else { return sequences }
        let capacity = 512
        let session = Session(model: model, capacity: capacity, threads: threads, batchSize: capacity)
        let chat = ChatEvaluator(session: session)
        /// The full model's greedy reply to `prompt` appended as a scored sequence (nil when
        /// prompt and reply would not fit the session).
        func reply(to prompt: [Int32]) throws -> [Int32]? {
            guard prompt.count + replyTokens <= capacity else { return nil }
            let reply = try chat.reference(prompt: prompt, maxTokens: replyTokens).reply
            // Position p predicts token p+1: score the positions that predict the reply.
            let tokens = prompt + reply
            sequences.append(SearchSequence(tokens: tokens, scored: (prompt.count - 1)..<(tokens.count - 1), prompt: prompt.count))
            return reply
        }
        let bar = report.progress("full-depth replies", prompts.count)
        for (i, p) in prompts.enumerated() {
            guard let first = try reply(to: chat.promptTokens(p.text)) else { bar.update(i + 1, detail: "prompt \(p.id) too long, skipped"); continue }
            var detail = "\(first.count) reply tokens"
            if secondTurns, let followUp = p.followUp,
               let second = try reply(to: chat.followUpTokens(question: p.text, firstReply: first, followUp: followUp)) {
                detail += ", second turn \(second.count)"
            }
            bar.update(i + 1, detail: detail)
        }
        return sequences
    }

    /// The mean of `a` (0 when empty).
    static func mean(_ a: [Double]) -> Double { a.reduce(0, +) / Double(max(a.count, 1)) }
}

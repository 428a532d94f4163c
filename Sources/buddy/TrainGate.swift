import ArgumentParser
import BuddyCore
import BuddyRouting
import BuddyTraining
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

    @Option(name: .long, help: "WikiText-2 validation file (gate training and validation text).") var data: String
    @Option(name: .long, help: "Chat prompts (MT-Bench JSON lines); the train split (even positions) is used.") var chatData: String
    @Option(name: .long, help: "Comma-separated routers (names or files) whose sets compete for the prose table; the first also fills k below --min-kept.") var textCandidates: String?
    @Option(name: .long, help: "Comma-separated routers whose sets compete for the conversation table.") var chatCandidates: String?
    @Option(name: .long, help: "Text chunks of 512 tokens (from the start of --data) for fitting the gate.") var gateTextChunks: Int = 16
    @Option(name: .long, help: "Train-split conversations (from the first) for fitting the gate.") var gateChatPrompts: Int = 16
    @Option(name: .long, help: "512-token chunks of --data skipped before the validation text.") var validationSkipChunks: Int = 16
    @Option(name: .long, help: "512-token chunks of validation text.") var validationChunks: Int = 4
    @Option(name: .long, help: "Train-split prompts skipped before the validation conversations.") var validationChatSkip: Int = 16
    @Option(name: .long, help: "Validation conversations.") var validationChatPrompts: Int = 24
    @Option(name: .long, help: "Reply tokens per conversation.") var replyTokens: Int = 48
    @Option(name: .long, help: "More 512-token chunks of --data as prose for fitting the gate, as FIRST..<END (e.g. 84..<164, past the chunks the evaluation scores).") var gateExtraChunks: String?
    @Option(name: .long, help: "More 512-token chunks of --data on which the gate's accuracy is validated, as FIRST..<END.") var validationExtraChunks: String?
    @Option(name: .long, help: "Share of the gate's training loss on the conversation class (the prose class has the rest).") var conversationWeight: Double = 0.5
    @Option(name: .long, help: "HellaSwag tasks file whose contexts (with their gold endings) are more prose for fitting the gate.") var extraProse: String?
    @Option(name: .long, help: "Tasks of --extra-prose skipped first (the evaluation uses the first 400).") var extraProseSkip: Int = 1000
    @Option(name: .long, help: "Tasks of --extra-prose used.") var extraProseCount: Int = 400
    @Option(name: .long, help: "A gated router whose two tables are kept as they are (skips the validation step; only the gate is refitted).") var tablesFrom: String?
    @Option(name: .long, help: "Smallest number of routable layers whose set is chosen on validation data.") var minKept: Int = 14
    @Option(name: .long, help: "Decision module whose normalisation and learned part are kept.") var base: String = "buddy"
    @Option(name: .long, help: "Where to write the router (written atomically).") var out: String
    @OptionGroup var modelOptions: ModelOptions

    var options: GateTraining.Options {
        .init(data: data, chatData: chatData, textCandidates: textCandidates, chatCandidates: chatCandidates, gateTextChunks: gateTextChunks,
              gateChatPrompts: gateChatPrompts, validationSkipChunks: validationSkipChunks, validationChunks: validationChunks,
              validationChatSkip: validationChatSkip, validationChatPrompts: validationChatPrompts, replyTokens: replyTokens, gateExtraChunks: gateExtraChunks,
              validationExtraChunks: validationExtraChunks, conversationWeight: conversationWeight, extraProse: extraProse, extraProseSkip: extraProseSkip,
              extraProseCount: extraProseCount, tablesFrom: tablesFrom, minKept: minKept, base: base, out: out, threads: modelOptions.threads)
    }
    func validate() throws { try validating(options.validate) }

    func run() throws { try GateTraining.run(options, model: try modelOptions.load(), report: .terminal) }
}

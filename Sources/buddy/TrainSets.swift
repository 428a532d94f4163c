import ArgumentParser
import BuddyCore
import BuddyRouting
import BuddyTraining
import Foundation

struct TrainSets: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sets",
        abstract: "Search budget-specific layer sets on training text and chat, and add them to a router.",
        discussion: """
            For every number k of routable layers kept (from all of them down to --min-kept), a
            sequential floating backward selection finds the set whose next-token distributions
            stay closest to the full model's: mean KL from full depth over the scored positions of
            --text-chunks WikiText-2 chunks (--text-chunk tokens, scored from the 16th position on,
            from the start of the file, before the text evaluation uses) and of the full model's greedy replies to the
            first --chat-prompts chat prompts of the train split. Below --min-kept the smallest set
            is thinned in the base router's order. The sets become the Decision Module's prior
            for each k (router format version 2); its learned part is kept as it is.
            The search state is saved after every step (--checkpoint) and a rerun resumes it.
            Reproduce the shipped router with:
              buddy train sets --data ../shared/data/wikitext2_valid.txt \\
                --chat-data ../shared/data/mt_bench_questions.jsonl --base routers/buddy-router.json \\
                --max-inclusions 7 --out routers/buddy-router.json
            """)

    @Option(name: .long, help: "Training text (WikiText-2 validation file).") var data: String
    @Option(name: .long, help: "Chat prompts (MT-Bench JSON lines); the train split (even positions) is used.") var chatData: String
    @Option(name: .long, help: "Text chunks from the start of --data (every position from the 16th on is scored).") var textChunks: Int = 4
    @Option(name: .long, help: "Tokens per text chunk.") var textChunk: Int = 256
    @Option(name: .long, help: "Chat prompts (from the start of the train split) whose full-depth greedy replies are scored.") var chatPrompts: Int = 8
    @Option(name: .long, help: "Reply tokens per chat prompt.") var replyTokens: Int = 48
    @Option(name: .long, help: "Smallest number of routable layers the search goes down to.") var minKept: Int = 14
    @Option(name: .long, help: "Bound on the floating search's put-back steps.") var maxInclusions: Int = 40
    @Option(name: .long, help: "Router whose learned part and ranking are kept (a decision-module or ranking file, or a name).") var base: String = "buddy"
    @Option(name: .long, help: "Where to write the router (written atomically).") var out: String
    @Option(name: .long, help: "Search state, saved after every step and resumed by a rerun (default: <out>.search.json).") var checkpoint: String?
    @OptionGroup var modelOptions: ModelOptions

    var options: SetTraining.Options {
        .init(data: data, chatData: chatData, textChunks: textChunks, textChunk: textChunk, chatPrompts: chatPrompts, replyTokens: replyTokens,
              minKept: minKept, maxInclusions: maxInclusions, base: base, out: out, checkpoint: checkpoint, threads: modelOptions.threads)
    }
    func validate() throws { try validating(options.validate) }

    func run() throws { try SetTraining.run(options, model: try modelOptions.load(), report: .terminal) }
}

import ArgumentParser
import BuddyCore
import BuddyEvaluation
import BuddyRouting
import Foundation

struct Soak: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Drive the chat engine through many turns and report memory over time (a soak test).",
        discussion: """
            Each turn sends a prompt; at random the budget moves mid-reply, the reply is
            stopped early, auto is toggled, the conversation is saved (atomically, over the
            same file) or reset. Prints resident memory every --report-every turns and ends
            with the peak, the resident memory once the context first filled and at the end,
            and every error event. Exit status 1 when an error event was seen or memory grew
            by more than --max-growth MB after the context filled. Example:
              buddy soak --turns 200 --context 1024
            """)
    @Option(name: .long, help: "Number of chat turns.") var turns: Int = 200
    @Option(name: .long, help: "Context size in tokens (small, so it fills and the drop-oldest policy runs).") var context: Int = 1024
    @Option(name: .long, help: "Maximum tokens per reply.") var maxTokens: Int = 64
    @Option(name: .long, help: "Random seed for the actions.") var seed: UInt64 = 1
    @Option(name: .long, help: "Print a memory line every N turns.") var reportEvery: Int = 20
    @Option(name: .long, help: "Allowed growth of resident memory (MB) between the context first filling and the end.") var maxGrowth: Double = 16
    @OptionGroup var modelOptions: ModelOptions

    var options: SoakRun.Options {
        .init(turns: turns, context: context, maxTokens: maxTokens, seed: seed, reportEvery: reportEvery, maxGrowth: maxGrowth, threads: modelOptions.threads)
    }
    func validate() throws { try validating(options.validate) }

    func run() throws {
        guard try SoakRun.run(options, model: try modelOptions.load(), report: .terminal) else { throw ExitCode(1) }
    }
}

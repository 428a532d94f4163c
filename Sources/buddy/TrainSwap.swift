import ArgumentParser
import BuddyCore
import BuddyRouting
import BuddyTraining
import Foundation

struct TrainSwap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swap",
        abstract: "Improve one table's layer set at one budget by swapping layers, and keep it if validation agrees.",
        discussion: """
            The backward search of `train sets` only removes layers, so at small k
            a table can be left with a set that a static method's set beats
            (docs/TRAINING.md). For the k in --kept and the --table (prose or
            conversation) of a gated --router, this command
            1. starts from the set of k layers that --start runs (a router name or
               file; by default the table's own set);
            2. swaps one kept layer for one skipped layer (two for two with
               --swap-size 2) while that lowers the mean KL from full depth on the
               training data (every token runs the set), at most --rounds times;
               each round scores every single removal and addition, then tries
               every swap that involves one of the --shortlist best removals or
               additions (size 2: every pair of them with every pair);
            3. routes the validation data for real with the found set in the
               table and with the table as it was (--kv-policy), and keeps the new
               set if it lowers the mean KL by more than --min-gain (relative).
            The data options are those of `train switches`. Everything else in
            --router (the other rows, the gate, the token switches) is kept.
            """)

    @OptionGroup var dataOptions: RefitDataOptions
    @Option(name: .long, help: "Gated Decision Module whose table is refined.") var router: String = "buddy"
    @Option(name: .long, help: "Which table: prose or conversation.") var table: String = "conversation"
    @Option(name: .long, help: "Number of routable layers kept (the table's row).") var kept: Int
    @Option(name: .long, help: "Router whose set of --kept layers the search starts from (default: the table's own).") var start: String?
    @Option(name: .long, help: "Most swaps taken.") var rounds: Int = 6
    @Option(name: .long, help: "Removals and additions per round whose swaps are tried (as many as the set's size tries every swap).") var shortlist: Int = 3
    @Option(name: .long, help: "Layers exchanged per swap: 1, or 2 (every pair of the shortlisted removals with every pair of the shortlisted additions).") var swapSize: Int = 1
    @Option(name: .long, help: "Relative validation KL gain the new set must bring to be kept.") var minGain: Double = 0.01
    @Option(name: .long, help: "What a skipped layer leaves in the KV cache while validating routed (mask, zero, fill).") var kvPolicy: KVPolicy = .fill
    @Option(name: .long, help: "Where to write the router (written atomically; written even when the set is not kept, with its notes saying so).") var out: String
    @OptionGroup var modelOptions: ModelOptions

    var options: SwapTraining.Options {
        .init(data: dataOptions.refit, router: router, table: table, kept: kept, start: start, rounds: rounds, shortlist: shortlist, swapSize: swapSize,
              minGain: minGain, kvPolicy: kvPolicy, out: out, threads: modelOptions.threads)
    }
    func validate() throws { try validating(options.validate) }

    func run() throws { try SwapTraining.run(options, model: try modelOptions.load(), report: .terminal) }
}

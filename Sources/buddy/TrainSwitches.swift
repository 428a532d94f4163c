import ArgumentParser
import BuddyCore
import BuddyRouting
import BuddyTraining
import Foundation

struct TrainSwitches: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switches",
        abstract: "Teach a gated Decision Module to route token by token: per budget, a switch between its set and an alternative set.",
        discussion: """
            Within one kind of context, different tokens are served best by
            different layers (docs/TRAINING.md). For every k in --kept and each of
            the router's two tables (prose, conversation), this command
            1. measures, at every scored position of the training data, the KL
               from full depth of the table's set and of every --candidates
               router's set of k layers (each run for all tokens);
            2. fits, per alternative, a switch: a cost-weighted logistic
               regression on the Decision Module's input (pooled first-layer
               keys and values plus the newest token's h0) that sends a token to
               the alternative where it had the lower KL;
            3. takes the alternative whose switch has the lowest mean KL on the
               validation data when every token runs its choice's set, then
               routes the validation data for real (tokens run different sets,
               skipped layers leave the cache as --kv-policy says) and keeps the
               switch if its mean KL from full depth beats the table's set alone
               by more than --min-gain (relative); else k keeps its one set.
            Text: --text-chunks WikiText-2 chunks of 512 tokens from the start,
            scored from --text-first-scored on; validation text is the chunks
            after --validation-skip-chunks, second halves scored, as perplexity
            scores them. Conversations: the full model's greedy replies to the
            first --chat-prompts train-split prompts, validated on the next
            --validation-chat-prompts after --validation-chat-skip.
            Mixing sets costs little under --kv-policy fill and much under mask
            (a token then cannot attend to the keys of earlier tokens that
            skipped the layer); the shipped router was made and is evaluated
            with fill, the default. The --router's switches for budgets not in --kept
            are carried over unchanged, so one budget can be refitted alone.
            --text-extra-chunks and --validation-extra-chunks add text from later in
            the file (chunks 84 and up lie past the 64 that buddy eval perplexity
            --skip-chunks 20 scores).
            """)

    @OptionGroup var dataOptions: RefitDataOptions
    @Option(name: .long, help: "Gated Decision Module to refine (its tables and gate are kept).") var router: String = "buddy"
    @Option(name: .long, help: "Comma-separated routers (names or files) whose sets are the alternatives.") var candidates: String = "sleb,shortgpt"
    @Option(name: .long, help: "Comma-separated numbers of routable layers kept to fit switches for.") var kept: String = "27,25,22,20,17,14"
    @Option(name: .long, help: "Which tables to fit switches for: prose, conversation or both (comma-separated).") var tables: String = "prose,conversation"
    @Option(name: .long, help: "Relative validation KL gain a switch must bring to be kept.") var minGain: Double = 0.01
    @Option(name: .long, help: "What a skipped layer leaves in the KV cache while validating routed (mask, zero, fill).") var kvPolicy: KVPolicy = .fill
    @Option(name: .long, help: "L2 weight decay of the switches' logistic regression.") var decay: Float = 1e-2
    @Option(name: .long, help: "Where to write the router (written atomically).") var out: String
    @OptionGroup var modelOptions: ModelOptions

    var options: SwitchTraining.Options {
        .init(data: dataOptions.refit, router: router, candidates: candidates, kept: kept, tables: tables, minGain: minGain, kvPolicy: kvPolicy,
              decay: decay, out: out, threads: modelOptions.threads)
    }
    func validate() throws { try validating(options.validate) }

    func run() throws { try SwitchTraining.run(options, model: try modelOptions.load(), report: .terminal) }
}

import ArgumentParser
import BuddyCore
import BuddyRouting
import BuddyTraining
import Foundation

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train the Decision Module (default) or the Budget Predictor for this model.",
        subcommands: [TrainRouter.self, TrainSets.self, TrainGate.self, TrainSwitches.self, TrainSwap.self, TrainPredictor.self], defaultSubcommand: TrainRouter.self)
}

struct TrainRouter: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "router",
        abstract: "Train the Decision Module for this model and write a router file.",
        discussion: """
            Method (docs/TRAINING.md): per-token layer importances are measured by forward
            passes (KL from full depth when a single layer is skipped), a two-layer MLP learns
            to predict them from the routing context (pooled layer-0 K/V, the token's hidden
            state after layer 0, the budget), and the router scores layers as
              prior(best static ranking) + alpha × predicted importance.
            alpha is chosen on held-out chunks by routed perplexity over the budgets;
            alpha = 0 reproduces the static ranking exactly, so training cannot do worse
            than its prior on that data. Reproduce the shipped router with:
              buddy train --data ../shared/data/wikitext2_valid.txt --out routers/buddy-router.json
            """)

    @Option(name: .long, help: "Training text (WikiText-2 validation file).") var data: String
    @Option(name: .long, help: "Where to write the router (written atomically).") var out: String
    @Option(name: .long, help: "Static ranking used as the prior: sleb, shortgpt, last or a ranking file.") var prior: String = "sleb"
    @Option(name: .long, help: "Training chunks of --chunk tokens from the start of --data.") var trainChunks: Int = 12
    @Option(name: .long, help: "Tokens per training chunk.") var chunk: Int = 256
    @Option(name: .long, help: "Held-out 512-token chunks (after the training text) for choosing alpha.") var valChunks: Int = 3
    @Option(name: .long, help: "Budgets alpha is chosen over.") var budgets: String = "0.5,0.6,0.7,0.8,0.9,0.95"
    @Option(name: .long, help: "Candidate alphas (scale of the learned part relative to the prior).") var alphas: String = "0,0.01,0.02,0.04,0.08"
    @Option(name: .long, help: "Hidden units of the Decision Module.") var hidden: Int = 32
    @Option(name: .long, help: "Training epochs over the collected examples (the epoch with the lowest validation error is kept).") var epochs: Int = 30
    @Option(name: .long, help: "L2 weight decay of the MLP.") var weightDecay: Float = 1e-3
    @Option(name: .long, help: "Random seed.") var seed: UInt64 = 0
    @Option(name: .long, help: "Measured examples are saved here after every chunk and reused by a rerun (default: <out>.checkpoint; removed when training finishes).") var checkpoint: String?
    @OptionGroup var modelOptions: ModelOptions

    var options: RouterTraining.Options {
        .init(data: data, out: out, prior: prior, trainChunks: trainChunks, chunk: chunk, valChunks: valChunks, budgets: budgets, alphas: alphas,
              hidden: hidden, epochs: epochs, weightDecay: weightDecay, seed: seed, checkpoint: checkpoint, threads: modelOptions.threads)
    }

    func run() throws { try RouterTraining.run(options, model: modelOptions.load, report: .terminal) }
}

struct TrainPredictor: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predictor",
        abstract: "Fit the Budget Predictor (used by --budget auto) from measured per-prompt quality curves.",
        discussion: """
            For each training prompt (the train half of the chat prompts, plus WikiText-2
            segments from before the evaluation text) the full model's greedy continuation is
            teacher-forced through the router at every grid budget and the mean KL per token is
            recorded. Curves are saved after every prompt to --curves, so an interrupted run
            resumes where it stopped. A ridge regression then predicts log KL at each budget
            from the prompt's routing context; `--budget auto` runs the smallest budget whose
            predicted KL is under --quality-tolerance. Reproduce the shipped predictor with:
              buddy train predictor --chat-data ../shared/data/mt_bench_questions.jsonl \\
                --text-data ../shared/data/wikitext2_valid.txt --out routers/budget-predictor.json
            """)

    @Option(name: .long, help: "Chat prompts (MT-Bench JSON lines); the train split (even positions) is used.") var chatData: String
    @Option(name: .long, help: "Text for extra prompts (WikiText-2); segments come from its first --text-tokens tokens.") var textData: String
    @Option(name: .long, help: "Number of text segments used as prompts.") var textPrompts: Int = 120
    @Option(name: .long, help: "Text segments are drawn from the first N tokens (evaluation skips the first 20 chunks of 512 = 10,240).") var textTokens: Int = 10_240
    @Option(name: .long, help: "Reference continuation length in tokens.") var maxReply: Int = 48
    @Option(name: .long, help: "Budget grid the predictor chooses from.") var budgets: String = "0.5,0.6,0.7,0.75,0.8,0.85,0.9,0.95"
    @Option(name: .long, help: "Router whose quality curves are measured.") var router: String = "buddy"
    @Option(name: .long, help: "Stand-ins the curves are measured with: on (the model's), off, or a file. Default: on when the model has stand-ins.") var standIns: StandInChoice = .auto
    @Option(name: .long, help: "Where to write the predictor (written atomically).") var out: String
    @Option(name: .long, help: "Measured curves, saved after each prompt and reused on the next run (default: <out>.curves.json).") var curves: String?
    @Option(name: .long, help: "Ridge strengths tried; the one with the lowest validation error is kept.") var lambdas: String = "0.01,0.1,1,10"
    @Option(name: .long, help: "Share of prompts held out for validation.") var valFraction: Double = 0.2
    @Option(name: .long, help: "Tolerance (mean KL per token) the validation report uses.") var qualityTolerance: Double = BudgetPredictor.defaultTolerance
    @Option(name: .long, help: "Random seed (segments and the validation split).") var seed: UInt64 = 0
    @OptionGroup var modelOptions: ModelOptions

    var options: PredictorTraining.Options {
        .init(chatData: chatData, textData: textData, textPrompts: textPrompts, textTokens: textTokens, maxReply: maxReply, budgets: budgets, router: router,
              standIns: standIns, out: out, curves: curves, lambdas: lambdas, valFraction: valFraction, qualityTolerance: qualityTolerance, seed: seed,
              threads: modelOptions.threads)
    }
    func validate() throws { try validating(options.validate) }

    func run() throws { try PredictorTraining.run(options, model: modelOptions.load, report: .terminal) }
}

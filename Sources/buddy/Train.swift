import ArgumentParser
import BuddyCore
import BuddyRouting
import BuddyTraining
import Foundation

extension PredictorTraining.ChoiceRule: ExpressibleByArgument {}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train the Decision Module (default), the prompt sets of a router, or the Budget Predictor for this model.",
        subcommands: [TrainRouter.self, TrainPromptSets.self, TrainReplySets.self, TrainPredictor.self], defaultSubcommand: TrainRouter.self)
}

struct TrainRouter: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "router",
        abstract: "Train the Decision Module for this model and write a router file.",
        discussion: """
            Method (docs/TRAINING.md): candidate layer sets per budget come from a layer-set
            search with the model's stand-ins and from the static rankings; every candidate's
            KL from full depth is measured at every training and validation position; per
            budget a linear scorer on the routing context (pooled layer-0 K/V and the token's
            hidden state after layer 0) learns which set to run for each token, and is kept
            only where routing with it beats the best single set on validation. Everything
            measured is checkpointed, so a rerun resumes. The shipped router is this command
            followed by `buddy train prompt-sets` and `buddy train reply-sets` runs, as its notes
            record; scripts/train_router.sh runs that chain.
            """)

    @Option(name: .long, help: "Where to write the router (written atomically).") var out: String
    @OptionGroup var dataOptions: RefitDataOptions
    @Option(name: .long, help: "Static rankings whose sets are candidates besides the search's (the first also thins the searched sets below --min-kept); 'single-layer' adds the ranking by single-layer removal KL that this command measures.") var candidates: String = "sleb,shortgpt"
    @Option(name: .long, help: "Budgets that get a fitted choice among the candidates (the slider's positions); other budgets run the searched set.") var budgets: String = "0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95"
    @Option(name: .long, help: "Search text: this many --search-window-token chunks from the start of --data.") var searchTextChunks: Int = 4
    @Option(name: .long, help: "Tokens per search text chunk (positions 16 on are scored).") var searchWindow: Int = 256
    @Option(name: .long, help: "Search conversations: train-split chat prompts from the first.") var searchChatPrompts: Int = 8
    @Option(name: .long, help: "Reply tokens per search conversation.") var searchReplyTokens: Int = 48
    @Option(name: .long, help: "The search goes from all routable layers down to this many.") var minKept: Int = 14
    @Option(name: .long, help: "Bound on the search's put-back steps.") var maxInclusions: Int = 20
    @Option(name: .long, help: "L2 strengths tried for each scorer; validation picks one.") var l2: String = "0.0001,0.001,0.01,0.1"
    @Option(name: .long, help: "Relative validation gain a scorer must show over the best single set to be kept.") var minGain: Double = 0.005
    @Option(name: .long, help: "Budgets whose searched set is refined on the training data by one-swap moves (each round measures every set that trades one kept layer for a skipped one); the refined set joins the candidates. Comma-separated; empty for none.") var refineBudgets: String = ""
    @Option(name: .long, help: "Most swap rounds per refined budget.") var refineRounds: Int = 2
    @Option(name: .long, help: "Budgets whose searched set's best one-swap neighbours, ranked on the search data, join the candidates as swap1, swap2, ... Comma-separated; empty for none.") var neighbourBudgets: String = ""
    @Option(name: .long, help: "How many neighbours join at each --neighbour-budgets budget.") var neighbours: Int = 3
    @Option(name: .long, help: "Balance of a pair scorer over each budget's two best sets (0: none). Tried at every budget; ships where routing with it beats the alternatives on validation by --min-gain.") var pairBalance: Float = 0
    @Option(name: .long, help: "Stand-ins the router is trained with: on (the model's), off, or a file. Default: on when the model has stand-ins.") var standIns: StandInChoice = .auto
    @Option(name: .long, help: "KV policy the routed validation runs under (fill, mask, zero).") var kvPolicy: KVPolicy = .fill
    @Option(name: .long, help: "Measurements are saved here after every step and reused by a rerun (default: <out>.checkpoint.json; removed when training finishes).") var checkpoint: String?
    @OptionGroup var modelOptions: ModelOptions

    var options: RouterTraining.Options {
        var o = RouterTraining.Options(data: dataOptions.refit, out: out)
        o.candidates = candidates; o.budgets = budgets
        o.searchTextChunks = searchTextChunks; o.searchWindow = searchWindow
        o.searchChatPrompts = searchChatPrompts; o.searchReplyTokens = searchReplyTokens
        o.minKept = minKept; o.maxInclusions = maxInclusions; o.l2 = l2; o.minGain = minGain
        o.refineBudgets = refineBudgets; o.refineRounds = refineRounds
        o.neighbourBudgets = neighbourBudgets; o.neighbours = neighbours; o.pairBalance = pairBalance
        o.standIns = standIns; o.kvPolicy = kvPolicy; o.checkpoint = checkpoint; o.threads = modelOptions.threads
        o.modelArgument = modelOptions.model
        return o
    }
    func validate() throws { try validating(options.validate) }

    func run() throws { try RouterTraining.run(options, model: try modelOptions.load(), report: .terminal) }
}

struct TrainPromptSets: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prompt-sets",
        abstract: "Search, per budget, the layer set a prompt at that budget runs, and write the router with them.",
        discussion: """
            Every reply token reads the prompt's KV cache, so the layers a prompt skips cost
            the whole reply. On the train split of the chat prompts (even positions), with the
            reply routed by the router itself, this measures chat KL for the router's own prompt
            decisions, for the set it picks most often, and for every one-layer change of that
            set, then tries the swaps of the best additions and cheapest removals; a budget
            keeps the best set of exactly k layers only if it beats the router's own decisions
            (docs/TRAINING.md, "The prompt's own set"). Works for the Decision Module and for
            static rankings alike, so baselines get the same capability. Reproduce the shipped
            sets with (each about 15 minutes per budget on one core):
              buddy train prompt-sets --router buddy --chat-data ../shared/data/mt_bench_questions.jsonl \\
                --budgets 0.8,0.7,0.9,0.5 --out routers/buddy-router.json
            then the same with --budgets 0.8 --rounds 4 (about 45 minutes), with --budgets 0.7
            --rounds 2 (about 25 minutes) and with --budgets 0.5 --rounds 2 (about 25 minutes), in
            that order, and likewise --router sleb / shortgpt with --out
            routers/sleb-ranking.json / shortgpt-ranking.json. A search of some budgets keeps the
            earlier searches' records in the notes and follows them.
            """)

    @Option(name: .long, help: "The router: buddy, sleb, shortgpt or a router/ranking file.") var router: String = "buddy"
    @Option(name: .long, help: "Chat prompts (MT-Bench JSON lines); the train split (even positions) is used.") var chatData: String
    @Option(name: .long, help: "Train-split prompts used (from the first).") var prompts: Int = 40
    @Option(name: .long, help: "Budgets searched, in order; the router's other budgets keep the prompt sets they have.") var budgets: String = "0.8"
    @OptionGroup var search: SetSearchRounds
    @Option(name: .long, help: "Where to write the router with its prompt sets (written atomically; may be the router's own file).") var out: String
    @Option(name: .long, help: "Measurements are saved here after each one and reused by a rerun (default: <out>.prompt-sets.checkpoint.json). Kept when the search finishes: a later search of the same router reuses its measurements.") var checkpoint: String?
    @OptionGroup var modelOptions: ModelOptions

    var options: PromptSetSearch.Options {
        var o = PromptSetSearch.Options(router: router, chatData: chatData, out: out)
        o.prompts = prompts
        search.apply(to: &o, budgets: budgets)
        o.checkpoint = checkpoint; o.threads = modelOptions.threads
        return o
    }
    func validate() throws { try validating(options.validate) }

    func run() throws { try PromptSetSearch.run(options, model: try modelOptions.load(), report: .terminal) }
}

struct TrainReplySets: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reply-sets",
        abstract: "Search, per budget, the one layer set the Decision Module's reply runs, on chat, and write the router with it.",
        discussion: """
            The search of `buddy train prompt-sets` applied to the reply: with the prompt at
            full depth (as the chat runs it), chat KL along the full model's greedy replies for
            the module's own reply decisions at the budget, for its set there, for every
            one-layer change of that set and for the swaps of the best additions and cheapest
            removals. A budget keeps the best set of exactly k layers as the module's one choice
            there only if it beats the module's own decisions; prompt sets are kept as they are
            (docs/TRAINING.md, "A reply set searched on more kinds of chat").
            """)

    @Option(name: .long, help: "The Decision Module: buddy or a router file.") var router: String = "buddy"
    @Option(name: .long, help: "Chat prompts (MT-Bench JSON lines).") var chatData: String
    @Option(name: .long, help: "Which prompts of --chat-data: train (even positions), heldout (odd) or all.") var split: String = "train"
    @Option(name: .long, help: "Prompts of the split used (from the first).") var prompts: Int = 40
    @Option(name: .long, help: "Budgets searched, in order; the module's other budgets keep their choices.") var budgets: String = "0.5"
    @OptionGroup var search: SetSearchRounds
    @Option(name: .long, help: "WikiText-2 file: with it, the module's own set, the reply set and a pair scorer over both compete on validation prose and chat, and the best is the choice.") var textData: String?
    @Option(name: .long, help: "Training text: 512-token chunks from the start of --text-data (scored from position 128).") var textChunks: Int = 8
    @Option(name: .long, help: "512-token chunks of --text-data skipped before the validation text.") var validationSkipChunks: Int = 12
    @Option(name: .long, help: "512-token chunks of validation text (second halves scored).") var validationChunks: Int = 8
    @Option(name: .long, help: "Validation chat: prompts of the split after the --prompts searched ones.") var validationPrompts: Int = 60
    @Flag(name: .long, help: "Prose and chat weigh the same in the pair's fit and choice, and no choice may cost validation prose more than 0.5 %.") var balanced = false
    @Option(name: .long, help: "Balance of the pair scorer's fit (SetChoiceFit): keeps both sets in use, over all training positions, or with --prose-guard over chat positions only.") var pairBalance: Float = 1
    @Option(name: .long, help: "In the pair's fit, the reply set costs at least the own set plus this many nats at every training prose position, so the scorer keeps prose on the module's own set (0: none).") var proseGuard: Double = 0
    @Option(name: .long, help: "More training prose for the pair's fit, as FIRST..<END 512-token chunks of --text-data (e.g. 84..<116).") var textExtraChunks: String?
    @Flag(name: .long, help: "The search's measure is the mean of chat KL and KL on the training prose of --text-data (needs --text-data).") var proseObjective = false
    @Option(name: .long, help: "Where to write the router (written atomically; may be the router's own file).") var out: String
    @Option(name: .long, help: "Measurements are saved here after each one and reused by a rerun (default: <out>.reply-sets.checkpoint.json, removed when the search finishes; a file named here is kept).") var checkpoint: String?
    @OptionGroup var modelOptions: ModelOptions

    var options: PromptSetSearch.Options {
        var o = PromptSetSearch.Options(router: router, chatData: chatData, out: out)
        o.part = .reply
        o.split = ChatPromptSplit(rawValue: split) ?? .train
        if let textData {
            var d = ReplySetPair.Data(text: textData)
            d.textChunks = textChunks; d.validationSkipChunks = validationSkipChunks; d.validationChunks = validationChunks; d.validationPrompts = validationPrompts; d.balanced = balanced
            d.proseGuard = proseGuard; d.balance = pairBalance
            o.pairData = d
        }
        o.proseObjective = proseObjective
        if let textExtraChunks { o.pairData?.textExtraChunks = try? TrainingData.chunkRange(textExtraChunks, "--text-extra-chunks") }
        o.prompts = prompts
        search.apply(to: &o, budgets: budgets)
        o.checkpoint = checkpoint; o.threads = modelOptions.threads
        return o
    }
    func validate() throws {
        guard ChatPromptSplit(rawValue: split) != nil else { throw ValidationError("--split must be train, heldout or all") }
        if let textExtraChunks {
            guard textData != nil else { throw ValidationError("--text-extra-chunks needs --text-data") }
            try validating { _ = try TrainingData.chunkRange(textExtraChunks, "--text-extra-chunks") }
        }
        guard pairBalance >= 0, pairBalance.isFinite else { throw ValidationError("--pair-balance must be a finite number, at least 0") }
        guard proseGuard >= 0, proseGuard.isFinite else { throw ValidationError("--prose-guard must be a finite number of nats, at least 0") }
        guard proseGuard == 0 || textData != nil else { throw ValidationError("--prose-guard needs --text-data") }
        guard !proseObjective || textData != nil else { throw ValidationError("--prose-objective needs --text-data") }
        guard textChunks >= 1, validationSkipChunks >= 0, validationChunks >= 1, validationPrompts >= 1 else {
            throw ValidationError("--text-chunks, --validation-chunks and --validation-prompts must be at least 1")
        }
        try validating(options.validate)
    }

    func run() throws { try PromptSetSearch.run(options, model: try modelOptions.load(), report: .terminal) }
}

/// What `buddy train prompt-sets` and `reply-sets` share: the references and the rounds of the search.
struct SetSearchRounds: ParsableArguments {
    @Option(name: .long, help: "Length of the full model's reference replies, in tokens.") var replyTokens: Int = 64
    @Option(name: .long, help: "How many of the best additions and cheapest removals are combined into swaps.") var width: Int = 2
    @Option(name: .long, help: "Rounds of one-layer changes, each from the best set of the last; stops early when a round finds nothing better.") var rounds: Int = 1
    @Option(name: .long, help: "Stand-ins the search runs with: on (the model's), off, or a file. Default: on when the model has stand-ins.") var standIns: StandInChoice = .auto

    func apply(to o: inout PromptSetSearch.Options, budgets: String) {
        o.replyTokens = replyTokens; o.width = width; o.rounds = rounds; o.standIns = standIns
        o.budgets = budgets.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
    }
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
            from the prompt's routing context. With --full-depth-share (and --choices hull)
            `--budget auto` runs that share of requests, those predicted to drift most among the
            recent ones, at full depth and the rest at the lowest choice; otherwise the smallest
            budget whose predicted KL is under --quality-tolerance. Reproduce the shipped
            predictor with:
              python3 scripts/training_chat_requests.py
              buddy train predictor --chat-data ../shared/data/mt_bench_questions.jsonl \\
                --extra-chat-data .build/training-chat-requests.jsonl --text-prompts 40 \\
                --text-data ../shared/data/wikitext2_valid.txt --choices hull \\
                --full-depth-share 0.25 --out routers/budget-predictor.json
            """)

    @Option(name: .long, help: "Chat prompts (MT-Bench JSON lines); the train split (even positions) is used.") var chatData: String
    @Option(name: .long, help: "More chat requests (MT-Bench layout, e.g. from scripts/training_chat_requests.py), all of them training prompts.") var extraChatData: String?
    @Option(name: .long, help: "Text for extra prompts (WikiText-2); segments come from its first --text-tokens tokens.") var textData: String
    @Option(name: .long, help: "Number of text segments used as prompts.") var textPrompts: Int = 120
    @Option(name: .long, help: "Text segments are drawn from the first N tokens (evaluation skips the first 20 chunks of 512 = 10,240).") var textTokens: Int = 10_240
    @Option(name: .long, help: "Reference continuation length in tokens.") var maxReply: Int = 48
    @Option(name: .long, help: "Budget grid whose quality curves are measured and predicted.") var budgets: String = "0.5,0.6,0.7,0.75,0.8,0.85,0.9,0.95"
    @Option(name: .long, help: "Budgets --budget auto may choose: hull (the grid budgets on the lower convex hull of the training chat prompts' mean curve within the recommended zone, and full depth) or grid (every grid budget, the default).") var choices: PredictorTraining.ChoiceRule = .grid
    @Option(name: .long, help: "Router whose quality curves are measured, optionally steered along each reply (+steer, as the chat runs by default).") var router: String = PredictorTraining.defaultRouter
    @Option(name: .long, help: "Stand-ins the curves are measured with: on (the model's), off, or a file. Default: on when the model has stand-ins.") var standIns: StandInChoice = .auto
    @Option(name: .long, help: "Where to write the predictor (written atomically).") var out: String
    @Option(name: .long, help: "Measured curves, saved after each prompt and reused on the next run (default: <out>.curves.json).") var curves: String?
    @Option(name: .long, help: "Ridge strengths tried; the one with the lowest validation error is kept.") var lambdas: String = "0.01,0.1,1,10"
    @Option(name: .long, help: "Share of prompts held out for validation.") var valFraction: Double = 0.2
    @Option(name: .long, help: "Tolerance (mean KL per token) the validation report uses.") var qualityTolerance: Double = BudgetPredictor.defaultTolerance
    @Option(name: .long, help: "Tolerances of the cross-validated comparison of --budget auto with fixed budgets on the training chat prompts.") var tolerances: String = "0.25,0.4,0.6,1.0"
    @Option(name: .long, help: "Make the share rule --budget auto's default: this share of requests at full depth (those predicted to drift most among the recent ones), the rest at the lowest choice. Needs --choices hull.") var fullDepthShare: Double?
    @Option(name: .long, help: "Random seed (segments and the validation split).") var seed: UInt64 = 0
    @OptionGroup var modelOptions: ModelOptions

    var options: PredictorTraining.Options {
        var o = PredictorTraining.Options(chatData: chatData, extraChatData: extraChatData, textData: textData, textPrompts: textPrompts, textTokens: textTokens, maxReply: maxReply,
              budgets: budgets, router: router, standIns: standIns, out: out, curves: curves, lambdas: lambdas, valFraction: valFraction, qualityTolerance: qualityTolerance,
              tolerances: tolerances, seed: seed, threads: modelOptions.threads, choiceRule: choices)
        o.fullDepthShare = fullDepthShare
        return o
    }
    func validate() throws { try validating(options.validate) }

    func run() throws { try PredictorTraining.run(options, model: modelOptions.load, report: .terminal) }
}

import ArgumentParser
import BuddyCore
import BuddyEvaluation
import BuddyRouting
import Foundation

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure model quality.",
        subcommands: [Perplexity.self, HellaSwag.self, Chat.self, Replies.self, Auto.self, PoolAuto.self, Paired.self, Plot.self])
}

extension Eval {
    struct Perplexity: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Perplexity on a text file with llama.cpp's protocol.",
            discussion: """
                The file is tokenized whole and cut into chunks of --ctx tokens; each chunk is
                evaluated from an empty cache and only its second half is scored, as
                llama.cpp's llama-perplexity does. Example:
                  buddy eval perplexity --data ../shared/data/wikitext2_valid.txt --chunks 8
                """)
        @Option(name: .long, help: "Text file to score (e.g. WikiText-2).") var data: String
        @Option(name: .long, help: "Score only N chunks (default: all).") var chunks: Int?
        @Option(name: .long, help: "Skip the first N chunks (e.g. text used for calibration or training).") var skipChunks: Int = 0
        @Option(name: .long, help: "Chunk size in tokens.") var ctx: Int = 512
        @OptionGroup var routing: EvalRoutingOptions
        @Option(name: .long, help: "Also write the results as CSV (method,budget,kv_policy,ppl,tokens).") var csv: String?
        @Option(name: .long, help: "Also draw perplexity against budget, one line per method, as SVG.") var plot: String?
        @Option(name: .long, help: "Also write every chunk's result as CSV (method,budget,kv_policy,stand_ins,chunk,nll,tokens), for paired comparisons of methods on the same chunks (buddy eval paired).") var items: String?
        @OptionGroup var modelOptions: ModelOptions

        var options: PerplexityRun.Options {
            .init(data: data, chunks: chunks, skipChunks: skipChunks, ctx: ctx, grid: routing.grid, threads: modelOptions.threads)
        }
        func validate() throws { try validating(options.validate) }

        func run() throws {
            let (table, total, fileTokens, itemRows) = try PerplexityRun.run(options, model: modelOptions.load, report: .terminal)
            try writeItems(itemRows, to: items)
            if table.rows.count == 1 {
                let r = table.rows[0]
                print(String(format: "perplexity %.4f over %d chunks of %d (%d scored tokens; %d tokens in file)", r.values[0], total, ctx, Int(r.values[1]), fileTokens))
            } else {
                print(table.markdown(), terminator: "")
            }
            try table.save(csv: csv, plot: plot, title: "WikiText-2 perplexity against budget", logScale: true)
        }
    }

    struct HellaSwag: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "hellaswag",
            abstract: "HellaSwag acc_norm (llama.cpp's file layout and scoring).",
            discussion: """
                Each ending, prefixed by a space, is scored by the mean log-probability of its
                tokens after the context; the highest mean wins. Example:
                  buddy eval hellaswag --data ../shared/data/hellaswag_dev.txt --limit 400 --budgets 1,0.9 --methods buddy,sleb
                """)
        @Option(name: .long, help: "Task file (6 lines per task).") var data: String
        @Option(name: .long, help: "Skip the first N tasks (to extend an earlier run on the following ones; --items numbers tasks from the start of the file).") var skip: Int = 0
        @Option(name: .long, help: "Use only the first N tasks (after --skip).") var limit: Int?
        @OptionGroup var routing: EvalRoutingOptions
        @Option(name: .long, help: "Also write CSV (method,budget,kv_policy,acc_norm,n).") var csv: String?
        @Option(name: .long, help: "Also draw acc_norm against budget, one line per method, as SVG.") var plot: String?
        @Option(name: .long, help: "Also write every task's result as CSV (method,budget,kv_policy,task,gold,chosen,stand_ins), for paired comparisons of methods on the same tasks (buddy eval paired).") var items: String?
        @OptionGroup var modelOptions: ModelOptions

        var options: HellaSwagRun.Options { .init(data: data, skip: skip, limit: limit, grid: routing.grid, threads: modelOptions.threads) }

        func validate() throws { try validating(options.validate) }

        func run() throws {
            let (table, itemRows) = try HellaSwagRun.run(options, model: modelOptions.load, report: .terminal)
            print(table.markdown(), terminator: "")
            try table.save(csv: csv, plot: plot, title: "HellaSwag acc_norm against budget", logScale: false)
            try writeItems(itemRows, to: items)
        }
    }

    struct Chat: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Chat fidelity: KL divergence and top-1 agreement with the full model along its own replies.",
            discussion: """
                For each chat prompt (first turns of a JSON-lines file such as MT-Bench's), the
                full-depth model's greedy reply is the reference. Each routed model is then
                teacher-forced along that reply: the prompt runs with one routing decision (or at
                full depth with --prompt-depth full, as the chat runs it), every reply token is a
                decode step with its own decision. Reported per
                method and budget: mean KL(full ‖ routed) in nats per reply token and top-1
                agreement with the full model. The full model runs once per prompt for all cells.
                By default the held-out half of the prompts is used (odd positions in the file;
                `buddy train` and the budget predictor use the even ones). Example:
                  buddy eval chat --data ../shared/data/mt_bench_questions.jsonl --budgets 0.9,0.8 --methods buddy,sleb
                """)
        @OptionGroup var promptOptions: ChatPromptOptions
        @OptionGroup var routing: EvalRoutingOptions
        @Option(name: .long, help: "How each prompt runs: budget (at the cell's budget, one decision; the default and the protocol of EVAL.md's chat tables) or full (every layer, as the chat runs it; the budget then covers the reply only).") var promptDepth: PromptDepth = .budget
        @Option(name: .long, help: "Also write CSV (method,budget,kv_policy,kl,top1_agreement,tokens).") var csv: String?
        @Option(name: .long, help: "Also draw KL against budget, one line per method, as SVG.") var plot: String?
        @Option(name: .long, help: "Also write every prompt's result as CSV (method,budget,kv_policy,stand_ins,prompt,kl_sum,agreements,tokens), for paired comparisons of methods on the same prompts (buddy eval paired).") var items: String?
        @Option(name: .long, help: "Also write every reply position as CSV (method,budget,stand_ins,prompt,position,token,kl,routed_entropy,routed_log_probability,reference_entropy), for studies of where the divergence lies.") var positions: String?
        @OptionGroup var modelOptions: ModelOptions

        func validate() throws { try modelOptions.validateThreads() }

        func run() throws {
            let (table, prompts, itemRows, positionRows) = try ChatFidelityRun.run(prompts: promptOptions.selection, grid: routing.grid, promptDepth: promptDepth,
                                                                                   threads: modelOptions.threads, positions: positions != nil,
                                                                                   model: modelOptions.load, report: .terminal)
            try writeItems(itemRows, to: items)
            try writeItems(positionRows, to: positions)
            print(table.markdown(), terminator: "")
            print("\(prompts) prompts (\(promptOptions.split) split\(promptOptions.turn == .followUp ? ", follow-up turns" : "")), full-depth greedy replies of up to \(promptOptions.maxReply) tokens; "
                  + (promptDepth == .full ? "prompts at full depth" : "prompts at each budget"))
            try table.save(csv: csv, plot: plot, title: "Chat: KL from full depth against budget", logScale: true)
        }
    }

    struct Replies: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replies sampled as the chat writes them: how often they repeat themselves, and how the full model rates them.",
            discussion: """
                For each chat prompt (first turns), each method and budget samples a reply
                with the chat's sampler and defaults (the prompt at full depth, as the chat
                runs it), up to --max-reply tokens. Reported per cell: the share of reply
                tokens that end a run of \(SampledReplyRun.repeatRun) tokens already seen
                earlier in the same reply, the share of replies that stop only at the token
                limit, the mean reply length, and the full model's negative log-likelihood of
                the replies (teacher-forced, every layer, no stand-ins), over all their tokens
                and over the tokens that do not repeat (a copied token is nearly free to the
                full model, so a loop reads as fluent), and of the replies at the limit the
                share the full model would have ended (its end-of-turn probability reaches 0.5
                before some reply token), and the layers run per reply token. Prompts that
                carry an "answers" list (eval/simple-facts.jsonl) add the share of replies
                that give one among their first \(ReplyAnswer.window) words (whole words, case
                ignored), and --replies marks each reply "right". The chat's default method is
                buddy+sentence. Example:
                  buddy eval replies --data ../shared/data/mt_bench_questions.jsonl --split train --max-reply 512 --budgets 1,0.7 --methods buddy+sentence
                """)
        @OptionGroup var promptOptions: ChatPromptOptions
        @OptionGroup var routing: EvalRoutingOptions
        @OptionGroup var sampling: SamplingOptions
        @Option(name: .long, help: "Also write CSV (method,budget,kv_policy,stand_ins,repeated_share,limit_share,tokens,judge_nll,judge_nll_new,limit_full_would_end,layers, and answers_right when the prompts carry answers).") var csv: String?
        @Option(name: .long, help: "Also write every prompt's result as CSV (\(SampledReplyRun.itemHeader)).") var items: String?
        @Option(name: .long, help: "Also write every reply as a JSON line (method, budget, stand_ins, prompt, tokens, hit_limit, repeated_tokens, right when the prompt carries answers, text).") var replies: String?
        @OptionGroup var modelOptions: ModelOptions

        func validate() throws { try modelOptions.validateThreads() }

        func run() throws {
            let p = sampling.chatParameters
            let (table, prompts, itemRows, replyRows) = try SampledReplyRun.run(prompts: promptOptions.selection, grid: routing.grid, sampling: p,
                                                                                maxTokens: promptOptions.maxReply, lanes: modelOptions.threads,
                                                                                model: modelOptions.load, report: .terminal)
            try writeItems(itemRows, to: items)
            if let replies { try AtomicFile.write(Data((replyRows.joined(separator: "\n") + "\n").utf8), to: replies) }
            print(table.markdown(), terminator: "")
            print(String(format: "%d prompts (%@ split), replies of up to %d tokens sampled at temperature %g, top-k %d, top-p %g, min-p %g, "
                         + "repetition penalty %g over %d tokens, DRY %g (base %g, allowed %d), seed %llu; prompts at full depth",
                         prompts, promptOptions.split, promptOptions.maxReply, p.temperature, p.topK, p.topP, p.minP, p.repetitionPenalty,
                         p.repetitionWindow, p.dryMultiplier, p.dryBase, p.dryAllowedLength, p.seed))
            try table.save(csv: csv, plot: nil, title: "", logScale: false)
        }
    }

    struct Paired: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Two methods on the same chunks or prompts: the ratio of their figures and its paired standard error.",
            discussion: """
                Reads the files that `buddy eval perplexity|chat|hellaswag --items` write (all of
                one kind) and, at every budget both methods were scored at, prints A's perplexity
                (or mean chat KL) against B's in percent with the standard error of that
                difference from the per-chunk (per-prompt) differences; for HellaSwag, the
                difference of the accuracies with its paired s.e. and the tasks only one of the two
                got right. A method with stand-ins on is named NAME+stand-ins. Example:
                  buddy eval paired --a buddy+stand-ins --b sleb+stand-ins eval/stand-ins-ppl-items.csv
                """)
        @Option(name: .long, help: "Method A (e.g. buddy+stand-ins).") var a: String
        @Option(name: .long, help: "Method B (e.g. sleb+stand-ins).") var b: String
        @Argument(help: "Items files.") var files: [String]
        @Option(name: .long, help: "Also write the rows as CSV (budget,items,a,b,percent,standard_error; for HellaSwag a and b are accuracies and percent their difference in points).") var csv: String?

        func run() throws {
            let (kind, rows) = try PairedComparison.compare(files: files, a: a, b: b)
            print(PairedComparison.markdown(kind, rows, a: a, b: b), terminator: "")
            if let csv { try AtomicFile.write(Data(PairedComparison.csv(rows).utf8), to: csv) }
        }
    }

    struct PoolAuto: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "pool-auto",
            abstract: "Pool the per-prompt CSVs of several `buddy eval auto --csv` runs: auto against the fixed budget of the same mean compute, and against a coin of the same share, over every prompt.",
            discussion: """
                Per rule: the prompts, how many ran at full depth, auto's mean KL per token, and
                the paired comparisons the CSVs carry (fixed_kl, coin_kl) with the standard error
                over all prompts, as `buddy eval auto` reports them for one set. Example:
                  buddy eval pool-auto eval/share-predictor-*-auto.csv
                """)
        @Argument(help: "CSV files written by buddy eval auto --csv.") var files: [String]

        func run() throws { print(try AutoBudgetRun.pooled(files: files), terminator: "") }
    }

    struct Plot: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Draw a metric against budget from an eval CSV (one line per method) as SVG.",
            discussion: """
                Reads the CSV that --csv writes (method,budget,kv_policy,<metrics…>). Example:
                  buddy eval plot --csv eval/ppl.csv --metric ppl --log --out eval/ppl.svg
                """)
        @Option(name: .long, help: "CSV written by buddy eval … --csv.") var csv: String
        @Option(name: .long, help: "Metric column to plot (default: the first after kv_policy).") var metric: String?
        @Flag(name: .long, help: "Logarithmic y axis.") var log = false
        @Option(name: .long, help: "Title of the chart.") var title: String?
        @Option(name: .long, help: "SVG file to write.") var out: String

        func run() throws {
            let (table, name) = try EvalTable.read(csvAt: csv, metric: metric)
            try table.save(csv: nil, plot: out, title: title ?? "\(name) against budget", logScale: log)
            print("wrote \(out)")
        }
    }

    struct Auto: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Does --budget auto put compute where it matters? Its chosen budgets against a fixed budget of the same mean compute.",
            discussion: """
                For each chat prompt, in the file's order (one chooser walks them, as a
                conversation's messages), the Budget Predictor chooses a budget from the prompt's
                routing context (as `--budget auto` does) and the routed model is teacher-forced along the
                full model's greedy reply (KL from full depth and top-1 agreement, as in
                `buddy eval chat`). Every prompt is also measured at each budget of the predictor's
                grid, so the same prompts at a fixed budget of the same mean compute (mean routable
                layers per reply token, interpolated between the two neighbouring grid budgets)
                are the comparison. Prints the distribution of chosen budgets, the mean budget per
                prompt category, and auto against fixed; under the share rule also against a coin
                that sends the same share of prompts to full depth. Example:
                  buddy eval auto --data ../shared/data/mt_bench_questions.jsonl --csv eval/auto.csv
                """)
        @OptionGroup var promptOptions: ChatPromptOptions
        @Option(name: .long, help: "Tolerance rules to report: the largest predicted KL from full depth (nats per token) the auto budget accepts; a comma-separated list reports each.") var qualityTolerance: String?
        @Option(name: .long, help: "Share rules to report: the share of prompts run at full depth (the rest at the predictor's lowest choice), each chooser walking the prompts in order; a comma-separated list reports each. With neither option: the predictor's default rule.") var fullDepthShare: String?
        @Option(name: .long, help: "Budget predictor file (default: routers/budget-predictor.json).") var predictor: String?
        @Option(name: .long, help: "Fixed budgets every prompt runs at: a subset of the predictor's grid that holds every budget the rules can choose (default: the whole grid). Fixed budgets of the same mean compute interpolate between these.") var budgets: String?
        @Option(name: .long, help: "Router the budgets are run with.") var router: String = "buddy"
        @Option(name: .long, help: "What a skipped layer adds: on (the model's stand-ins), off (plain skip), or a stand-in file. Default: on when the model has stand-ins.") var standIns: StandInChoice = .auto
        @Option(name: .long, help: "on: the automatic budget is also steered along each reply by its entropy (`+steer`, with which the figures of 2026-12-06 were measured); sentence: as the chat steered on 2026-12-07 (`+sentence`); lead: the same and every layer through the reply's first sentence, as the chat steers since 2026-12-08 (`+lead`, see `buddy generate --help`); the fixed budgets it is compared with are not, and its mean compute is what the steering ran.") var steering: AutoSteering = .off
        @Flag(name: .long, help: "With --steering on or sentence: steer the fixed budgets too, so auto and fixed differ only in the predictor's choice (each auto row is the steered fixed run at its budget).") var steerFixed = false
        @Option(name: .long, help: "Also write one CSV row per prompt and rule (rule,id,category,chosen_budget,kl,top1_agreement,tokens,routed_layers).") var csv: String?
        @Option(name: .long, help: HeadChoice.help) var head: HeadChoice = .standard
        @OptionGroup var modelOptions: ModelOptions

        /// --steering for `eval auto`: off, the entropy rule (on, as first published), sentence ends, or the chat's lead (sentence ends and the reply's first sentence).
        enum AutoSteering: String, ExpressibleByArgument, CaseIterable {
            case off, on, sentence, lead
            var signal: BudgetSteering.Signal? {
                switch self {
                case .off: return nil
                case .on: return .entropy
                case .sentence: return .sentence
                case .lead: return .lead
                }
            }
        }

        var options: AutoBudgetRun.Options {
            var o = AutoBudgetRun.Options(prompts: promptOptions.selection, qualityTolerance: qualityTolerance, fullDepthShare: fullDepthShare, predictor: predictor, router: router,
                                          standIns: standIns, csv: csv, threads: modelOptions.threads)
            o.steering = steering.signal
            o.steerFixed = steerFixed
            o.head = head
            o.budgets = budgets
            return o
        }
        func validate() throws { try validating(options.validate) }

        func run() throws { try AutoBudgetRun.run(options, model: modelOptions.load, report: .terminal) }
    }
}

/// Writes an eval's per-item CSV rows (`--items`), when asked for, atomically.
private func writeItems(_ rows: [String], to path: String?) throws {
    if let path { try AtomicFile.write(Data((rows.joined(separator: "\n") + "\n").utf8), to: path) }
}

extension ChatTurn: ExpressibleByArgument {}

/// --data, --split, --skip, --limit, --max-reply, --turn: the chat prompts `buddy eval chat` and `buddy eval auto` run.
struct ChatPromptOptions: ParsableArguments {
    @Option(name: .long, help: "JSON lines with a \"turns\" list per prompt (MT-Bench layout).") var data: String
    @Option(name: .long, help: "Which prompts: heldout (odd positions), train (even positions) or all.") var split: String = "heldout"
    @Option(name: .long, help: "Leave out the first N prompts of the split.") var skip: Int = 0
    @Option(name: .long, help: "Use only the first N prompts of the split (after --skip).") var limit: Int?
    @Option(name: .long, help: "Length of the reference reply in tokens (it ends earlier at end of turn).") var maxReply: Int = 128
    @Option(name: .long, help: "Which user turn is scored: first (the question) or follow-up (the second turn, asked after the full model's reply to the question).") var turn: ChatTurn = .first

    @Option(name: .long, help: "System prompt before each prompt's first turn (default: the model's own).") var system: String?

    var selection: ChatPromptSelection { .init(data: data, split: split, skip: skip, limit: limit, maxReply: maxReply, turn: turn, system: system) }

    func validate() throws { try validating(selection.validate) }
}

/// --budgets, --methods, --router, --kv-policy: the grid every `buddy eval` command runs.
struct EvalRoutingOptions: ParsableArguments {
    @Option(name: .long, help: "Comma-separated budgets, e.g. 1,0.9,0.8.") var budgets: String = "1"
    @Option(name: .long, help: "Comma-separated methods: buddy, shortgpt, sleb, last, random, even; each may end in +steer (the budget steered by the reply's entropy), +sentence (the same, and every layer at a step whose input ends a sentence), +lead (the same, and every layer through the reply's first sentence where k is at least two thirds of the routable layers: the chat's steering, see `buddy generate --help`) or +blind (the same share of raised steps chosen by a fixed-seed coin, the control).") var methods: String = "buddy"
    @Option(name: .long, help: "Router file to use for the method 'buddy' (default: routers/buddy-router.json).") var router: String?
    @Option(name: .long, help: "KV policy for skipped layers: fill (default: their K/V from the layer's input, computed when a later token runs the layer), mask or zero. Static sets give the same results under all three.") var kvPolicy: KVPolicy = .fill
    @Option(name: .long, help: "Comma-separated stand-in modes to compare, each on (the model's stand-ins), off (plain skip), auto (on when the model has stand-ins) or a stand-in file; e.g. on,off.") var standIns: String = "auto"

    @Option(name: .long, help: HeadChoice.help) var head: HeadChoice = .standard

    var grid: EvalGrid { .init(budgets: budgets, methods: methods, router: router, kvPolicy: kvPolicy, standIns: standIns, head: head) }

    func validate() throws { try validating(grid.validate) }
}

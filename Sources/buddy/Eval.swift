import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure model quality.",
        subcommands: [Perplexity.self, HellaSwag.self, Chat.self, Auto.self, Plot.self])
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
        @Option(name: .long, help: "Text file to score (e.g. WikiText-2).")
        var data: String
        @Option(name: .long, help: "Score only N chunks (default: all).")
        var chunks: Int?
        @Option(name: .long, help: "Skip the first N chunks (e.g. text used for calibration or training).")
        var skipChunks: Int = 0
        @Option(name: .long, help: "Chunk size in tokens.")
        var ctx: Int = 512
        @OptionGroup var routing: EvalRoutingOptions
        @Option(name: .long, help: "Also write the results as CSV (method,budget,kv_policy,ppl,tokens).")
        var csv: String?
        @Option(name: .long, help: "Also draw perplexity against budget, one line per method, as SVG.")
        var plot: String?
        @OptionGroup var modelOptions: ModelOptions

        func validate() throws {
            guard ctx >= 16 && ctx <= 8192 else { throw ValidationError("--ctx must be between 16 and 8192") }
            if let chunks, chunks < 1 { throw ValidationError("--chunks must be at least 1") }
            guard skipChunks >= 0 else { throw ValidationError("--skip-chunks must be >= 0") }
            try modelOptions.validateThreads()
        }

        func run() throws {
            guard var text = try? String(contentsOfFile: data, encoding: .utf8) else {
                throw CLIError("cannot read data file '\(data)' as UTF-8 text")
            }
            // llama.cpp's -f drops one trailing newline; do the same so chunks line up.
            if text.hasSuffix("\n") { text.removeLast() }
            let model = try modelOptions.load()
            let evaluator = PerplexityEvaluator(model: model, contextSize: ctx, threads: modelOptions.threads)
            let tokens = evaluator.tokenize(text)
            let available = tokens.count / ctx - skipChunks
            guard available > 0 else { throw CLIError("'\(data)' has \(tokens.count) tokens: no chunk of \(ctx) left after skipping \(skipChunks)") }
            let total = min(available, chunks ?? available)
            let kvPolicy = routing.kvPolicy
            var table = EvalTable(metrics: ["ppl", "tokens"], headers: ["ppl", "tokens"], formats: ["%.3f", "%.0f"], kvPolicy: kvPolicy.rawValue)
            for mode in try routing.standInModes(model: model) {
            evaluator.standIns = mode.weights
            for method in routing.methodList {
                for b in try routing.budgetList() {
                    // Budget 1 is the full model whatever the method; compute it once.
                    if b >= 1, let done = table.fullDepth {
                        table.add(method, b, done.values, standIns: mode.label)
                        continue
                    }
                    let selector = try routing.selector(method: method, budget: b, model: model)
                    let label = String(format: "%@ %.2f %@", method, b, mode.label == "off" ? "" : "+stand-ins")
                    let bar = ProgressBar(label, total: total)
                    let fixed = Routers.fixedMask(selector, budget: b)
                    let result = evaluator.evaluate(
                        tokens: tokens, maxChunks: total, firstChunk: skipChunks,
                        runs: fixed.map { m in { m[$0] } }, selector: fixed == nil ? selector : nil, policy: kvPolicy,
                        progress: { done, _, partial in bar.update(done, detail: String(format: "ppl %.4f", partial.perplexity)) })
                    table.add(method, b, [result.perplexity, Double(result.count)], standIns: mode.label)
                }
            }
            }
            if table.rows.count == 1 {
                let r = table.rows[0]
                print(String(format: "perplexity %.4f over %d chunks of %d (%d scored tokens; %d tokens in file)", r.values[0], total, ctx, Int(r.values[1]), tokens.count))
            } else {
                print(table.markdown(), terminator: "")
            }
            try table.save(csv: csv, plot: plot, title: "WikiText-2 perplexity against budget", logScale: true)
        }
    }
}

extension Eval {
    struct HellaSwag: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "hellaswag",
            abstract: "HellaSwag acc_norm (llama.cpp's file layout and scoring).",
            discussion: """
                Each ending, prefixed by a space, is scored by the mean log-probability of its
                tokens after the context; the highest mean wins. Example:
                  buddy eval hellaswag --data ../shared/data/hellaswag_dev.txt --limit 400 --budgets 1,0.9 --methods buddy,sleb
                """)
        @Option(name: .long, help: "Task file (6 lines per task).")
        var data: String
        @Option(name: .long, help: "Skip the first N tasks (to extend an earlier run on the following ones; --items numbers tasks from the start of the file).")
        var skip: Int = 0
        @Option(name: .long, help: "Use only the first N tasks (after --skip).")
        var limit: Int?
        @OptionGroup var routing: EvalRoutingOptions
        @Option(name: .long, help: "Also write CSV (method,budget,kv_policy,acc_norm,n).")
        var csv: String?
        @Option(name: .long, help: "Also draw acc_norm against budget, one line per method, as SVG.")
        var plot: String?
        @Option(name: .long, help: "Also write every task's result as CSV (method,budget,kv_policy,task,gold,chosen), for paired comparisons of methods on the same tasks (scripts/hellaswag_paired.sh).")
        var items: String?
        @OptionGroup var modelOptions: ModelOptions

        func validate() throws {
            if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
            guard skip >= 0 else { throw ValidationError("--skip must not be negative") }
            try modelOptions.validateThreads()
        }

        func run() throws {
            guard let text = try? String(contentsOfFile: data, encoding: .utf8) else { throw CLIError("cannot read data file '\(data)'") }
            var tasks: [HellaSwagTask]
            do { tasks = try HellaSwagTask.parse(text) } catch { throw CLIError("\(error)") }
            guard skip < tasks.count else { throw CLIError("--skip \(skip): '\(data)' has only \(tasks.count) tasks") }
            tasks = Array(tasks.dropFirst(skip))
            if let limit { tasks = Array(tasks.prefix(limit)) }
            let model = try modelOptions.load()
            let session = Session(model: model, capacity: 512, threads: modelOptions.threads, batchSize: 128)
            let kvPolicy = routing.kvPolicy
            session.policy = kvPolicy
            var table = EvalTable(metrics: ["acc_norm", "n"], headers: ["acc_norm", "n"], formats: ["%.4f", "%.0f"], kvPolicy: kvPolicy.rawValue)
            table.derived = [("± s.e.", { v in String(format: "%.4f", (v[0] * (1 - v[0]) / v[1]).squareRoot()) })]
            var itemRows = ["method,budget,kv_policy,task,gold,chosen,stand_ins"]
            var fullDepthItems: [String] = []   // task,gold,chosen at full depth, the same for every method
            for mode in try routing.standInModes(model: model) {
            session.standIns = mode.weights
            for method in routing.methodList {
                for b in try routing.budgetList() {
                    if b >= 1, let done = table.fullDepth {
                        table.add(method, b, done.values, standIns: mode.label)
                        itemRows += fullDepthItems.map { "\(method),\(b),\(kvPolicy.rawValue),\($0),\(mode.label)" }
                        continue
                    }
                    session.selector = try routing.selector(method: method, budget: b, model: model)
                    // Static layer sets and routers that decide per row score each ending as one
                    // batch (same numbers, faster); other per-token routers run token by token.
                    let ev = HellaSwagEvaluator(session: session, batched: Routers.canBatch(session.selector as? BudgetedLayerSelector, budget: b))
                    let bar = ProgressBar(String(format: "hellaswag %@ %.2f %@", method, b, mode.label == "off" ? "" : "+stand-ins"), total: tasks.count)
                    var correct = 0
                    for (i, t) in tasks.enumerated() {
                        session.reset()
                        let best = try ev.score(t).best
                        if best == t.gold { correct += 1 }
                        itemRows.append("\(method),\(b),\(kvPolicy.rawValue),\(skip + i),\(t.gold),\(best),\(mode.label)")
                        if b >= 1 { fullDepthItems.append("\(skip + i),\(t.gold),\(best)") }
                        bar.update(i + 1, detail: String(format: "acc_norm %.3f", Double(correct) / Double(i + 1)))
                    }
                    table.add(method, b, [Double(correct) / Double(tasks.count), Double(tasks.count)], standIns: mode.label)
                }
            }
            }
            print(table.markdown(), terminator: "")
            try table.save(csv: csv, plot: plot, title: "HellaSwag acc_norm against budget", logScale: false)
            if let items { try AtomicFile.write(Data((itemRows.joined(separator: "\n") + "\n").utf8), to: items) }
        }
    }
}

extension Eval {
    struct Chat: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Chat fidelity: KL divergence and top-1 agreement with the full model along its own replies.",
            discussion: """
                For each chat prompt (first turns of a JSON-lines file such as MT-Bench's), the
                full-depth model's greedy reply is the reference. Each routed model is then
                teacher-forced along that reply: the prompt runs with one routing decision, every
                reply token is a decode step with its own decision, as in the chat. Reported per
                method and budget: mean KL(full ‖ routed) in nats per reply token and top-1
                agreement with the full model. The full model runs once per prompt for all cells.
                By default the held-out half of the prompts is used (odd positions in the file;
                `buddy train` and the budget predictor use the even ones). Example:
                  buddy eval chat --data ../shared/data/mt_bench_questions.jsonl --budgets 0.9,0.8 --methods buddy,sleb
                """)
        @OptionGroup var promptOptions: ChatPromptOptions
        @OptionGroup var routing: EvalRoutingOptions
        @Option(name: .long, help: "Also write CSV (method,budget,kv_policy,kl,top1_agreement,tokens).")
        var csv: String?
        @Option(name: .long, help: "Also draw KL against budget, one line per method, as SVG.")
        var plot: String?
        @OptionGroup var modelOptions: ModelOptions

        func validate() throws {
            try modelOptions.validateThreads()
        }

        func run() throws {
            let prompts = try promptOptions.load()
            let maxReply = promptOptions.maxReply
            let model = try modelOptions.load()
            let session = Session(model: model, capacity: 2048, threads: modelOptions.threads, batchSize: 256)
            session.policy = routing.kvPolicy
            let evaluator = ChatEvaluator(session: session)
            // Every cell of the grid, each with its own router (per-token state lives in it).
            // A cell whose layers depend on the budget alone runs each reply as one batch.
            var cells: [(method: String, budget: Double, selector: BudgetedLayerSelector?, batched: Bool, standIns: (label: String, weights: StandIns?))] = []
            for mode in try routing.standInModes(model: model) {
                for method in routing.methodList {
                    for b in try routing.budgetList() {
                        let selector = try routing.selector(method: method, budget: b, model: model)
                        cells.append((method, b, selector, Routers.canBatch(selector, budget: b), mode))
                    }
                }
            }
            var totals = [ChatDivergence](repeating: ChatDivergence(), count: cells.count)
            let bar = ProgressBar("chat", total: prompts.count * (cells.count + 1))
            var done = 0
            for p in prompts {
                let ids = evaluator.promptTokens(p.text)
                guard ids.count + maxReply <= session.capacity else { throw CLIError("prompt \(p.id) is too long (\(ids.count) tokens)") }
                let ref = try evaluator.reference(prompt: ids, maxTokens: maxReply)
                done += 1
                for (i, cell) in cells.enumerated() {
                    if cell.budget >= 1 {
                        // The full model agrees with itself: KL 0, top-1 1.
                        totals[i].add(ChatDivergence(klSum: 0, agreements: ref.reply.count, tokens: ref.reply.count))
                    } else {
                        session.selector = cell.selector
                        session.standIns = cell.standIns.weights
                        totals[i].add(try evaluator.compare(ref, batched: cell.batched))
                    }
                    done += 1
                    bar.update(done, detail: "prompt \(p.id)")
                }
            }
            var table = EvalTable(metrics: ["kl", "top1_agreement", "tokens"], headers: ["KL (nats/token)", "top-1 agreement", "tokens"],
                                  formats: ["%.4f", "%.4f", "%.0f"], kvPolicy: routing.kvPolicy.rawValue)
            for (i, cell) in cells.enumerated() { table.add(cell.method, cell.budget, [totals[i].meanKL, totals[i].top1Agreement, Double(totals[i].tokens)], standIns: cell.standIns.label) }
            print(table.markdown(), terminator: "")
            print("\(prompts.count) prompts (\(promptOptions.split) split), full-depth greedy replies of up to \(maxReply) tokens")
            try table.save(csv: csv, plot: plot, title: "Chat: KL from full depth against budget", logScale: true)
        }
    }
}

/// --data, --split, --limit, --max-reply: the chat prompts `buddy eval chat` and `buddy eval auto` run.
struct ChatPromptOptions: ParsableArguments {
    @Option(name: .long, help: "JSON lines with a \"turns\" list per prompt (MT-Bench layout).")
    var data: String
    @Option(name: .long, help: "Which prompts: heldout (odd positions), train (even positions) or all.")
    var split: String = "heldout"
    @Option(name: .long, help: "Use only the first N prompts of the split.")
    var limit: Int?
    @Option(name: .long, help: "Length of the reference reply in tokens (it ends earlier at end of turn).")
    var maxReply: Int = 128

    func validate() throws {
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
        guard ChatPromptSplit(rawValue: split) != nil else { throw ValidationError("--split must be train, heldout or all") }
        guard (1...2048).contains(maxReply) else { throw ValidationError("--max-reply must be between 1 and 2048") }
    }

    /// The prompts of the split (at most --limit), or an error naming the file.
    func load() throws -> [ChatPrompt] {
        guard let text = try? String(contentsOfFile: data, encoding: .utf8) else { throw CLIError("cannot read data file '\(data)'") }
        var prompts: [ChatPrompt]
        do { prompts = try ChatPromptSet.parse(text, split: ChatPromptSplit(rawValue: split)!) } catch { throw CLIError("\(data): \(error)") }
        if let limit { prompts = Array(prompts.prefix(limit)) }
        guard !prompts.isEmpty else { throw CLIError("'\(data)' has no prompts in the \(split) split") }
        return prompts
    }
}

/// --budgets, --methods, --router, --kv-policy: the grid every `buddy eval` command runs.
struct EvalRoutingOptions: ParsableArguments {
    @Option(name: .long, help: "Comma-separated budgets, e.g. 1,0.9,0.8.")
    var budgets: String = "1"
    @Option(name: .long, help: "Comma-separated methods: buddy, shortgpt, sleb, last, random, even.")
    var methods: String = "buddy"
    @Option(name: .long, help: "Router file to use for the method 'buddy' (default: routers/buddy-router.json).")
    var router: String?
    @Option(name: .long, help: "KV policy for skipped layers: fill (default: compute only their K/V), mask or zero. Static sets give the same results under all three.")
    var kvPolicy: KVPolicy = .fill
    @Option(name: .long, help: "Comma-separated stand-in modes to compare, each on (the model's stand-ins), off (plain skip), auto (on when the model has stand-ins) or a stand-in file; e.g. on,off.")
    var standIns: String = "auto"

    /// The stand-in modes of the grid, each with its label for the table (on/off) and weights.
    func standInModes(model: LanguageModel) throws -> [(label: String, weights: StandIns?)] {
        var modes: [(label: String, weights: StandIns?)] = []
        for part in standIns.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            guard let choice = StandInChoice(argument: part) else { throw ValidationError("--stand-ins: empty entry") }
            let w = try choice.resolve(model: model)
            if case .file = choice, standIns.contains(",") {
                modes.append((label: part, weights: w))   // several files: name them apart
            } else {
                modes.append((label: choice.label(w), weights: w))
            }
        }
        return modes
    }

    var methodList: [String] { methods.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
    func budgetList() throws -> [Double] { try parseBudgets(budgets) }

    func validate() throws {
        _ = try budgetList()
        for m in methodList where !Routers.names.contains(m) {
            throw ValidationError("unknown method '\(m)' (use: \(Routers.names.joined(separator: ", ")))")
        }
    }

    /// The router for one cell of the grid; nil at budget 1 (the full model).
    func selector(method: String, budget: Double, model: LanguageModel) throws -> BudgetedLayerSelector? {
        guard budget < 1 else { return nil }
        do { return try Routers.make(method == "buddy" ? (router ?? "buddy") : method, model: model, budget: budget) } catch {
            throw CLIError("\(error)")
        }
    }
}

extension Eval {
    struct Plot: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Draw a metric against budget from an eval CSV (one line per method) as SVG.",
            discussion: """
                Reads the CSV that --csv writes (method,budget,kv_policy,<metrics…>). Example:
                  buddy eval plot --csv eval/ppl.csv --metric ppl --log --out eval/ppl.svg
                """)
        @Option(name: .long, help: "CSV written by buddy eval … --csv.")
        var csv: String
        @Option(name: .long, help: "Metric column to plot (default: the first after kv_policy).")
        var metric: String?
        @Flag(name: .long, help: "Logarithmic y axis.")
        var log = false
        @Option(name: .long, help: "Title of the chart.")
        var title: String?
        @Option(name: .long, help: "SVG file to write.")
        var out: String

        func run() throws {
            guard let text = try? String(contentsOfFile: csv, encoding: .utf8) else { throw CLIError("cannot read '\(csv)'") }
            let lines = text.split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
            guard let header = lines.first, header.count >= 4, header[0] == "method", header[1] == "budget" else {
                throw CLIError("'\(csv)' is not an eval CSV (expected a header starting method,budget,kv_policy)")
            }
            // CSVs from before stand-ins have no stand_ins column.
            let standInColumn = header.firstIndex(of: "stand_ins")
            let firstMetric = standInColumn.map { $0 + 1 } ?? 3
            guard header.count > firstMetric else { throw CLIError("'\(csv)' has no metric columns") }
            let name = metric ?? header[firstMetric]
            guard let col = header.firstIndex(of: name), col >= firstMetric else { throw CLIError("'\(csv)' has no column '\(name)' (columns: \(header.dropFirst(firstMetric).joined(separator: ", ")))") }
            var table = EvalTable(metrics: [name], headers: [name], formats: ["%g"], kvPolicy: "")
            for (i, row) in lines.dropFirst().enumerated() {
                guard row.count == header.count, let b = Double(row[1]), let v = Double(row[col]) else {
                    throw CLIError("'\(csv)' line \(i + 2): expected \(header.count) fields with numbers for budget and \(name)")
                }
                table.add(row[0], b, [v], standIns: standInColumn.map { row[$0] } ?? "off")
            }
            try table.save(csv: nil, plot: out, title: title ?? "\(name) against budget", logScale: log)
            print("wrote \(out)")
        }
    }
}

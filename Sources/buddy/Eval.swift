import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure model quality.",
        subcommands: [Perplexity.self, HellaSwag.self])
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
            var rows: [(method: String, budget: Double, ppl: Double, tokens: Int)] = []
            for method in routing.methodList {
                for b in try routing.budgetList() {
                    // Budget 1 is the full model whatever the method; compute it once.
                    if b >= 1, let done = rows.first(where: { $0.budget >= 1 }) {
                        rows.append((method, b, done.ppl, done.tokens))
                        continue
                    }
                    let selector = try routing.selector(method: method, budget: b, model: model)
                    let label = String(format: "%@ %.2f", method, b)
                    let bar = ProgressBar(label, total: total)
                    let fixed = (selector as? StaticRanking)?.mask(budget: b)
                    let result = evaluator.evaluate(
                        tokens: tokens, maxChunks: total, firstChunk: skipChunks,
                        runs: fixed.map { m in { m[$0] } }, selector: fixed == nil ? selector : nil, policy: kvPolicy,
                        progress: { done, _, partial in bar.update(done, detail: String(format: "ppl %.4f", partial.perplexity)) })
                    rows.append((method, b, result.perplexity, result.count))
                }
            }
            if rows.count == 1 {
                let r = rows[0]
                print(String(format: "perplexity %.4f over %d chunks of %d (%d scored tokens; %d tokens in file)", r.ppl, total, ctx, r.tokens, tokens.count))
            } else {
                print("| method | budget | kv_policy | ppl | tokens |")
                print("|---|---|---|---|---|")
                for r in rows { print(String(format: "| %@ | %.2f | %@ | %.3f | %d |", r.method, r.budget, kvPolicy.rawValue, r.ppl, r.tokens)) }
            }
            if let csv {
                var out = "method,budget,kv_policy,ppl,tokens\n"
                for r in rows { out += String(format: "%@,%.2f,%@,%.4f,%d\n", r.method, r.budget, kvPolicy.rawValue, r.ppl, r.tokens) }
                try AtomicFile.write(Data(out.utf8), to: csv)
            }
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
        @Option(name: .long, help: "Use only the first N tasks.")
        var limit: Int?
        @OptionGroup var routing: EvalRoutingOptions
        @Option(name: .long, help: "Also write CSV (method,budget,kv_policy,acc_norm,n).")
        var csv: String?
        @OptionGroup var modelOptions: ModelOptions

        func validate() throws {
            if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
            try modelOptions.validateThreads()
        }

        func run() throws {
            guard let text = try? String(contentsOfFile: data, encoding: .utf8) else { throw CLIError("cannot read data file '\(data)'") }
            var tasks: [HellaSwagTask]
            do { tasks = try HellaSwagTask.parse(text) } catch { throw CLIError("\(error)") }
            if let limit { tasks = Array(tasks.prefix(limit)) }
            let model = try modelOptions.load()
            let session = Session(model: model, capacity: 512, threads: modelOptions.threads, batchSize: 128)
            let kvPolicy = routing.kvPolicy
            session.policy = kvPolicy
            var rows: [(String, Double, Double, Int)] = []
            for method in routing.methodList {
                for b in try routing.budgetList() {
                    session.selector = try routing.selector(method: method, budget: b, model: model)
                    let ev = HellaSwagEvaluator(session: session)
                    let bar = ProgressBar(String(format: "hellaswag %@ %.2f", method, b), total: tasks.count)
                    var correct = 0
                    for (i, t) in tasks.enumerated() {
                        session.reset()
                        (session.selector as? DecisionModule)?.resetContext()
                        if try ev.score(t).best == t.gold { correct += 1 }
                        bar.update(i + 1, detail: String(format: "acc_norm %.3f", Double(correct) / Double(i + 1)))
                    }
                    rows.append((method, b, Double(correct) / Double(tasks.count), tasks.count))
                }
            }
            print("| method | budget | kv_policy | acc_norm | ± s.e. | n |")
            print("|---|---|---|---|---|---|")
            for (m, b, acc, n) in rows {
                print(String(format: "| %@ | %.2f | %@ | %.4f | %.4f | %d |", m, b, kvPolicy.rawValue, acc, (acc * (1 - acc) / Double(n)).squareRoot(), n))
            }
            if let csv {
                var out = "method,budget,kv_policy,acc_norm,n\n"
                for (m, b, acc, n) in rows { out += String(format: "%@,%.2f,%@,%.4f,%d\n", m, b, kvPolicy.rawValue, acc, n) }
                try AtomicFile.write(Data(out.utf8), to: csv)
            }
        }
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
    @Option(name: .long, help: "KV policy for skipped layers: mask, zero or fill.")
    var kvPolicy: KVPolicy = .mask

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

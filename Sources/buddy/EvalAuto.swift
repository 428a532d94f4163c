import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

extension Eval {
    struct Auto: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Does --budget auto put compute where it matters? Its chosen budgets against a fixed budget of the same mean compute.",
            discussion: """
                For each chat prompt the Budget Predictor chooses a budget from the prompt's routing
                context (as `--budget auto` does) and the routed model is teacher-forced along the
                full model's greedy reply (KL from full depth and top-1 agreement, as in
                `buddy eval chat`). Every prompt is also measured at each budget of the predictor's
                grid, so the same prompts at a fixed budget of the same mean compute (mean routable
                layers per reply token, interpolated between the two neighbouring grid budgets)
                are the comparison. Prints the distribution of chosen budgets, the mean budget per
                prompt category, and auto against fixed. Example:
                  buddy eval auto --data ../shared/data/mt_bench_questions.jsonl --csv eval/auto.csv
                """)
        @OptionGroup var promptOptions: ChatPromptOptions
        @Option(name: .long, help: "Largest predicted KL from full depth (nats per token) the auto budget accepts; a comma-separated list reports each.")
        var qualityTolerance: String = String(BudgetPredictor.defaultTolerance)
        @Option(name: .long, help: "Budget predictor file (default: routers/budget-predictor.json).")
        var predictor: String?
        @Option(name: .long, help: "Router the budgets are run with.")
        var router: String = "buddy"
        @Option(name: .long, help: "What a skipped layer adds: on (the model's stand-ins), off (plain skip), or a stand-in file. Default: on when the model has stand-ins.")
        var standIns: StandInChoice = .auto
        @Option(name: .long, help: "Also write one CSV row per prompt and tolerance (tolerance,id,category,chosen_budget,kl,top1_agreement,tokens).")
        var csv: String?
        @OptionGroup var modelOptions: ModelOptions

        func validate() throws {
            guard !tolerances.isEmpty, tolerances.allSatisfy({ $0 > 0 }) else { throw ValidationError("--quality-tolerance must be positive numbers") }
            try modelOptions.validateThreads()
        }

        var tolerances: [Double] { qualityTolerance.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) } }

        func run() throws {
            let prompts = try promptOptions.load()
            let maxReply = promptOptions.maxReply
            let model = try modelOptions.load()
            let L = model.config.layers
            let session = Session(model: model, capacity: 2048, threads: modelOptions.threads, batchSize: 256)
            session.standIns = try standIns.resolve(model: model)
            let evaluator = ChatEvaluator(session: session)
            let predictorModel: BudgetPredictor
            let grid: [Double]
            let fixed: [BudgetedLayerSelector]
            let auto: AutoBudgetSelector
            do {
                predictorModel = try Routers.predictor(model: model, path: predictor)
                grid = predictorModel.budgets.sorted()
                fixed = try grid.map { try Routers.make(router, model: model, budget: $0) }
                auto = try AutoBudgetSelector(inner: try Routers.make(router, model: model), predictor: predictorModel, tolerance: tolerances[0], config: model.config)
            } catch { throw CLIError("\(error)") }

            // Per prompt: the auto result and the chosen budget; per grid budget: the fixed result.
            var autoRows: [Row] = []
            var fixedTotals = [ChatDivergence](repeating: ChatDivergence(), count: grid.count)
            // Per prompt: each grid budget's result, and the budget chosen at each extra tolerance
            // (the auto run at that budget is the grid run: same router, same budget).
            var perPrompt: [[ChatDivergence]] = []
            var extraChoices: [[Double]] = []
            let bar = ProgressBar("auto vs fixed", total: prompts.count * (grid.count + 2))
            var done = 0
            for p in prompts {
                let ids = evaluator.promptTokens(p.text)
                guard ids.count + maxReply <= session.capacity else { throw CLIError("prompt \(p.id) is too long (\(ids.count) tokens)") }
                let ref = try evaluator.reference(prompt: ids, maxTokens: maxReply)
                done += 1
                var row: [ChatDivergence] = []
                for (i, r) in fixed.enumerated() {
                    session.selector = r
                    let d = try evaluator.compare(ref)
                    fixedTotals[i].add(d)
                    row.append(d)
                    done += 1
                    bar.update(done, detail: "prompt \(p.id)")
                }
                perPrompt.append(row)
                var choices: [Double] = []
                for t in tolerances.dropFirst() {
                    auto.tolerance = t
                    session.selector = auto
                    session.reset()
                    try session.evaluate(ids)
                    choices.append(auto.chosenBudget ?? 1)
                }
                extraChoices.append(choices)
                auto.tolerance = tolerances[0]
                session.selector = auto
                let d = try evaluator.compare(ref)
                autoRows.append((p, auto.chosenBudget ?? 1, d))
                done += 1
                bar.update(done, detail: String(format: "prompt %@: auto %.2f", p.id, auto.chosenBudget ?? 1))
            }

            // Rows per tolerance: the first was run; the others take each prompt's grid result at
            // the budget chosen for it (budget 1: the full model, KL 0 and top-1 1).
            var rowsByTolerance: [[Row]] = [autoRows]
            for ti in tolerances.indices.dropFirst() {
                rowsByTolerance.append(autoRows.indices.map { i in
                    let b = extraChoices[i][ti - 1], tokens = autoRows[i].d.tokens
                    let d = grid.firstIndex(where: { abs($0 - b) < 1e-9 }).map { perPrompt[i][$0] }
                        ?? ChatDivergence(klSum: 0, agreements: tokens, tokens: tokens)
                    return (autoRows[i].prompt, b, d)
                })
            }
            for (ti, t) in tolerances.enumerated() {
                if ti > 0 { print("") }
                report(tolerance: t, rows: rowsByTolerance[ti], fixedTotals: fixedTotals, grid: grid, layers: L, prompts: prompts.count)
            }
            if let csv {
                var out = "tolerance,id,category,chosen_budget,kl,top1_agreement,tokens\n"
                for i in prompts.indices {
                    for (ti, t) in tolerances.enumerated() {
                        let r = rowsByTolerance[ti][i]
                        out += "\(t),\(r.prompt.id),\(r.prompt.category),\(r.budget),\(String(format: "%.6f", r.d.meanKL)),\(String(format: "%.6f", r.d.top1Agreement)),\(r.d.tokens)\n"
                    }
                }
                try AtomicFile.write(Data(out.utf8), to: csv)
            }
        }

        typealias Row = (prompt: ChatPrompt, budget: Double, d: ChatDivergence)

        func report(tolerance: Double, rows autoRows: [Row], fixedTotals: [ChatDivergence], grid: [Double], layers L: Int, prompts: Int) {
            func k(_ b: Double) -> Double { b >= 1 ? Double(L - 2) : Double(LayerBudget.routableCount(budget: b, layers: L)) }
            var autoTotal = ChatDivergence()
            var tokenK = 0.0, tokenBudget = 0.0
            for r in autoRows { autoTotal.add(r.d); tokenK += k(r.budget) * Double(r.d.tokens); tokenBudget += r.budget * Double(r.d.tokens) }
            let meanK = tokenK / Double(max(autoTotal.tokens, 1)), meanBudget = tokenBudget / Double(max(autoTotal.tokens, 1))

            print("### Tolerance \(tolerance) nats/token\n\nChosen budgets (\(prompts) prompts, \(promptOptions.split) split):\n")
            print("| budget | k/\(L - 2) | prompts | KL at the chosen budget | top-1 |")
            print("|---|---|---|---|---|")
            for b in (grid + [1]) {
                let rows = autoRows.filter { abs($0.budget - b) < 1e-9 }
                guard !rows.isEmpty else { continue }
                var t = ChatDivergence()
                rows.forEach { t.add($0.d) }
                print(String(format: "| %.2f | %.0f | %d | %.4f | %.4f |", b, k(b), rows.count, t.meanKL, t.top1Agreement))
            }
            print("\nMean chosen budget per category (token-weighted):\n")
            print("| category | prompts | mean budget | KL |")
            print("|---|---|---|---|")
            for cat in Set(autoRows.map(\.prompt.category)).sorted() {
                let rows = autoRows.filter { $0.prompt.category == cat }
                var t = ChatDivergence(), wb = 0.0
                for r in rows { t.add(r.d); wb += r.budget * Double(r.d.tokens) }
                print(String(format: "| %@ | %d | %.3f | %.4f |", cat.isEmpty ? "—" : cat, rows.count, wb / Double(max(t.tokens, 1)), t.meanKL))
            }

            // The same prompts at a fixed budget of the same mean compute: interpolate in k
            // between the grid budgets around the auto mean (full depth = KL 0, top-1 1).
            var points = zip(grid, fixedTotals).map { (k: k($0.0), budget: $0.0, kl: $0.1.meanKL, top1: $0.1.top1Agreement) }
            points.append((k: Double(L - 2), budget: 1, kl: 0, top1: 1))
            print("\nAuto against fixed budgets at the same mean compute:\n")
            print("| | mean budget | mean k/\(L - 2) | KL (nats/token) | top-1 agreement |")
            print("|---|---|---|---|---|")
            print(String(format: "| auto | %.3f | %.2f | %.4f | %.4f |", meanBudget, meanK, autoTotal.meanKL, autoTotal.top1Agreement))
            if let hi = points.firstIndex(where: { $0.k >= meanK }) {
                let lo = max(0, hi - 1)
                let a = points[lo], b = points[hi]
                let w = b.k > a.k ? (meanK - a.k) / (b.k - a.k) : 1
                if lo != hi { print(String(format: "| fixed %.2f | %.3f | %.2f | %.4f | %.4f |", a.budget, a.budget, a.k, a.kl, a.top1)) }
                print(String(format: "| fixed %.2f | %.3f | %.2f | %.4f | %.4f |", b.budget, b.budget, b.k, b.kl, b.top1))
                print(String(format: "| fixed, same mean k (interpolated) | — | %.2f | %.4f | %.4f |", meanK, a.kl + w * (b.kl - a.kl), a.top1 + w * (b.top1 - a.top1)))
            }
        }
    }
}

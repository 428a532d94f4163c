import BuddyCore
import BuddyRouting
import Foundation

/// `buddy eval auto`: the Budget Predictor's chosen budgets against a fixed budget of the same
/// mean compute, on the same prompts.
public enum AutoBudgetRun {
    public struct Options {
        public var prompts: ChatPromptSelection
        /// Tolerance rules to report (comma-separated), or nil.
        public var qualityTolerance: String?
        /// Share rules to report (comma-separated), or nil; with neither, the predictor's default rule.
        public var fullDepthShare: String?
        public var predictor: String?
        public var router: String = "buddy"
        public var standIns: StandInChoice = .auto
        public var csv: String?
        public var threads: Int = 2
        /// How the automatic budget is also steered along each reply (`BudgetSteering`'s signal;
        /// nil: not at all); the fixed budgets it is compared with are not.
        public var steering: BudgetSteering.Signal?
        /// With `steering`: the fixed budgets are steered too, so auto and fixed differ only in
        /// the predictor's choice (each auto row is then the steered fixed run at its budget).
        public var steerFixed = false
        /// The output head of tokens that run few layers.
        public var head: HeadChoice = .standard
        public init(prompts: ChatPromptSelection, qualityTolerance: String? = nil, fullDepthShare: String? = nil, predictor: String? = nil, router: String = "buddy", standIns: StandInChoice = .auto, csv: String? = nil, threads: Int = 2) {
            self.prompts = prompts
            self.qualityTolerance = qualityTolerance
            self.fullDepthShare = fullDepthShare
            self.predictor = predictor
            self.router = router
            self.standIns = standIns
            self.csv = csv
            self.threads = threads
        }

        static func list(_ s: String?) -> [Double]? {
            s.map { $0.split(separator: ",", omittingEmptySubsequences: false).map { Double($0.trimmingCharacters(in: .whitespaces)) ?? .nan } }
        }

        /// Fixed budgets to run every prompt at (comma-separated), a subset of the predictor's
        /// grid holding every budget the rules can choose; nil: the whole grid.
        public var budgets: String?

        /// The fixed budgets every prompt runs at, ascending: `budgets` or the predictor's grid.
        public func fixedBudgets(_ predictor: BudgetPredictor, rules: [AutoBudgetRule]) throws -> [Double] {
            guard let given = Self.list(budgets) else { return predictor.budgets.sorted() }
            let grid = predictor.budgets.filter { b in given.contains { abs($0 - b) < 1e-9 } }.sorted()
            guard grid.count == given.count else {
                throw ToolError.usage("--budgets must be budgets of the predictor's grid (\(predictor.budgets.map { String(format: "%g", $0) }.joined(separator: ",")))")
            }
            let chosen = Set(rules.flatMap { $0.budgets(of: predictor) })
            guard chosen.isSubset(of: Set(grid)) else {
                throw ToolError.usage("--budgets must include every budget the rules can choose (\(chosen.sorted().map { String(format: "%g", $0) }.joined(separator: ",")))")
            }
            return grid
        }

        /// The rules reported: every tolerance and share given, else the predictor's default.
        public func rules(_ predictor: BudgetPredictor) -> [AutoBudgetRule] {
            let given = (Self.list(qualityTolerance) ?? []).map(AutoBudgetRule.tolerance) + (Self.list(fullDepthShare) ?? []).map(AutoBudgetRule.share)
            return given.isEmpty ? [.resolve(tolerance: nil, share: nil, predictor: predictor)] : given
        }

        public func validate() throws {
            if let t = Self.list(qualityTolerance), t.isEmpty || !t.allSatisfy({ $0 > 0 }) { throw ToolError.usage("--quality-tolerance must be positive numbers") }
            if let s = Self.list(fullDepthShare), s.isEmpty || !s.allSatisfy({ $0 > 0 && $0 < 1 }) { throw ToolError.usage("--full-depth-share must be numbers in (0, 1)") }
            if let b = Self.list(budgets), b.isEmpty || !b.allSatisfy({ $0 > 0 && $0 < 1 }) { throw ToolError.usage("--budgets must be numbers in (0, 1)") }
            try validateThreads(threads)
            if steerFixed && steering == nil { throw ToolError.usage("--steer-fixed needs --steering on or sentence") }
        }
    }

    public typealias Row = (prompt: ChatPrompt, budget: Double, d: ChatDivergence)

    /// Runs every prompt at each grid budget, takes the auto budget's result from them, reports each tolerance as
    /// Markdown and writes the per-prompt CSV when asked; `model` is loaded once the prompts have been read.
    public static func run(_ o: Options, model loadModel: () throws -> LanguageModel, report: Reporter) throws {
        let prompts = try o.prompts.load()
        let model = try loadModel()
        let L = model.config.layers
        let session = Session(model: model, capacity: 2048, threads: o.threads, batchSize: 256)
        session.head = o.head
        session.standIns = try o.standIns.resolve(model: model, note: report.note)
        let evaluator = ChatEvaluator(session: session)
        let predictorModel: BudgetPredictor
        let rules: [AutoBudgetRule]
        let choosers: [AutoBudget]
        let grid: [Double]
        let fixed: [BudgetedLayerSelector]
        do {
            predictorModel = try Routers.autoBudgetPredictor(model: model, path: o.predictor)
            rules = o.rules(predictorModel)
            // One chooser per rule, walking the prompts in order as a conversation's messages.
            choosers = try rules.map { try AutoBudget(predictor: predictorModel, rule: $0) }
            grid = try o.fixedBudgets(predictorModel, rules: rules)
            fixed = try grid.map { b -> BudgetedLayerSelector in
                let r = try Routers.make(o.router, model: model, budget: b)
                guard o.steerFixed, let signal = o.steering else { return r }
                return BudgetSteering(r, signal: signal)
            }
        } catch let e as ToolError { throw e } catch { throw ToolError("\(error)") }

        // Per grid budget: every prompt's fixed result. Per prompt and tolerance: the budget
        // the predictor chooses before the prompt runs (as the chat and `generate` do). The
        // auto result is the grid run at that budget (same router, same budget: the same
        // computation), or the full model's (KL 0, top-1 1) when it chooses 1.
        var fixedRows: [[ChatDivergence]] = []   // [prompt][grid budget]
        var rowsByRule = [[Row]](repeating: [], count: rules.count)
        // With steering: the steered router per grid budget, and each auto row's mean routable
        // layers per reply step (what the steering actually ran).
        let steered = o.steerFixed ? [] : o.steering.map { signal in fixed.map { BudgetSteering($0, signal: signal) } } ?? []
        var fixedTallies = [BudgetSteering.Tally](repeating: .init(), count: grid.count)   // steered fixed runs
        var layersByRule = [[Double]](repeating: [], count: rules.count)
        let bar = report.progress("auto vs fixed", prompts.count * (grid.count + 1))
        var done = 0
        for p in prompts {
            let (ids, ref) = try o.prompts.reference(to: p, evaluator: evaluator)
            done += 1
            var row: [ChatDivergence] = []
            var rowLayers: [Double] = []   // each grid run's mean routable layers per reply step
            for (gi, r) in fixed.enumerated() {
                session.selector = r
                row.append(try evaluator.compare(ref))
                var reply = BudgetSteering.Tally()
                reply.add(r)
                rowLayers.append(reply.meanLayers ?? routableLayers(grid[gi], layers: L))
                fixedTallies[gi].add(r)
                done += 1
                bar.update(done, detail: "prompt \(p.id)")
            }
            fixedRows.append(row)
            session.selector = nil
            session.reset()
            let features = try predictorModel.features(for: ids, in: session)
            var steeredRuns: [Int: (d: ChatDivergence, layers: Double)] = [:]   // by grid index, run once per prompt
            for ti in rules.indices {
                let b = features.withUnsafeBufferPointer { choosers[ti].choose($0.baseAddress!) }
                let gi = grid.firstIndex(where: { abs($0 - b) < 1e-9 })
                var d = gi.map { row[$0] } ?? ChatDivergence(klSum: 0, agreements: ref.reply.count, tokens: ref.reply.count)
                var layers = gi.map { rowLayers[$0] } ?? routableLayers(b, layers: L)
                if let gi, !steered.isEmpty {
                    if steeredRuns[gi] == nil {
                        session.selector = steered[gi]
                        let run = try evaluator.compare(ref)
                        var reply = BudgetSteering.Tally()
                        reply.add(steered[gi])
                        steeredRuns[gi] = (run, reply.meanLayers ?? layers)
                        session.selector = nil
                    }
                    (d, layers) = steeredRuns[gi]!
                }
                rowsByRule[ti].append((p, b, d))
                layersByRule[ti].append(layers)
            }
        }

        if o.steerFixed {
            report.note("fixed budgets steered too; mean routable layers per reply step: " + grid.indices.compactMap { gi in
                fixedTallies[gi].meanLayers.map { String(format: "%.2f at %.2f (k = %.0f)", $0, grid[gi], routableLayers(grid[gi], layers: L)) }
            }.joined(separator: ", "))
        }
        var comparisons: [[Comparison]] = []
        for (ti, rule) in rules.enumerated() {
            if ti > 0 { report.line("") }
            comparisons.append(summary(rule: rule, lowestChoice: predictorModel.choices[0], rows: rowsByRule[ti], fixedRows: fixedRows, grid: grid, layers: L,
                    split: o.prompts.split, routedLayers: o.steering != nil ? layersByRule[ti] : nil, report: report))
        }
        if let csv = o.csv {
            // fixed_kl and coin_kl: the prompt's KL in the paired comparisons (empty where none).
            var out = AutoBudgetRun.csvHeader + "\n"
            for i in prompts.indices {
                for (ti, rule) in rules.enumerated() {
                    let r = rowsByRule[ti][i]
                    out += "\(rule),\(r.prompt.id),\(r.prompt.category),\(r.budget),\(String(format: "%.6f", r.d.meanKL)),\(String(format: "%.6f", r.d.top1Agreement)),\(r.d.tokens),\(String(format: "%.3f", layersByRule[ti][i])),"
                        + [comparisons[ti][i].fixed, comparisons[ti][i].coin].map { $0.map { String(format: "%.6f", $0) } ?? "" }.joined(separator: ",") + "\n"
                }
            }
            try AtomicFile.write(Data(out.utf8), to: csv)
        }
    }

    /// The routable layers a budget runs per token (every one at 1, the full model).
    static func routableLayers(_ b: Double, layers L: Int) -> Double {
        b >= 1 ? Double(L - 2) : Double(LayerBudget.routableCount(budget: b, layers: L))
    }

    /// A prompt's KL per token in the paired comparisons: the fixed budget of the same mean
    /// compute and, under the share rule, the coin's expectation (nil where there is none).
    public typealias Comparison = (fixed: Double?, coin: Double?)

    /// One rule's report: the distribution of chosen budgets, the mean budget per category,
    /// and auto against fixed budgets at the same mean compute, with the paired standard error of
    /// that difference over the prompts. `fixedRows[prompt][grid budget]` holds every prompt's
    /// fixed runs, in `autoRows`' order. `routedLayers`, when given, is each auto row's measured
    /// mean routable layers per step (a steered run's), used instead of its budget's k.
    /// Under the share rule it also compares auto with a coin that sends the same share of
    /// prompts to full depth and the rest to `lowestChoice` (its expected KL, prompt by prompt):
    /// what the mix alone gives, without the prediction. Returns each prompt's `Comparison`.
    @discardableResult
    public static func summary(rule: AutoBudgetRule, lowestChoice: Double, rows autoRows: [Row], fixedRows: [[ChatDivergence]], grid: [Double], layers L: Int,
                               split: String, routedLayers: [Double]? = nil, report: Reporter) -> [Comparison] {
        var comparisons = [Comparison](repeating: (nil, nil), count: autoRows.count)
        precondition(fixedRows.count == autoRows.count && fixedRows.allSatisfy { $0.count == grid.count }, "one fixed run per prompt and grid budget")
        precondition(routedLayers == nil || routedLayers!.count == autoRows.count, "one layer count per auto row")
        func k(_ b: Double) -> Double { routableLayers(b, layers: L) }
        var autoTotal = ChatDivergence()
        var tokenK = 0.0, tokenBudget = 0.0
        for (i, r) in autoRows.enumerated() {
            autoTotal.add(r.d)
            tokenK += (routedLayers?[i] ?? k(r.budget)) * Double(r.d.tokens)
            tokenBudget += r.budget * Double(r.d.tokens)
        }
        let meanK = tokenK / Double(max(autoTotal.tokens, 1)), meanBudget = tokenBudget / Double(max(autoTotal.tokens, 1))

        switch rule {
        case let .tolerance(t): report.line("### Tolerance \(t) nats/token\n")
        case let .share(s): report.line("### Full-depth share \(s) (the rest at \(lowestChoice))\n")
        }
        report.line("Chosen budgets (\(autoRows.count) prompts, \(split) split):\n")
        report.line("| budget | k/\(L - 2) | prompts | KL at the chosen budget | top-1 |")
        report.line("|---|---|---|---|---|")
        for b in (grid + [1]) {
            let rows = autoRows.filter { abs($0.budget - b) < 1e-9 }
            guard !rows.isEmpty else { continue }
            var t = ChatDivergence()
            rows.forEach { t.add($0.d) }
            report.line(String(format: "| %.2f | %.0f | %d | %.4f | %.4f |", b, k(b), rows.count, t.meanKL, t.top1Agreement))
        }
        report.line("\nMean chosen budget per category (token-weighted):\n")
        report.line("| category | prompts | mean budget | KL |")
        report.line("|---|---|---|---|")
        for cat in Set(autoRows.map(\.prompt.category)).sorted() {
            let rows = autoRows.filter { $0.prompt.category == cat }
            var t = ChatDivergence(), wb = 0.0
            for r in rows { t.add(r.d); wb += r.budget * Double(r.d.tokens) }
            report.line(String(format: "| %@ | %d | %.3f | %.4f |", cat.isEmpty ? "—" : cat, rows.count, wb / Double(max(t.tokens, 1)), t.meanKL))
        }

        // The same prompts at a fixed budget of the same mean compute: interpolate in k
        // between the grid budgets around the auto mean (full depth = KL 0, top-1 1).
        let fixedTotals = grid.indices.map { i in fixedRows.reduce(into: ChatDivergence()) { $0.add($1[i]) } }
        var points = zip(grid, fixedTotals).map { (k: k($0.0), budget: $0.0, kl: $0.1.meanKL, top1: $0.1.top1Agreement) }
        points.append((k: Double(L - 2), budget: 1, kl: 0, top1: 1))
        report.line("\nAuto against fixed budgets at the same mean compute:\n")
        report.line("| | mean budget | mean k/\(L - 2) | KL (nats/token) | top-1 agreement |")
        report.line("|---|---|---|---|---|")
        report.line(String(format: "| %@ | %.3f | %.2f | %.4f | %.4f |", routedLayers == nil ? "auto" : "auto, steered", meanBudget, meanK, autoTotal.meanKL, autoTotal.top1Agreement))
        if let (lo, hi, w) = BudgetPredictor.bracket(points.map(\.k), at: meanK) {
            let a = points[lo], b = points[hi]
            if lo != hi { report.line(String(format: "| fixed %.2f | %.3f | %.2f | %.4f | %.4f |", a.budget, a.budget, a.k, a.kl, a.top1)) }
            report.line(String(format: "| fixed %.2f | %.3f | %.2f | %.4f | %.4f |", b.budget, b.budget, b.k, b.kl, b.top1))
            report.line(String(format: "| fixed, same mean k (interpolated) | — | %.2f | %.4f | %.4f |", meanK, a.kl + w * (b.kl - a.kl), a.top1 + w * (b.top1 - a.top1)))
            // A stricter bar: the best mix of fixed budgets that ignores the prompt (beats the
            // interpolation wherever the curve is not convex in compute; docs/TRAINING.md).
            report.line(String(format: "| best prompt-blind mix of fixed budgets, same mean k | — | %.2f | %.4f | — |",
                               meanK, BudgetPredictor.bestMix(points.map { (k: $0.k, kl: $0.kl) }, atLayers: meanK)))
            // Per prompt the interpolated fixed run's KL sum (the same interpolation, prompt by
            // prompt; full depth adds 0), paired with the prompt's auto run.
            func klSum(_ prompt: Int, _ point: Int) -> Double { point < grid.count ? fixedRows[prompt][point].klSum : 0 }
            let pairs = autoRows.indices.map { i in
                (PairedComparison.Item(loss: autoRows[i].d.klSum, tokens: autoRows[i].d.tokens),
                 PairedComparison.Item(loss: klSum(i, lo) + w * (klSum(i, hi) - klSum(i, lo)), tokens: autoRows[i].d.tokens))
            }
            for i in pairs.indices { comparisons[i].fixed = pairs[i].1.loss / Double(max(pairs[i].1.tokens, 1)) }
            if let p = PairedComparison.row(.chat, budget: meanBudget, pairs) {
                report.line(String(format: "\nAuto against the interpolated fixed budget, paired over the %d prompts: KL %+.1f %% ± %.1f %% (s.e.)%@",
                                   p.items, p.percent, p.standardError, abs(p.percent) < 2 * p.standardError ? "; within 2 s.e." : ""))
            }
        }
        guard case .share = rule, let low = grid.firstIndex(where: { abs($0 - lowestChoice) < 1e-9 }) else { return comparisons }
        let full = Double(autoRows.filter { $0.budget >= 1 }.count) / Double(max(autoRows.count, 1))
        let blind = autoRows.indices.map { i in
            (PairedComparison.Item(loss: autoRows[i].d.klSum, tokens: autoRows[i].d.tokens),
             PairedComparison.Item(loss: (1 - full) * fixedRows[i][low].klSum, tokens: autoRows[i].d.tokens))
        }
        for i in blind.indices { comparisons[i].coin = blind[i].1.loss / Double(max(blind[i].1.tokens, 1)) }
        guard let b = PairedComparison.row(.chat, budget: meanBudget, blind) else { return comparisons }
        report.line(String(format: "Auto against a coin sending the same share (%.1f %%) to full depth and the rest to %.2f (expected KL %.4f), paired: KL %+.1f %% ± %.1f %% (s.e.)%@",
                           100 * full, lowestChoice, (1 - full) * fixedTotals[low].meanKL, b.percent, b.standardError,
                           abs(b.percent) < 2 * b.standardError ? "; within 2 s.e." : ""))
        return comparisons
    }
}

extension AutoBudgetRun {
    /// The header of the per-prompt CSV that `--csv` writes.
    public static let csvHeader = "rule,id,category,chosen_budget,kl,top1_agreement,tokens,routed_layers,fixed_kl,coin_kl"

    /// Several prompt sets' `--csv` files pooled (`buddy eval pool-auto`): per rule, in the
    /// order the files first name it, auto's KL against the fixed budget of the same mean
    /// compute (each set's own interpolation, `fixed_kl`) and, where every prompt has one, a coin
    /// of the same share (`coin_kl`), paired over every prompt with the chat ratio estimator of
    /// `PairedComparison`. The files are untrusted: a bad line or a prompt given twice is named.
    public static func pooled(files: [String]) throws -> String {
        struct Prompt { var budget: Double; var tokens: Int; var kl: Double; var fixed: Double?; var coin: Double? }
        var rules: [String] = [], byRule: [String: [Prompt]] = [:], seen = Set<String>()
        guard !files.isEmpty else { throw ToolError("no eval auto CSV files given") }
        for file in files {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw ToolError("cannot read '\(file)'") }
            let lines = text.split(whereSeparator: \.isNewline).map { $0.hasSuffix("\r") ? String($0.dropLast()) : String($0) }
            guard lines.first == csvHeader else {
                throw ToolError("'\(file)' is not a CSV of buddy eval auto --csv (header '\(lines.first?.prefix(80) ?? "")')")
            }
            for (i, line) in lines.enumerated().dropFirst() where !line.isEmpty {
                let f = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
                func figure(_ column: Int) -> Double?? {
                    if f[column].isEmpty { return .some(nil) }
                    guard let v = Double(f[column]), v.isFinite, v >= 0 else { return nil }
                    return v
                }
                guard f.count == 10, !f[0].isEmpty, !f[1].isEmpty,
                      let budget = Double(f[3]), budget > 0, budget <= 1,
                      let kl = Double(f[4]), kl.isFinite, kl >= 0,
                      let tokens = Int(f[6]), tokens > 0,
                      let fixed = figure(8), let coin = figure(9) else {
                    throw ToolError("'\(file)' line \(i + 1) is not a valid eval auto row: '\(line.prefix(80))'")
                }
                guard seen.insert(f[0] + "\u{0}" + f[1]).inserted else {
                    throw ToolError("'\(file)' line \(i + 1): prompt \(f[1]) under rule '\(f[0])' is already in the pool")
                }
                if byRule[f[0]] == nil { rules.append(f[0]) }
                byRule[f[0], default: []].append(Prompt(budget: budget, tokens: tokens, kl: kl, fixed: fixed, coin: coin))
            }
        }
        var out = ""
        for rule in rules {
            let prompts = byRule[rule]!
            let tokens = prompts.reduce(0) { $0 + $1.tokens }
            let auto = prompts.reduce(0.0) { $0 + $1.kl * Double($1.tokens) } / Double(tokens)
            var line = String(format: "%@: %d prompts, %d at full depth, auto KL %.4f", rule, prompts.count,
                              prompts.filter { $0.budget >= 1 }.count, auto)
            for (name, other) in [("fixed, same mean compute", \Prompt.fixed), ("coin, same share", \Prompt.coin)] {
                let values = prompts.compactMap { $0[keyPath: other] }
                guard values.count == prompts.count else { continue }
                let pairs = zip(prompts, values).map { p, v in
                    (PairedComparison.Item(loss: p.kl * Double(p.tokens), tokens: p.tokens),
                     PairedComparison.Item(loss: v * Double(p.tokens), tokens: p.tokens))
                }
                guard let row = PairedComparison.row(.chat, budget: 1, pairs) else { continue }
                line += String(format: "; %@ %.4f: %+.1f %% ± %.1f %%", name, row.b, row.percent, row.standardError)
            }
            out += line + "\n"
        }
        return out
    }
}

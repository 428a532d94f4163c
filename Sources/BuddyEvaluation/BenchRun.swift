import BuddyCore
import BuddyRouting
import Foundation

/// `buddy bench`: prefill and decode speed per budget, rounds alternating over the budgets.
public enum BenchRun {
    public struct Options {
        public var promptTokens: Int = 512
        public var genTokens: Int = 128
        public var budgets: String = "1,0.75,0.5"
        public var runs: Int = 3
        public var router: String?
        public var kvPolicy: KVPolicy = .fill
        public var standIns: StandInChoice = .auto
        /// Wrap each budget's router in `BudgetSteering` (its per-step entropy is in the decode time).
        public var steering: Bool = BudgetSteering.onByDefault
        public var json: Bool = false
        public var threads: Int = 2
        /// The output head of tokens that run few layers.
        public var head: HeadChoice = .standard
        /// The kernels' vector path (a lesser one shows on this machine what another CPU runs).
        public var kernels: KernelPath = .auto
        public init(promptTokens: Int = 512, genTokens: Int = 128, budgets: String = "1,0.75,0.5", runs: Int = 3, router: String? = nil, kvPolicy: KVPolicy = .fill, standIns: StandInChoice = .auto, steering: Bool = BudgetSteering.onByDefault, json: Bool = false, threads: Int = 2, head: HeadChoice = .standard, kernels: KernelPath = .auto) {
            self.head = head
            self.kernels = kernels
            self.promptTokens = promptTokens
            self.genTokens = genTokens
            self.budgets = budgets
            self.runs = runs
            self.router = router
            self.kvPolicy = kvPolicy
            self.standIns = standIns
            self.steering = steering
            self.json = json
            self.threads = threads
        }

        public func validate() throws {
            guard promptTokens >= 1, genTokens >= 2, runs >= 1 else { throw ToolError.usage("--prompt-tokens >= 1, --gen-tokens >= 2, --runs >= 1") }
            _ = try parseBudgets(budgets)
            try validateThreads(threads)
        }
    }

    /// The median of `xs` (the mean of the middle two for an even count).
    public static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    /// Peak resident memory of this process in MB.
    public static func peakRSSMegabytes() -> Double {
        var u = rusage()
        getrusage(Int32(RUSAGE_SELF.rawValue), &u)
        return Double(u.ru_maxrss) / 1024   // ru_maxrss is in KiB on Linux
    }

    /// Measures and reports one Markdown row (or JSON object) per budget.
    public static func run(_ o: Options, model: LanguageModel, report: Reporter) throws {
        let (promptTokens, genTokens, runs, json) = (o.promptTokens, o.genTokens, o.runs, o.json)
        try o.kernels.apply()
        // Later work in this process (a test, say) gets the CPU's best path back.
        defer { try? KernelPath.auto.apply() }
        let capacity = promptTokens + genTokens + 1
        let session = Session(model: model, capacity: capacity, threads: o.threads, batchSize: min(promptTokens, 512))
        session.head = o.head
        // A natural-text prompt of exactly promptTokens tokens.
        let seed = "The history of the region is long and varied. Over the centuries many peoples settled its valleys, built towns along its rivers and traded with distant lands. "
        var ids: [Int32] = []
        while ids.count < promptTokens { ids += model.tokenizer.encode(seed, parseSpecial: false) }
        ids = Array(ids.prefix(promptTokens))
        let routerSpec = o.router ?? (Routers.locate("buddy", model: model) != nil ? "buddy" : "even")
        if !json {
            report.line("model \(URL(fileURLWithPath: model.path).lastPathComponent), \(o.threads) threads, prompt \(promptTokens), decode \(genTokens), runs \(runs), router \(routerSpec)\(o.steering ? BudgetSteering.productSignal.suffix : ""), kernels \(KernelPath.active)")
            report.line("| budget | layers/token | prefill tok/s | decode tok/s | decode × full | decode ms/token | routing share | stand-in share | head share | peak RSS MB |")
            report.line("|---|---|---|---|---|---|---|---|---|---|")
        }
        // Rounds alternate over the budgets (1, 0.75, 0.5, 1, 0.75, …) so that drift of a noisy
        // machine hits every budget alike; speed-ups are medians of ratios within a round.
        let budgetList = try parseBudgets(o.budgets)
        struct Series { var prefill: [Double] = [], decode: [Double] = [], routingShares: [Double] = [], standInShares: [Double] = [], layersPerToken = 0.0 }
        let standInWeights = try o.standIns.resolve(model: model, note: report.note)
        var selectors: [BudgetedLayerSelector?] = []
        for b in budgetList {
            guard b < 1 else { selectors.append(nil); continue }
            let made = try Routers.make(routerSpec, model: model, budget: b)
            selectors.append(o.steering ? BudgetSteering.forProduct(made) : made)
        }
        // The Decision Module under a possible steering wrapper: it keeps the routing time.
        func decisionModule(_ s: BudgetedLayerSelector?) -> DecisionModule? {
            (s as? DecisionModule) ?? ((s as? BudgetSteering)?.inner as? DecisionModule)
        }
        var series = [Series](repeating: Series(), count: budgetList.count)
        for r in 0...runs {
            for (i, selector) in selectors.enumerated() {
                session.selector = selector
                session.policy = o.kvPolicy
                session.standIns = standInWeights
                session.reset()
                decisionModule(selector)?.resetContext()
                let routing0 = decisionModule(selector)?.routingSeconds ?? 0
                let t0 = monotonicSeconds()
                try session.evaluate(ids)
                let t1 = monotonicSeconds()
                var tok = Sampler.argmax(session.decode.logits, count: model.config.vocabSize)
                var layerSum = 0
                let standIn0 = session.decode.standInSeconds
                for _ in 0..<genTokens - 1 {
                    try session.step(tok)
                    layerSum += Session.count(session.lastMask)
                    tok = Sampler.argmax(session.decode.logits, count: model.config.vocabSize)
                }
                let t2 = monotonicSeconds()
                guard r > 0 else { continue }   // warm-up
                series[i].prefill.append(Double(promptTokens) / (t1 - t0))
                series[i].decode.append(Double(genTokens - 1) / (t2 - t1))
                let routing = (decisionModule(selector)?.routingSeconds ?? 0) - routing0
                series[i].routingShares.append(routing / (t2 - t0))
                series[i].standInShares.append((session.decode.standInSeconds - standIn0) / (t2 - t1))
                series[i].layersPerToken = Double(layerSum) / Double(genTokens - 1)
            }
            if r > 0 && !json { report.note("round \(r)/\(runs): decode " + series.map { String(format: "%.1f", $0.decode.last!) }.joined(separator: " / ") + " tok/s") }
        }
        let fullIndex = budgetList.firstIndex { $0 >= 1 }
        for (i, b) in budgetList.enumerated() {
            let s = series[i]
            let p = median(s.prefill), d = median(s.decode), routingShare = median(s.routingShares)
            // Speed-up over full depth: the median over rounds of this round's ratio.
            let speedup = fullIndex.map { f in median(zip(s.decode, series[f].decode).map { $0 / $1 }) }
            let rss = peakRSSMegabytes()
            // The stand-ins' own time within the decode steps (timed where they run).
            let standInShare = median(s.standInShares)
            // The final norm and output head run once per token whatever the budget (the screened
            // head where the budget's tokens read it).
            let headShare = secondsPerHead(model.transformer, session.decode, layersRun: Int(s.layersPerToken.rounded())) * d
            if json {
                report.line("{\"budget\":\(b),\"router\":\(jsonString(selectors[i]?.name ?? "full")),\"threads\":\(o.threads),\"layers_per_token\":\(jsonNumber(s.layersPerToken)),"
                    + "\"prefill_tok_s\":\(jsonNumber(p)),\"decode_tok_s\":\(jsonNumber(d)),\"decode_speedup\":\(speedup.map(jsonNumber) ?? "null"),\"routing_share\":\(String(format: "%.5f", routingShare)),\"stand_ins\":\(jsonString(standInWeights == nil ? "off" : "on")),\"steering\":\(jsonString(o.steering ? "on" : "off")),\"head\":\(jsonString(o.head.rawValue)),\"kernels\":\(jsonString(KernelPath.active)),\"stand_in_share\":\(String(format: "%.5f", standInShare)),\"head_share\":\(String(format: "%.5f", headShare)),"
                    + "\"peak_rss_mb\":\(jsonNumber(rss)),\"prefill_runs\":[\(s.prefill.map(jsonNumber).joined(separator: ","))],\"decode_runs\":[\(s.decode.map(jsonNumber).joined(separator: ","))]}")
            } else {
                report.line(String(format: "| %.2f | %.1f | %.1f | %.1f | %@ | %.2f | %.2f%% | %.2f%% | %.1f%% | %.0f |", b, s.layersPerToken, p, d, speedup.map { String(format: "%.2f×", $0) } ?? "—", 1000 / d, 100 * routingShare, 100 * standInShare, 100 * headShare, rss))
            }
        }
    }

    /// Time of the final norm and output head for one decode token (`computeLogits`), measured
    /// apart like the stand-ins: the median over 5 batches of 10 applications to the state's
    /// current residual stream (after a warm-up one). Overwrites `state.logits`.
    public static func secondsPerHead(_ transformer: Transformer, _ state: DecodeState, layersRun: Int? = nil) -> Double {
        transformer.computeLogits(state, layersRun: layersRun)
        var batches: [Double] = []
        for _ in 0..<5 {
            let t0 = monotonicSeconds()
            for _ in 0..<10 { transformer.computeLogits(state, layersRun: layersRun) }
            batches.append((monotonicSeconds() - t0) / 10)
        }
        return median(batches)
    }
}

import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prefill and decode speed per budget.",
        discussion: """
            A warm-up round, then --runs rounds; each round runs every budget in turn (so machine
            noise hits all budgets alike): a --prompt-tokens prefill and a --gen-tokens greedy
            decode. Reports medians, decode speed-up over full depth (median of the per-round
            ratios, when budget 1 is in the list), peak resident memory and the share of decode
            time spent routing. Compare against llama.cpp with scripts/bench_vs_llamacpp.py.
            """)

    @Option(name: .long, help: "Prompt length for the prefill measurement.")
    var promptTokens: Int = 512
    @Option(name: .long, help: "Tokens to decode.")
    var genTokens: Int = 128
    @Option(name: .long, help: "Comma-separated budgets.")
    var budgets: String = "1,0.75,0.5"
    @Option(name: .long, help: "Measured runs per budget (median reported).")
    var runs: Int = 3
    @Option(name: .long, help: "Router for budgets below 1 (default: buddy if trained, else an evenly spread layer subset).")
    var router: String?
    @Option(name: .long, help: "KV policy for skipped layers (fill, mask, zero).")
    var kvPolicy: KVPolicy = .fill
    @Option(name: .long, help: "What a skipped layer adds: on (the model's stand-ins), off (plain skip), or a stand-in file. Default: on when the model has stand-ins.")
    var standIns: StandInChoice = .auto
    @Flag(name: .long, help: "One JSON object per budget.")
    var json = false
    @OptionGroup var modelOptions: ModelOptions

    func validate() throws {
        guard promptTokens >= 1, genTokens >= 2, runs >= 1 else { throw ValidationError("--prompt-tokens >= 1, --gen-tokens >= 2, --runs >= 1") }
        _ = try parseBudgets(budgets)
        try modelOptions.validateThreads()
    }

    static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    static func peakRSSMegabytes() -> Double {
        var u = rusage()
        getrusage(Int32(RUSAGE_SELF.rawValue), &u)
        return Double(u.ru_maxrss) / 1024   // ru_maxrss is in KiB on Linux
    }

    func run() throws {
        let model = try modelOptions.load()
        let capacity = promptTokens + genTokens + 1
        let session = Session(model: model, capacity: capacity, threads: modelOptions.threads, batchSize: min(promptTokens, 512))
        // A natural-text prompt of exactly promptTokens tokens.
        let seed = "The history of the region is long and varied. Over the centuries many peoples settled its valleys, built towns along its rivers and traded with distant lands. "
        var ids: [Int32] = []
        while ids.count < promptTokens { ids += model.tokenizer.encode(seed, parseSpecial: false) }
        ids = Array(ids.prefix(promptTokens))
        let routerSpec = router ?? (Routers.locate("buddy", model: model) != nil ? "buddy" : "even")
        if !json {
            print("model \(URL(fileURLWithPath: model.path).lastPathComponent), \(modelOptions.threads) threads, prompt \(promptTokens), decode \(genTokens), runs \(runs), router \(routerSpec)")
            print("| budget | layers/token | prefill tok/s | decode tok/s | decode × full | decode ms/token | routing share | stand-in share | peak RSS MB |")
            print("|---|---|---|---|---|---|---|---|---|")
        }
        // Rounds alternate over the budgets (1, 0.75, 0.5, 1, 0.75, …) so that drift of a noisy
        // machine hits every budget alike; speed-ups are medians of ratios within a round.
        let budgetList = try parseBudgets(budgets)
        struct Series { var prefill: [Double] = [], decode: [Double] = [], shares: [Double] = [], layersPerToken = 0.0 }
        let standInWeights = try standIns.resolve(model: model)
        var selectors: [BudgetedLayerSelector?] = []
        for b in budgetList { selectors.append(b >= 1 ? nil : try Routers.make(routerSpec, model: model, budget: b)) }
        var series = [Series](repeating: Series(), count: budgetList.count)
        for r in 0...runs {
            for (i, selector) in selectors.enumerated() {
                session.selector = selector
                session.policy = kvPolicy
                session.standIns = standInWeights
                session.reset()
                (selector as? DecisionModule)?.resetContext()
                let routing0 = (selector as? DecisionModule)?.routingSeconds ?? 0
                let t0 = monotonicSeconds()
                try session.evaluate(ids)
                let t1 = monotonicSeconds()
                var tok = Sampler.argmax(session.decode.logits, count: model.config.vocabSize)
                var layerSum = 0
                for _ in 0..<genTokens - 1 {
                    try session.step(tok)
                    layerSum += session.lastLayers.count
                    tok = Sampler.argmax(session.decode.logits, count: model.config.vocabSize)
                }
                let t2 = monotonicSeconds()
                guard r > 0 else { continue }   // warm-up
                series[i].prefill.append(Double(promptTokens) / (t1 - t0))
                series[i].decode.append(Double(genTokens - 1) / (t2 - t1))
                let routing = ((selector as? DecisionModule)?.routingSeconds ?? 0) - routing0
                series[i].shares.append(routing / (t2 - t0))
                series[i].layersPerToken = Double(layerSum) / Double(genTokens - 1)
            }
            if r > 0 && !json { Out.err("round \(r)/\(runs): decode " + series.map { String(format: "%.1f", $0.decode.last!) }.joined(separator: " / ") + " tok/s") }
        }
        let fullIndex = budgetList.firstIndex { $0 >= 1 }
        let standInSeconds = standInWeights.map(Bench.secondsPerStandIn) ?? 0
        for (i, b) in budgetList.enumerated() {
            let s = series[i]
            let p = Bench.median(s.prefill), d = Bench.median(s.decode), share = Bench.median(s.shares)
            // Speed-up over full depth: the median over rounds of this round's ratio.
            let speedup = fullIndex.map { f in Bench.median(zip(s.decode, series[f].decode).map { $0 / $1 }) }
            let rss = Bench.peakRSSMegabytes()
            // Stand-ins run once per skipped routable layer: their time per token over the step's.
            let skipped = Double(model.config.layers) - s.layersPerToken
            let standInShare = skipped * standInSeconds * d
            if json {
                print("{\"budget\":\(b),\"router\":\(jsonString(selectors[i]?.name ?? "full")),\"threads\":\(modelOptions.threads),\"layers_per_token\":\(jsonNumber(s.layersPerToken)),"
                    + "\"prefill_tok_s\":\(jsonNumber(p)),\"decode_tok_s\":\(jsonNumber(d)),\"decode_speedup\":\(speedup.map(jsonNumber) ?? "null"),\"routing_share\":\(String(format: "%.5f", share)),\"stand_ins\":\(jsonString(standInWeights == nil ? "off" : "on")),\"stand_in_share\":\(String(format: "%.5f", standInShare)),"
                    + "\"peak_rss_mb\":\(jsonNumber(rss)),\"prefill_runs\":[\(s.prefill.map(jsonNumber).joined(separator: ","))],\"decode_runs\":[\(s.decode.map(jsonNumber).joined(separator: ","))]}")
            } else {
                print(String(format: "| %.2f | %.1f | %.1f | %.1f | %@ | %.2f | %.2f%% | %.2f%% | %.0f |", b, s.layersPerToken, p, d, speedup.map { String(format: "%.2f×", $0) } ?? "—", 1000 / d, 100 * share, 100 * standInShare, rss))
            }
        }
    }
}

extension Bench {
    /// Mean time of one stand-in over the routable layers, measured apart (the decode loop
    /// is not instrumented): 200 applications of each layer's map to a residual vector.
    static func secondsPerStandIn(_ s: StandIns) -> Double {
        let routable = 1..<(s.layers.count - 1)
        var x = [Float](repeating: 0.1, count: s.dim), normed = x, projected = [Float](repeating: 0, count: max(1, s.maxRank))
        let reps = 200
        let t0 = monotonicSeconds()
        for _ in 0..<reps {
            // The input is normalised inside, so repeated application stays finite.
            for l in routable { s.apply(layer: l, &x, normed: &normed, projected: &projected) }
        }
        return (monotonicSeconds() - t0) / Double(reps * routable.count)
    }
}

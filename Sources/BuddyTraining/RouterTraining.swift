import BuddyCore
import BuddyRouting
import Foundation

/// `buddy train router`: the whole Decision Module from the repository's data in one command
/// (docs/TRAINING.md):
///
/// 1. candidate sets: a floating backward layer-set search with the model's stand-ins on a
///    small text + chat mix (every k from all routable layers down to --min-kept, thinned in
///    the first candidate ranking's order below), plus each static ranking's set per k (and,
///    with `--candidates …,single-layer`, the top k of the ranking by single-layer removal KL);
/// 2. per budget of --budgets, every distinct candidate's KL from full depth at every position
///    of the training and validation data (each token running that set, stand-ins on);
/// 3. a linear scorer per budget (`SetChoiceFit`), its L2 strength chosen on validation, kept
///    only when the module routing with it (one decision per token, mixing sets under the KV
///    policy) beats the best single candidate on validation by --min-gain; else that best set.
/// Everything measured is checkpointed, so an interrupted run resumes.
public enum RouterTraining {
    public struct Options {
        public var data: RefitData
        public var out: String
        public var candidates: String = "sleb,shortgpt"
        public var budgets: String = "0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95"
        public var searchTextChunks: Int = 4
        public var searchWindow: Int = 256
        public var searchChatPrompts: Int = 8
        public var searchReplyTokens: Int = 48
        public var minKept: Int = 14
        public var maxInclusions: Int = 20
        public var l2: String = "0.0001,0.001,0.01,0.1"
        public var minGain: Double = 0.005
        /// Budgets whose searched set is refined by one-swap moves on the training data ("" none).
        public var refineBudgets: String = ""
        public var refineRounds: Int = 2
        /// Budgets whose searched set's best one-swap neighbours (on the search data) join the candidates ("" none).
        public var neighbourBudgets: String = ""
        public var neighbours: Int = 3
        /// Balance of the pair scorer over the two best sets (0: no pair scorer).
        public var pairBalance: Float = 0
        public var standIns: StandInChoice = .auto
        public var kvPolicy: KVPolicy = .fill
        public var checkpoint: String?
        public var threads: Int = 2
        /// The --model given on the command line, recorded in the notes (nil: the default model).
        public var modelArgument: String?
        public init(data: RefitData, out: String) { self.data = data; self.out = out }

        public func validate() throws {
            try data.validate()
            _ = try budgetList()
            _ = try l2List()
            guard searchTextChunks >= 0, searchChatPrompts >= 0, searchTextChunks + searchChatPrompts > 0 else {
                throw ToolError.usage("--search-text-chunks and --search-chat-prompts must be >= 0 and not both 0")
            }
            guard (32...512).contains(searchWindow) else { throw ToolError.usage("--search-window must be 32...512") }
            guard (1...256).contains(searchReplyTokens) else { throw ToolError.usage("--search-reply-tokens must be 1...256") }
            guard minKept >= 1, maxInclusions >= 0 else { throw ToolError.usage("--min-kept must be >= 1 and --max-inclusions >= 0") }
            guard minGain >= 0, minGain < 1 else { throw ToolError.usage("--min-gain must be in [0, 1)") }
            _ = try refineBudgetList()
            guard (1...10).contains(refineRounds) else { throw ToolError.usage("--refine-rounds must be 1...10") }
            _ = try neighbourBudgetList()
            guard (1...8).contains(neighbours) else { throw ToolError.usage("--neighbours must be 1...8") }
            guard pairBalance >= 0, pairBalance.isFinite else { throw ToolError.usage("--pair-balance must be >= 0") }
            try validateThreads(threads)
        }

        public func budgetList() throws -> [Double] { try Self.routedBudgets(budgets, flag: "--budgets") }

        /// --refine-budgets: empty for none.
        public func refineBudgetList() throws -> [Double] { try Self.optionalRoutedBudgets(refineBudgets, flag: "--refine-budgets") }

        /// --neighbour-budgets: empty for none.
        public func neighbourBudgetList() throws -> [Double] { try Self.optionalRoutedBudgets(neighbourBudgets, flag: "--neighbour-budgets") }

        /// `routedBudgets`, or none for an empty option.
        static func optionalRoutedBudgets(_ text: String, flag: String) throws -> [Double] {
            text.trimmingCharacters(in: .whitespaces).isEmpty ? [] : try routedBudgets(text, flag: flag)
        }

        /// A comma-separated list of budgets in (0, 1): budget 1 runs every layer and has no set to choose.
        static func routedBudgets(_ text: String, flag: String) throws -> [Double] {
            let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            let bs = parts.compactMap { Double($0) }
            guard !bs.isEmpty, bs.count == parts.count, bs.allSatisfy({ $0 > 0 && $0 < 1 }) else {
                throw ToolError.usage("\(flag) must list budgets in (0, 1), not '\(text)'")
            }
            return bs
        }

        public func l2List() throws -> [Float] {
            let parts = l2.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            let xs = parts.compactMap { Float($0) }
            guard !xs.isEmpty, xs.count == parts.count, xs.allSatisfy({ $0 >= 0 && $0.isFinite }) else {
                throw ToolError.usage("--l2 must list non-negative numbers, not '\(l2)'")
            }
            return xs
        }

        /// The command that reproduces a router, for its notes (relative paths as given).
        public var commandLine: String {
            "buddy train router" + (modelArgument.map { " --model \($0)" } ?? "") + " --data \(data.data) --chat-data \(data.chatData) " + data.commandLine
                + " --candidates \(candidates) --budgets \(budgets)"
                + " --search-text-chunks \(searchTextChunks) --search-window \(searchWindow) --search-chat-prompts \(searchChatPrompts)"
                + " --search-reply-tokens \(searchReplyTokens) --min-kept \(minKept) --max-inclusions \(maxInclusions)"
                + " --l2 \(l2) --min-gain \(minGain) --kv-policy \(kvPolicy.rawValue)"
                + (refineBudgets.isEmpty ? "" : " --refine-budgets \(refineBudgets) --refine-rounds \(refineRounds)")
                + (neighbourBudgets.isEmpty ? "" : " --neighbour-budgets \(neighbourBudgets) --neighbours \(neighbours)")
                + (pairBalance == 0 ? "" : " --pair-balance \(pairBalance)")
                + (standIns == .auto ? "" : " --stand-ins \(standIns.argument)")
        }

        /// What the checkpoint's measurements depend on (budgets and thresholds may change on a rerun).
        var settings: String {
            "\(data.commandLine) search \(searchTextChunks)x\(searchWindow) chat \(searchChatPrompts)x\(searchReplyTokens) candidates \(candidates)"
                + (refineBudgets.isEmpty ? "" : " refine \(refineBudgets) x\(refineRounds)")
                + (neighbourBudgets.isEmpty ? "" : " neighbours \(neighbourBudgets) x\(neighbours)")
        }
    }

    /// The name under which --candidates takes the ranking by single-layer removal KL.
    public static let singleLayerName = "single-layer"

    /// Everything measured so far, saved after every step.
    struct Checkpoint: Codable {
        var modelFingerprint: String
        /// "off", or "on" and the stand-ins' `identity`.
        var standIns: String
        var settings: String
        var search: LayerSetSearch.State?
        var searchDone = false
        /// Per-position KL of a set on the training or validation data, keyed "train|1,2,5,…".
        var costs: [String: [Double]] = [:]
        /// Single-layer removal KL on the search data (layer l at index l-1).
        var isolated: [Double]?
        /// Refined sets by k: the latest set reached, the rounds that moved it, and the ks whose
        /// refinement finished.
        var refined: [Int: LayerSetSearch.Found]?
        var refinedRounds: [Int: Int]?
        var refinedDone: [Int]?
        /// The best one-swap neighbours of the searched set by k (--neighbour-budgets).
        var neighbours: [Int: [LayerSetSearch.Found]]?
    }

    public static func run(_ o: Options, model: LanguageModel, report: Reporter) throws {
        let c = model.config, L = c.layers, routable = L - 2, threads = o.threads
        guard o.minKept < routable else { throw ToolError("--min-kept must be below the \(routable) routable layers") }
        let budgets = try o.budgetList(), l2s = try o.l2List()
        let standIns = try o.standIns.resolve(model: model, note: report.note)
        let standInLabel = standIns == nil ? "off" : "on"
        // The checkpoint's costs hold only for these very stand-ins.
        let standInIdentity = standIns.map { "on " + $0.identity } ?? "off"
        let candidateNames = o.candidates.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        // "single-layer" is the ranking this command measures itself (step 1), not a file.
        let singleLayerIsCandidate = candidateNames.contains(singleLayerName)
        let rankings = try candidateNames.filter { $0 != singleLayerName }.map { n -> StaticRanking in
            guard let r = try Routers.make(n, model: model) as? StaticRanking else { throw ToolError("--candidates: '\(n)' is not a static ranking") }
            return r
        }
        guard let thinning = rankings.first else { throw ToolError("--candidates names no ranking") }
        let t0 = Date()

        // Checkpoint: reuse what a previous run of the same data measured.
        let checkpointPath = o.checkpoint ?? o.out + ".checkpoint.json"
        var saved = Checkpoint(modelFingerprint: model.fingerprint, standIns: standInIdentity, settings: o.settings)
        if let d = FileManager.default.contents(atPath: checkpointPath), let old = try? JSONDecoder().decode(Checkpoint.self, from: d),
           old.modelFingerprint == model.fingerprint, old.settings == o.settings, old.standIns == standInIdentity {
            saved = old
            report.note("resuming from \(checkpointPath): \(old.costs.count) measured sets, search \(old.searchDone ? "done" : "in progress")")
        } else if FileManager.default.fileExists(atPath: checkpointPath) {
            report.note("warning: \(checkpointPath) was measured with another model, data or stand-ins (or is unreadable); starting afresh")
        }
        func save() throws { try AtomicFile.write(try JSONEncoder().encode(saved), to: checkpointPath) }

        // 1. The search, on its own small mix.
        let ids = try TrainingData.textTokens(o.data.data, model: model)
        var searchData = try TrainingData.textSequences(ids, chunks: 0..<o.searchTextChunks, length: o.searchWindow, firstScored: 16, path: o.data.data)
        searchData += try TrainingData.chatSequences(model: model, path: o.data.chatData, prompts: 0..<o.searchChatPrompts,
                                                     replyTokens: o.searchReplyTokens, threads: threads, report: report)
        let search = TrainingData.search(model: model, sequences: searchData, threads: threads, label: "search data", report: report)
        search.standIns = standIns
        report.line("search data: \(search.sequences.count) sequences, \(search.scoredCount) scored positions; stand-ins \(standInLabel)")
        if saved.isolated == nil {
            let all = [Bool](repeating: true, count: L)
            let bar = report.progress("single-layer removals", routable)
            search.onProgress = { bar.update(Int($0), detail: "") }
            saved.isolated = search.objectives(base: all, candidates: (1...routable).map { l in (0..<L).map { $0 != l } })
            search.onProgress = nil
            try save()
        }
        var found: [Int: LayerSetSearch.Found] = saved.search?.best ?? [:]
        if !saved.searchDone {
            let bar = report.progress("layer-set search", ((o.minKept + 1)...routable).reduce(0, +))
            let startEvaluations = saved.search?.evaluations ?? 0
            found = try search.search(minKept: o.minKept, maxInclusions: o.maxInclusions, from: saved.search, checkpoint: { s in
                saved.search = s
                try save()
            }, progress: { evals, k, message in
                let done = evals - startEvaluations
                bar.total = done + (k > o.minKept ? ((o.minKept + 1)...k).reduce(0, +) : 0)
                bar.update(done, detail: message)
            })
            saved.searchDone = true
            try save()
        }
        let searched = LayerSetSearch.completeSets(found, ranking: thinning.ranking)
        // The ks that get candidates and a scorer (--budgets).
        let ks = Array(Set(budgets.map { LayerBudget.routableCount(budget: $0, layers: L) })).sorted(by: >)
        // 1a. At --neighbour-budgets, the searched set's best one-swap neighbours, ranked on the
        // search data: near-ties that differ in one layer, candidates a per-token scorer can mix.
        // Only where --budgets gives them a scorer; elsewhere they would never be used.
        let neighbourKs = Set(try o.neighbourBudgetList().map { LayerBudget.routableCount(budget: $0, layers: L) }).intersection(ks).filter { $0 < routable }.sorted(by: >)
        for k in neighbourKs where saved.neighbours?[k] == nil {
            let bar = report.progress("one-swap neighbours of k \(k) (search data)", k * (routable - k))
            let e0 = search.evaluations
            search.onProgress = { bar.update(min(Int($0) - e0, bar.total), detail: "") }
            let best = search.bestNeighbours(of: searched[k]!, count: o.neighbours)
            search.onProgress = nil
            saved.neighbours = (saved.neighbours ?? [:]).merging([k: best]) { $1 }
            try save()
            report.note("k \(k): best neighbours (layers skipped, search KL) " + best.map { f in
                String(format: "%@ (%.4f)", (1...routable).filter { !f.kept.contains($0) }.map(String.init).joined(separator: ","), f.kl)
            }.joined(separator: "; "))
        }
        let neighbourNames = neighbourKs.isEmpty ? [] : (1...o.neighbours).map { "swap\($0)" }
        // The paper's form scores layers one by one; its static core is this ranking by the
        // KL of removing one layer alone (stand-in in its place).
        let isolated = saved.isolated!
        let isolatedRanking = (1...routable).sorted { isolated[$0 - 1] > isolated[$1 - 1] }

        // 2. Per-position costs on the training and validation data.
        let text = try o.data.text(ids: ids)
        let chat = try o.data.chat(model: model, threads: threads, report: report)
        let train = TrainingData.search(model: model, sequences: text.train + chat.train, threads: threads, label: "training data", report: report)
        let validation = TrainingData.search(model: model, sequences: text.validation + chat.validation, threads: threads, label: "validation data", report: report)
        train.standIns = standIns
        validation.standIns = standIns
        report.line("training data: \(text.train.count) text + \(chat.train.count) chat sequences, \(train.scoredCount) positions; "
                    + "validation: \(text.validation.count) + \(chat.validation.count), \(validation.scoredCount) positions")
        // 1b. Refinement of the searched sets at --refine-budgets, on the training data.
        var refined: [Int: [Int]] = [:]
        let refineKs = Set(try o.refineBudgetList().map { LayerBudget.routableCount(budget: $0, layers: L) }).sorted(by: >)
        for k in refineKs where k < routable {
            var done = Set(saved.refinedDone ?? [])
            if !done.contains(k) {
                let start = saved.refined?[k]?.kept ?? searched[k]!
                var rounds = saved.refinedRounds?[k] ?? 0
                let neighbours = k * (routable - k), e0 = train.evaluations
                let bar = report.progress("refining k \(k) (one-swap rounds on the training data)", (o.refineRounds - rounds) * (neighbours + 1))
                train.onProgress = { bar.update(min(Int($0) - e0, bar.total), detail: "") }
                let result = try train.refine(kept: start, rounds: o.refineRounds - rounds) { set, kl in
                    rounds += 1
                    saved.refined = (saved.refined ?? [:]).merging([k: LayerSetSearch.Found(kept: set, kl: kl)]) { $1 }
                    saved.refinedRounds = (saved.refinedRounds ?? [:]).merging([k: rounds]) { $1 }
                    try save()
                    report.note(String(format: "k %d: swapped to %@, training KL %.4f", k, set.map(String.init).joined(separator: ","), kl))
                }
                train.onProgress = nil
                saved.refined = (saved.refined ?? [:]).merging([k: LayerSetSearch.Found(kept: result.kept, kl: result.kl)]) { $1 }
                done.insert(k)
                saved.refinedDone = done.sorted()
                try save()
            }
            refined[k] = saved.refined?[k]?.kept ?? searched[k]!
        }

        func key(_ split: String, _ set: [Int]) -> String { split + "|" + set.map(String.init).joined(separator: ",") }
        func costs(_ split: String, _ set: [Int]) throws -> [Double] {
            if let c = saved.costs[key(split, set)] { return c }
            let c = (split == "train" ? train : validation).positionKL(LayerBudget.mask(layers: L, chosen: Set(set)))
            saved.costs[key(split, set)] = c
            try save()
            return c
        }
        /// Measures the costs of every (split, set) in `wanted` that the checkpoint lacks: per split,
        /// the sets in lexicographic order of their masks (a layer run before one skipped), in
        /// groups of up to 20 that share the layers below each set's first difference from the one
        /// before (`LayerSetSearch.positionKLs`, the same numbers as `positionKL`), checkpointed
        /// after each group.
        func measureCosts(_ wanted: [(split: String, set: [Int])]) throws {
            var missing: [String: [[Int]]] = [:]
            for w in wanted where saved.costs[key(w.split, w.set)] == nil && !(missing[w.split] ?? []).contains(w.set) { missing[w.split, default: []].append(w.set) }
            let bar = report.progress("per-position KL (training, validation)", missing.values.reduce(0) { $0 + $1.count })
            var measured = 0
            for split in ["train", "validation"] {
                let sets = missing[split] ?? [], masks = sets.map { LayerBudget.mask(layers: L, chosen: Set($0)) }
                let order = masks.indices.sorted { masks[$0].lexicographicallyPrecedes(masks[$1]) { $0 && !$1 } }
                for first in stride(from: 0, to: order.count, by: 20) {
                    let group = Array(order[first..<min(order.count, first + 20)])
                    let done = measured
                    let results = (split == "train" ? train : validation).positionKLs(group.map { masks[$0] }) { sequences, total in
                        bar.update(done + group.count * sequences / total, detail: "\(split), \(group.count) sets")
                    }
                    for (j, r) in zip(group, results) { saved.costs[key(split, sets[j])] = r }
                    try save()
                    measured += group.count
                }
            }
        }
        /// Every source's set of k layers: the search's, then each ranking's.
        func sources(_ k: Int) -> [(name: String, set: [Int])] {
            [("search", searched[k]!)] + (refineKs.isEmpty ? [] : [("refined", refined[k] ?? searched[k]!)]) + rankings.map { ($0.name, Array($0.ranking.prefix(k)).sorted()) }
                + (singleLayerIsCandidate ? [(singleLayerName, Array(isolatedRanking.prefix(k)).sorted())] : [])
                + zip(neighbourNames, saved.neighbours?[k] ?? []).map { ($0, $1.kept) }
        }
        var candidatesByK: [Int: [(name: String, set: [Int])]] = [:]
        for k in ks {
            var list: [(name: String, set: [Int])] = []
            for source in sources(k) where !list.contains(where: { $0.set == source.set }) { list.append(source) }
            candidatesByK[k] = list
        }
        let comparisonKs = Set([0.9, 0.7, 0.5].map { LayerBudget.routableCount(budget: $0, layers: L) })
        // Every set's costs on both splits, and the single-layer ranking's on validation at the
        // comparison budgets: measured in groups whose sets share their first layers.
        var wanted: [(split: String, set: [Int])] = []
        for k in ks { for cand in candidatesByK[k]! { wanted += [("train", cand.set), ("validation", cand.set)] } }
        for k in comparisonKs.sorted(by: >) { wanted.append(("validation", Array(isolatedRanking.prefix(k)).sorted())) }
        try measureCosts(wanted)
        var isolatedValidation: [Int: Double] = [:]
        for k in comparisonKs { isolatedValidation[k] = TrainingData.mean(try costs("validation", Array(isolatedRanking.prefix(k)).sorted())) }

        // 3. Inputs, normalisation, scorers.
        let trainInputs = train.routingInputs(), validationInputs = validation.routingInputs()
        let (mean, scale) = standardisation(trainInputs)
        let zTrain = standardised(trainInputs, mean: mean, scale: scale), zValidation = standardised(validationInputs, mean: mean, scale: scale)

        var choices = (1...routable).map { k in
            DecisionModule.Choice(kept: k, sets: [k == routable ? Array(1...routable) : searched[k]!], names: [k == routable ? "all" : "search"])
        }
        var rows: [String] = []
        report.line("validation KL from full depth (mean per position; stand-ins \(standInLabel)):")
        // The table's columns: every source any k has, in `sources` order.
        var sourceNames: [String] = []
        for k in ks { for source in sources(k) where !sourceNames.contains(source.name) { sourceNames.append(source.name) } }
        let pairColumn = o.pairBalance > 0 ? " pair (routed) |" : ""
        report.line("| budget | k | " + sourceNames.joined(separator: " | ") + " | single-layer ranking | scorer (estimate) | scorer (routed) |\(pairColumn) shipped |")
        for k in ks {
            let cands = candidatesByK[k]!
            let trainCosts = try cands.map { try costs("train", $0.set) }
            let validationCosts = try cands.map { try costs("validation", $0.set) }
            let validationMeans = validationCosts.map(TrainingData.mean)
            let best = validationMeans.indices.min { validationMeans[$0] < validationMeans[$1] }!
            choices[k - 1] = DecisionModule.Choice(kept: k, sets: [cands[best].set], names: [cands[best].name])
            var estimate = Double.nan, routed = Double.nan, pairRouted = Double.nan, shipped = "\(cands[best].name) set"
            var shippedCost = validationMeans[best]
            /// Validation KL of the module with `trial` as k's choice, routing as generation does.
            func routedKL(_ trial: DecisionModule.Choice) throws -> Double {
                var all = choices
                all[k - 1] = trial
                let module = try DecisionModule(layers: L, dim: c.dim, kvDim: c.kvDim,
                                                weights: DecisionModule.Weights(inputMean: mean, inputScale: scale, choices: all))
                module.budget = Double(k) / Double(routable)
                return validation.routedKL(module, policy: o.kvPolicy)
            }
            /// The scorer over the candidates `chosen` (indices into cands) fitted at each --l2,
            /// the one whose picks cost least on validation, and that estimate.
            func bestScorer(_ chosen: [Int], balance: Float) -> (scorer: SetChoiceFit.Scorer, cost: Double, l2: Float) {
                let perPosition = { (split: [[Double]]) in (0..<split[0].count).map { t in chosen.map { split[$0][t] } } }
                let trainMatrix = perPosition(trainCosts), validationMatrix = perPosition(validationCosts)
                var bestFit: (scorer: SetChoiceFit.Scorer, cost: Double, l2: Float)?
                for l2 in l2s {
                    let scorer = SetChoiceFit.fit(inputs: zTrain, costs: trainMatrix, l2: l2, balance: balance)
                    let cost = SetChoiceFit.meanCost(picks: SetChoiceFit.picks(scorer, inputs: zValidation), costs: validationMatrix)
                    if bestFit == nil || cost < bestFit!.cost { bestFit = (scorer, cost, l2) }
                }
                return bestFit!
            }
            if cands.count > 1 {
                let bestFit = bestScorer(Array(cands.indices), balance: 0)
                estimate = bestFit.cost
                if estimate < validationMeans[best] * (1 - o.minGain) {
                    let trial = DecisionModule.Choice(kept: k, sets: cands.map(\.set), names: cands.map(\.name),
                                                      weights: bestFit.scorer.weights, bias: bestFit.scorer.bias)
                    routed = try routedKL(trial)
                    if routed < shippedCost * (1 - o.minGain) {
                        choices[k - 1] = trial
                        shippedCost = routed
                        shipped = String(format: "scorer (L2 %g)", bestFit.l2)
                    }
                }
                // The pair scorer: the two best sets, kept both in use by --pair-balance. Its
                // estimate cannot see what mixing does, so only routed measurement decides.
                if o.pairBalance > 0 {
                    let pair = Array(validationMeans.indices.sorted { validationMeans[$0] < validationMeans[$1] }.prefix(2))
                    let bestPair = bestScorer(pair, balance: o.pairBalance)
                    let trial = DecisionModule.Choice(kept: k, sets: pair.map { cands[$0].set }, names: pair.map { cands[$0].name },
                                                      weights: bestPair.scorer.weights, bias: bestPair.scorer.bias)
                    pairRouted = try routedKL(trial)
                    if pairRouted < shippedCost * (1 - o.minGain) {
                        choices[k - 1] = trial
                        shippedCost = pairRouted
                        shipped = String(format: "pair %@ + %@ (L2 %g)", cands[pair[0]].name, cands[pair[1]].name, bestPair.l2)
                    }
                }
            }
            // One column per source; a source whose set repeats an earlier one's names that one.
            let rowSources = sources(k)
            let cells = sourceNames.map { name -> String in
                guard let source = rowSources.first(where: { $0.name == name }) else { return "—" }
                let j = cands.firstIndex { $0.set == source.set }!
                return cands[j].name == source.name ? String(format: "%.4f", validationMeans[j]) : "= \(cands[j].name)"
            }
            let iso = isolatedValidation[k].map { String(format: "%.4f", $0) } ?? "—"
            let line = String(format: "| %.2f | %d | ", Double(k) / Double(routable), k) + cells.joined(separator: " | ") + " | \(iso) | " + (estimate.isNaN ? "—" : String(format: "%.4f", estimate)) + " | "
                + (routed.isNaN ? "—" : String(format: "%.4f", routed)) + " | "
                + (o.pairBalance > 0 ? (pairRouted.isNaN ? "—" : String(format: "%.4f", pairRouted)) + " | " : "") + "\(shipped) |"
            report.line(line)
            rows.append(line)
        }

        let module = try DecisionModule(name: "buddy", layers: L, dim: c.dim, kvDim: c.kvDim,
                                        weights: DecisionModule.Weights(inputMean: mean, inputScale: scale, choices: choices))
        let minutes = Date().timeIntervalSince(t0) / 60
        let notes = o.commandLine + String(format: "; stand-ins %@; %.0f min (resumed runs count their last part). ", standInLabel, minutes)
            + "Data: search on WikiText-2 tokens 0-\(o.searchTextChunks * o.searchWindow - 1) and train-split chat prompts 0-\(o.searchChatPrompts - 1); "
            + "scorers fitted on 512-token chunks 0-\(o.data.textChunks - 1) and prompts 0-\(o.data.chatPrompts - 1), "
            + "chosen on chunks \(o.data.validationSkipChunks)-\(o.data.validationSkipChunks + o.data.validationChunks - 1) "
            + "and prompts \(o.data.validationChatSkip)-\(o.data.validationChatSkip + o.data.validationChatPrompts - 1). "
            + "Validation KL per k (" + sourceNames.joined(separator: ", ") + ", single-layer ranking, scorer estimate, scorer routed"
            + (o.pairBalance > 0 ? ", pair routed" : "") + ", shipped): "
            + rows.joined(separator: " ")
        try RouterFile.save(module, model: model, notes: notes, to: o.out)
        try? FileManager.default.removeItem(atPath: checkpointPath)
        report.line(String(format: "written to %@ (%.0f min)", o.out, minutes))
    }
}

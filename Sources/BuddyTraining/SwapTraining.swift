import BuddyCore
import BuddyRouting
import Foundation

/// `buddy train swap`: improve one table's layer set at one budget by swapping layers, kept
/// if routed validation agrees.
public enum SwapTraining {
    public struct Options {
        public var data: RefitData
        public var router: String = "buddy"
        public var table: String = "conversation"
        public var kept: Int
        public var start: String?
        public var rounds: Int = 6
        public var shortlist: Int = 3
        public var swapSize: Int = 1
        public var minGain: Double = 0.01
        public var kvPolicy: KVPolicy = .fill
        public var out: String
        public var threads: Int = 2
        public init(data: RefitData, router: String = "buddy", table: String = "conversation", kept: Int, start: String? = nil, rounds: Int = 6, shortlist: Int = 3, swapSize: Int = 1, minGain: Double = 0.01, kvPolicy: KVPolicy = .fill, out: String, threads: Int = 2) {
            self.data = data
            self.router = router
            self.table = table
            self.kept = kept
            self.start = start
            self.rounds = rounds
            self.shortlist = shortlist
            self.swapSize = swapSize
            self.minGain = minGain
            self.kvPolicy = kvPolicy
            self.out = out
            self.threads = threads
        }

        public func validate() throws {
            guard table == "prose" || table == "conversation" else { throw ToolError.usage("--table must be prose or conversation, not '\(table)'") }
            guard rounds >= 1, shortlist >= 1 else { throw ToolError.usage("--rounds and --shortlist must be >= 1") }
            guard swapSize == 1 || swapSize == 2 else { throw ToolError.usage("--swap-size must be 1 or 2") }
            guard swapSize == 1 || shortlist >= 2 else { throw ToolError.usage("--swap-size 2 needs --shortlist >= 2") }
            guard minGain >= 0, minGain < 1 else { throw ToolError.usage("--min-gain must be in [0, 1)") }
            try validateThreads(threads)
        }
    }

    /// Searches, validates routed and writes the router (with its notes saying whether the set was kept).
    public static func run(_ o: Options, model: LanguageModel, report: Reporter) throws {
        let L = model.config.layers, routable = L - 2, kept = o.kept, table = o.table, threads = o.threads
        guard (1..<routable).contains(kept) else { throw ToolError("--kept must be in 1...\(routable - 1)") }
        guard let module = try Routers.make(o.router, model: model) as? DecisionModule, module.weights.gate != nil else {
            throw ToolError("--router must be a decision module with a context gate (buddy train gate)")
        }
        let conversation = table == "conversation"
        let tableSet = LayerBudget.topK(Array(module.priorScores(kept: kept, gated: conversation)), k: kept).sorted()
        let startSet = try o.start.map { name -> [Int] in
            guard let set = try TrainingData.candidateSets(name, flag: "--start", model: model)[0].sets[kept] else { throw ToolError("--start: '\(name)' has no set of \(kept) layers") }
            return set.sorted()
        } ?? tableSet
        let t0 = Date()
        let data = conversation ? try o.data.chat(model: model, conversation: true, threads: threads, report: report)
                                : try o.data.text(model: model, prose: true)
        let train = TrainingData.search(model: model, sequences: data.train, threads: threads, label: "\(table) training", report: report)
        let validation = TrainingData.search(model: model, sequences: data.validation, threads: threads, label: "\(table) validation", report: report)
        report.line("\(table), k = \(kept): \(train.scoredCount) training and \(validation.scoredCount) validation positions; mean KL from full depth")

        // Single removals and additions, then the swaps of a shortlisted removal or addition (counted once).
        let (outs, ins) = (min(o.shortlist, kept), min(o.shortlist, routable - kept))
        let perRound = routable + (o.swapSize == 1 ? outs * (routable - kept) + ins * kept - outs * ins
                                                   : outs * (outs - 1) / 2 * ins * (ins - 1) / 2)
        // The bar counts evaluated sets; a round can end the search early.
        let total = 1 + o.rounds * perRound
        let bar = report.progress("swap search", total)
        var latest = ""
        train.onProgress = { bar.update(min(Int($0), total), detail: latest) }
        let found = train.swapSearch(start: startSet, rounds: o.rounds, shortlist: o.shortlist, size: o.swapSize) { evaluations, message in
            latest = message
            bar.update(min(evaluations, total), detail: message)
        }
        train.onProgress = nil
        bar.update(total, detail: "done")
        func mask(_ set: [Int]) -> [Bool] { LayerBudget.mask(layers: L, chosen: set) }
        func names(_ layers: [Int]) -> String { layers.map(String.init).joined(separator: " ") }
        report.line("| set | layers | train | validation |")
        report.line("|---|---|---|---|")
        let sets = [("table's", tableSet), ("start", startSet), ("found", found.kept)]
        // The search already measured the found set on the training data.
        var seen: [[Int]: (Double, Double)] = [found.kept: (found.kl, validation.objective(mask(found.kept)))]
        for (name, set) in sets {
            let kl = seen[set] ?? (train.objective(mask(set)), validation.objective(mask(set)))
            seen[set] = kl
            report.line(String(format: "| %@ | %@ | %.4f | %.4f |", name, names(set), kl.0, kl.1))
        }
        for s in found.swaps { report.line(String(format: "swap: %@ out, %@ in, train KL %.4f", names(s.dropped), names(s.added), s.kl)) }

        // Routed for real, at this budget, with the module's switches as they are.
        let candidate = try module.replacingSet(kept: kept, conversation: conversation, with: found.kept)
        func routed(_ m: DecisionModule) -> Double {
            m.budget = Double(kept) / Double(routable)
            return validation.routedKL(m, policy: o.kvPolicy)
        }
        let before = routed(module)
        let after = found.kept == tableSet ? before : routed(candidate)
        let keep = after < before * (1 - o.minGain)
        report.line(String(format: "routed validation: table %.4f, found %.4f (%+.1f %%): %@", before, after, 100 * (after / before - 1),
                           keep ? "kept" : "not kept (gain below --min-gain)"))
        let notes = String(
            format: "buddy train swap --router %@ --table %@ --kept %d --start %@ --rounds %d --shortlist %d --swap-size %d %@ --min-gain %g --kv-policy %@; %@ k%d: %@ (routed validation %.4f -> %.4f); %.0f s",
            o.router, table, kept, o.start ?? "table", o.rounds, o.shortlist, o.swapSize, o.data.commandLine, o.minGain, o.kvPolicy.rawValue, table, kept,
            keep ? "set \(names(found.kept))" : "unchanged", before, after, Date().timeIntervalSince(t0))
        try RouterFile.save(keep ? candidate : module, model: model, notes: notes, to: o.out)
        report.line("written to \(o.out)")
    }
}

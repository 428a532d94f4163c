import BuddyCore
import BuddyRouting
import Foundation

/// `buddy train sets`: budget-specific layer sets searched on training text and chat, added
/// to a router as its prior for each k.
public enum SetTraining {
    public struct Options {
        public var data: String
        public var chatData: String
        public var textChunks: Int = 4
        public var textChunk: Int = 256
        public var chatPrompts: Int = 8
        public var replyTokens: Int = 48
        public var minKept: Int = 14
        public var maxInclusions: Int = 40
        public var base: String = "buddy"
        public var out: String
        public var checkpoint: String?
        public var threads: Int = 2
        public init(data: String, chatData: String, textChunks: Int = 4, textChunk: Int = 256, chatPrompts: Int = 8, replyTokens: Int = 48, minKept: Int = 14, maxInclusions: Int = 40, base: String = "buddy", out: String, checkpoint: String? = nil, threads: Int = 2) {
            self.data = data
            self.chatData = chatData
            self.textChunks = textChunks
            self.textChunk = textChunk
            self.chatPrompts = chatPrompts
            self.replyTokens = replyTokens
            self.minKept = minKept
            self.maxInclusions = maxInclusions
            self.base = base
            self.out = out
            self.checkpoint = checkpoint
            self.threads = threads
        }

        public func validate() throws {
            guard textChunks >= 0, chatPrompts >= 0, textChunks + chatPrompts > 0 else { throw ToolError.usage("--text-chunks and --chat-prompts must be >= 0 and not both 0") }
            guard (32...512).contains(textChunk) else { throw ToolError.usage("--text-chunk must be 32...512") }
            guard (1...256).contains(replyTokens) else { throw ToolError.usage("--reply-tokens must be 1...256") }
            guard minKept >= 1, maxInclusions >= 0 else { throw ToolError.usage("--min-kept must be >= 1 and --max-inclusions >= 0") }
            try validateThreads(threads)
        }

        /// What the saved search state depends on: the data. --min-kept and --max-inclusions only
        /// say when to stop, so a rerun may change them and still resume.
        public var settings: String { "text \(textChunks)×\(textChunk) chat \(chatPrompts) reply \(replyTokens)" }
    }

    /// The search state on disk, saved after every step.
    public struct CheckpointFile: Codable {
        public var modelFingerprint: String
        public var settings: String
        public var state: LayerSetSearch.State
    }

    /// Searches (resuming a checkpoint of the same search), reports against the static baselines
    /// and writes the router.
    public static func run(_ o: Options, model: LanguageModel, report: Reporter) throws {
        let c = model.config, routable = c.layers - 2, minKept = o.minKept
        guard minKept < routable else { throw ToolError("--min-kept must be below the \(routable) routable layers") }
        let baseModule: DecisionModule
        let baseSelector = try Routers.make(o.base, model: model)
        if let m = baseSelector as? DecisionModule {
            baseModule = m
        } else if let r = baseSelector as? StaticRanking {
            baseModule = try DecisionModule(prior: r, dim: c.dim, kvDim: c.kvDim, hidden: 32)
        } else { throw ToolError("--base must be a decision module or a ranking") }
        // The base's order (most important first) thins the sets below --min-kept.
        let prior = baseModule.weights.prior
        let ranking = (1...routable).sorted { (a: Int, b: Int) -> Bool in
            let pa = prior[a - 1], pb = prior[b - 1]
            return pa > pb || (pa == pb && a < b)
        }

        // Training sequences.
        let ids = try TrainingData.textTokens(o.data, model: model)
        var sequences = try TrainingData.textSequences(ids, chunks: 0..<o.textChunks, length: o.textChunk, firstScored: 16, path: o.data)
        sequences += try TrainingData.chatSequences(model: model, path: o.chatData, prompts: 0..<o.chatPrompts, replyTokens: o.replyTokens,
                                                    threads: o.threads, report: report)
        let search = TrainingData.search(model: model, sequences: sequences, threads: o.threads, label: "training data", report: report)
        report.line("training data: \(o.textChunks) text chunks and \(sequences.count - o.textChunks) chat replies, \(search.scoredCount) scored positions")

        // Resume when a checkpoint of the same search exists.
        let settings = o.settings
        let checkpointPath = o.checkpoint ?? o.out + ".search.json"
        var state: LayerSetSearch.State?
        if let d = FileManager.default.contents(atPath: checkpointPath),
           let saved = try? JSONDecoder().decode(CheckpointFile.self, from: d),
           saved.modelFingerprint == model.fingerprint, saved.settings == settings {
            state = saved.state
            report.note("resuming from \(checkpointPath): \(saved.state.evaluations) evaluations done, at k = \(saved.state.current.count)")
        }
        let bar = report.progress("searching", ((minKept + 1)...routable).reduce(0, +))
        let t0 = Date()
        let found = try search.search(minKept: minKept, maxInclusions: o.maxInclusions, from: state, checkpoint: { s in
            let file = CheckpointFile(modelFingerprint: model.fingerprint, settings: settings, state: s)
            try AtomicFile.write(try JSONEncoder().encode(file), to: checkpointPath)
        }, progress: { evals, k, message in
            // Estimate: the exclusion steps still ahead (put-backs add to it as they happen).
            // Count this run's evaluations only, so the ETA of a resumed run is right.
            let done = evals - (state?.evaluations ?? 0)
            bar.total = done + (k > minKept ? ((minKept + 1)...k).reduce(0, +) : 0)
            bar.update(done, detail: message)
        })

        // Report: the found sets against the static baselines on the same training data.
        let L = c.layers
        var baselines: [(String, StaticRanking)] = []
        for name in ["sleb", "shortgpt"] { if let r = try? Routers.make(name, model: model) as? StaticRanking { baselines.append((name, r)) } }
        report.line("training KL from full depth (mean per scored position):")
        report.line("| budget | k | searched set | " + baselines.map(\.0).joined(separator: " | ") + " |")
        report.line("|---|---|---|" + String(repeating: "---|", count: baselines.count))
        for b in [0.95, 0.9, 0.8, 0.7, 0.6, 0.5] {
            let k = LayerBudget.routableCount(budget: b, layers: L)
            guard let f = found[k] else { continue }
            let others = baselines.map { String(format: "%.4f", search.objective($0.1.mask(budget: b))) }
            report.line(String(format: "| %.2f | %d | %.4f | ", b, k, f.kl) + others.joined(separator: " | ") + " |")
        }
        for k in found.keys.sorted(by: >) where k < routable {
            let skipped = Set(1...routable).subtracting(found[k]!.kept).sorted()
            report.line(String(format: "k %2d  KL %.4f  skips %@", k, found[k]!.kl, skipped.map(String.init).joined(separator: ",")))
        }

        let sets = LayerSetSearch.completeSets(found, ranking: ranking)
        var w = baseModule.weights
        w.priorByCount = DecisionModule.priorTable(sets: sets, fallback: w.prior, routable: routable)
        let module = try DecisionModule(name: "buddy", layers: L, dim: c.dim, kvDim: c.kvDim, hidden: baseModule.hidden, weights: w)
        let notes = String(format: "buddy train sets --text-chunks %d --text-chunk %d --chat-prompts %d --reply-tokens %d --min-kept %d --max-inclusions %d --base %@; %d scored positions, %d evaluations, %d put-backs, %.0f s",
                           o.textChunks, o.textChunk, o.chatPrompts, o.replyTokens, minKept, o.maxInclusions, o.base, search.scoredCount, search.evaluations, search.inclusions, Date().timeIntervalSince(t0))
        try RouterFile.save(module, model: model, notes: notes, to: o.out)
        try? FileManager.default.removeItem(atPath: checkpointPath)
        report.line("written to \(o.out)")
    }
}

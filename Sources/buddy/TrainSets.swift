import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

struct TrainSets: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sets",
        abstract: "Search budget-specific layer sets on training text and chat, and add them to a router.",
        discussion: """
            For every number k of routable layers kept (from all of them down to --min-kept), a
            sequential floating backward selection finds the set whose next-token distributions
            stay closest to the full model's: mean KL from full depth over the scored positions of
            --text-chunks WikiText-2 chunks (--text-chunk tokens, scored from the 16th position on,
            from the start of the file, before the text evaluation uses) and of the full model's greedy replies to the
            first --chat-prompts chat prompts of the train split. Below --min-kept the smallest set
            is thinned in the base router's order. The sets become the Decision Module's prior
            for each k (router format version 2); its learned part is kept as it is.
            The search state is saved after every step (--checkpoint) and a rerun resumes it.
            Reproduce the shipped router with:
              buddy train sets --data ../shared/data/wikitext2_valid.txt \\
                --chat-data ../shared/data/mt_bench_questions.jsonl --base routers/buddy-router.json \\
                --max-inclusions 7 --out routers/buddy-router.json
            """)

    @Option(name: .long, help: "Training text (WikiText-2 validation file).")
    var data: String
    @Option(name: .long, help: "Chat prompts (MT-Bench JSON lines); the train split (even positions) is used.")
    var chatData: String
    @Option(name: .long, help: "Text chunks from the start of --data (every position from the 16th on is scored).")
    var textChunks: Int = 4
    @Option(name: .long, help: "Tokens per text chunk.")
    var textChunk: Int = 256
    @Option(name: .long, help: "Chat prompts (from the start of the train split) whose full-depth greedy replies are scored.")
    var chatPrompts: Int = 8
    @Option(name: .long, help: "Reply tokens per chat prompt.")
    var replyTokens: Int = 48
    @Option(name: .long, help: "Smallest number of routable layers the search goes down to.")
    var minKept: Int = 14
    @Option(name: .long, help: "Bound on the floating search's put-back steps.")
    var maxInclusions: Int = 40
    @Option(name: .long, help: "Router whose learned part and ranking are kept (a decision-module or ranking file, or a name).")
    var base: String = "buddy"
    @Option(name: .long, help: "Where to write the router (written atomically).")
    var out: String
    @Option(name: .long, help: "Search state, saved after every step and resumed by a rerun (default: <out>.search.json).")
    var checkpoint: String?
    @OptionGroup var modelOptions: ModelOptions

    func validate() throws {
        guard textChunks >= 0, chatPrompts >= 0, textChunks + chatPrompts > 0 else { throw ValidationError("--text-chunks and --chat-prompts must be >= 0 and not both 0") }
        guard (32...512).contains(textChunk) else { throw ValidationError("--text-chunk must be 32...512") }
        guard (1...256).contains(replyTokens) else { throw ValidationError("--reply-tokens must be 1...256") }
        guard minKept >= 1, maxInclusions >= 0 else { throw ValidationError("--min-kept must be >= 1 and --max-inclusions >= 0") }
        try modelOptions.validateThreads()
    }

    struct CheckpointFile: Codable {
        var modelFingerprint: String
        var settings: String
        var state: LayerSetSearch.State
    }

    func run() throws {
        let model = try modelOptions.load()
        let c = model.config, routable = c.layers - 2
        guard minKept < routable else { throw CLIError("--min-kept must be below the \(routable) routable layers") }
        let baseModule: DecisionModule
        let baseSelector = try Routers.make(base, model: model)
        if let m = baseSelector as? DecisionModule {
            baseModule = m
        } else if let r = baseSelector as? StaticRanking {
            baseModule = try DecisionModule(prior: r, dim: c.dim, kvDim: c.kvDim, hidden: 32)
        } else { throw CLIError("--base must be a decision module or a ranking") }
        // The base's order (most important first) thins the sets below --min-kept.
        let prior = baseModule.weights.prior
        let ranking = (1...routable).sorted { (a: Int, b: Int) -> Bool in
            let pa = prior[a - 1], pb = prior[b - 1]
            return pa > pb || (pa == pb && a < b)
        }

        // Training sequences.
        let ids = try TrainingData.textTokens(data, model: model)
        var sequences = try TrainingData.textSequences(ids, chunks: 0..<textChunks, length: textChunk, firstScored: 16, path: data)
        sequences += try TrainingData.chatSequences(model: model, path: chatData, prompts: 0..<chatPrompts, replyTokens: replyTokens, threads: modelOptions.threads)
        let search = TrainingData.search(model: model, sequences: sequences, threads: modelOptions.threads, label: "training data")
        print("training data: \(textChunks) text chunks and \(sequences.count - textChunks) chat replies, \(search.scoredCount) scored positions")

        // Resume when a checkpoint of the same search exists.
        // The data decide what the saved state means; --min-kept and --max-inclusions only
        // say when to stop, so a rerun may change them and still resume.
        let settings = "text \(textChunks)×\(textChunk) chat \(chatPrompts) reply \(replyTokens)"
        let checkpointPath = checkpoint ?? out + ".search.json"
        var state: LayerSetSearch.State?
        if let d = FileManager.default.contents(atPath: checkpointPath),
           let saved = try? JSONDecoder().decode(CheckpointFile.self, from: d),
           saved.modelFingerprint == model.fingerprint, saved.settings == settings {
            state = saved.state
            Out.err("resuming from \(checkpointPath): \(saved.state.evaluations) evaluations done, at k = \(saved.state.current.count)")
        }
        let bar = ProgressBar("searching", total: ((minKept + 1)...routable).reduce(0, +))
        let t0 = Date()
        let found = try search.search(minKept: minKept, maxInclusions: maxInclusions, from: state, checkpoint: { s in
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
        func mask(_ kept: [Int]) -> [Bool] { (0..<L).map { $0 == 0 || $0 == L - 1 || kept.contains($0) } }
        var baselines: [(String, StaticRanking)] = []
        for name in ["sleb", "shortgpt"] { if let r = try? Routers.make(name, model: model) as? StaticRanking { baselines.append((name, r)) } }
        print("training KL from full depth (mean per scored position):")
        print("| budget | k | searched set | " + baselines.map(\.0).joined(separator: " | ") + " |")
        print("|---|---|---|" + String(repeating: "---|", count: baselines.count))
        for b in [0.95, 0.9, 0.8, 0.7, 0.6, 0.5] {
            let k = LayerBudget.routableCount(budget: b, layers: L)
            guard let f = found[k] else { continue }
            let others = baselines.map { String(format: "%.4f", search.objective($0.1.mask(budget: b))) }
            print(String(format: "| %.2f | %d | %.4f | ", b, k, f.kl) + others.joined(separator: " | ") + " |")
        }
        for k in found.keys.sorted(by: >) where k < routable {
            let skipped = Set(1...routable).subtracting(found[k]!.kept).sorted()
            print(String(format: "k %2d  KL %.4f  skips %@", k, found[k]!.kl, skipped.map(String.init).joined(separator: ",")))
        }

        let sets = LayerSetSearch.completeSets(found, ranking: ranking)
        var w = baseModule.weights
        w.priorByCount = DecisionModule.priorTable(sets: sets, fallback: w.prior, routable: routable)
        let module = try DecisionModule(name: "buddy", layers: L, dim: c.dim, kvDim: c.kvDim, hidden: baseModule.hidden, weights: w)
        let notes = String(format: "buddy train sets --text-chunks %d --text-chunk %d --chat-prompts %d --reply-tokens %d --min-kept %d --max-inclusions %d --base %@; %d scored positions, %d evaluations, %d put-backs, %.0f s",
                           textChunks, textChunk, chatPrompts, replyTokens, minKept, maxInclusions, base, search.scoredCount, search.evaluations, search.inclusions, Date().timeIntervalSince(t0))
        try RouterFile.save(module, model: model, notes: notes, to: out)
        try? FileManager.default.removeItem(atPath: checkpointPath)
        print("written to \(out)")
    }
}

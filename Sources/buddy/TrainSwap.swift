import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

struct TrainSwap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swap",
        abstract: "Improve one table's layer set at one budget by swapping layers, and keep it if validation agrees.",
        discussion: """
            The backward search of `train sets` only removes layers, so at small k
            a table can be left with a set that a static method's set beats
            (docs/TRAINING.md). For the k in --kept and the --table (prose or
            conversation) of a gated --router, this command
            1. starts from the set of k layers that --start runs (a router name or
               file; by default the table's own set);
            2. swaps one kept layer for one skipped layer (two for two with
               --swap-size 2) while that lowers the mean KL from full depth on the
               training data (every token runs the set), at most --rounds times;
               each round scores every single removal and addition, then tries
               every swap that involves one of the --shortlist best removals or
               additions (size 2: every pair of them with every pair);
            3. routes the validation data for real with the found set in the
               table and with the table as it was (--kv-policy), and keeps the new
               set if it lowers the mean KL by more than --min-gain (relative).
            The data options are those of `train switches`. Everything else in
            --router (the other rows, the gate, the token switches) is kept.
            """)

    @OptionGroup var dataOptions: RefitDataOptions
    @Option(name: .long, help: "Gated Decision Module whose table is refined.")
    var router: String = "buddy"
    @Option(name: .long, help: "Which table: prose or conversation.")
    var table: String = "conversation"
    @Option(name: .long, help: "Number of routable layers kept (the table's row).")
    var kept: Int
    @Option(name: .long, help: "Router whose set of --kept layers the search starts from (default: the table's own).")
    var start: String?
    @Option(name: .long, help: "Most swaps taken.")
    var rounds: Int = 6
    @Option(name: .long, help: "Removals and additions per round whose swaps are tried (as many as the set's size tries every swap).")
    var shortlist: Int = 3
    @Option(name: .long, help: "Layers exchanged per swap: 1, or 2 (every pair of the shortlisted removals with every pair of the shortlisted additions).")
    var swapSize: Int = 1
    @Option(name: .long, help: "Relative validation KL gain the new set must bring to be kept.")
    var minGain: Double = 0.01
    @Option(name: .long, help: "What a skipped layer leaves in the KV cache while validating routed (mask, zero, fill).")
    var kvPolicy: KVPolicy = .fill
    @Option(name: .long, help: "Where to write the router (written atomically; written even when the set is not kept, with its notes saying so).")
    var out: String
    @OptionGroup var modelOptions: ModelOptions

    func validate() throws {
        guard table == "prose" || table == "conversation" else { throw ValidationError("--table must be prose or conversation, not '\(table)'") }
        guard rounds >= 1, shortlist >= 1 else { throw ValidationError("--rounds and --shortlist must be >= 1") }
        guard swapSize == 1 || swapSize == 2 else { throw ValidationError("--swap-size must be 1 or 2") }
        guard swapSize == 1 || shortlist >= 2 else { throw ValidationError("--swap-size 2 needs --shortlist >= 2") }
        guard minGain >= 0, minGain < 1 else { throw ValidationError("--min-gain must be in [0, 1)") }
        try modelOptions.validateThreads()
    }

    func run() throws {
        let model = try modelOptions.load()
        let L = model.config.layers, routable = L - 2
        guard (1..<routable).contains(kept) else { throw CLIError("--kept must be in 1...\(routable - 1)") }
        guard let module = try Routers.make(router, model: model) as? DecisionModule, module.weights.gate != nil else {
            throw CLIError("--router must be a decision module with a context gate (buddy train gate)")
        }
        let conversation = table == "conversation"
        let tableSet = LayerBudget.topK(Array(module.priorScores(kept: kept, gated: conversation)), k: kept).sorted()
        let startSet = try start.map { name -> [Int] in
            guard let set = try TrainingData.candidateSets(name, flag: "--start", model: model)[0].sets[kept] else { throw CLIError("--start: '\(name)' has no set of \(kept) layers") }
            return set.sorted()
        } ?? tableSet
        let t0 = Date()
        let data = conversation ? try dataOptions.chat(model: model, conversation: true, threads: modelOptions.threads)
                                : try dataOptions.text(model: model, prose: true)
        let train = TrainingData.search(model: model, sequences: data.train, threads: modelOptions.threads, label: "\(table) training")
        let validation = TrainingData.search(model: model, sequences: data.validation, threads: modelOptions.threads, label: "\(table) validation")
        print("\(table), k = \(kept): \(train.scoredCount) training and \(validation.scoredCount) validation positions; mean KL from full depth")

        // Single removals and additions, then the swaps of a shortlisted removal or addition (counted once).
        let (outs, ins) = (min(shortlist, kept), min(shortlist, routable - kept))
        let perRound = routable + (swapSize == 1 ? outs * (routable - kept) + ins * kept - outs * ins
                                                 : outs * (outs - 1) / 2 * ins * (ins - 1) / 2)
        // The bar counts evaluated sets; a round can end the search early.
        let total = 1 + rounds * perRound
        let bar = ProgressBar("swap search", total: total)
        var latest = ""
        train.onProgress = { bar.update(min(Int($0), total), detail: latest) }
        let found = train.swapSearch(start: startSet, rounds: rounds, shortlist: shortlist, size: swapSize) { evaluations, message in
            latest = message
            bar.update(min(evaluations, total), detail: message)
        }
        train.onProgress = nil
        bar.update(total, detail: "done")
        func mask(_ set: [Int]) -> [Bool] { LayerBudget.mask(layers: L, chosen: set) }
        func names(_ layers: [Int]) -> String { layers.map(String.init).joined(separator: " ") }
        print("| set | layers | train | validation |")
        print("|---|---|---|---|")
        let sets = [("table's", tableSet), ("start", startSet), ("found", found.kept)]
        // The search already measured the found set on the training data.
        var seen: [[Int]: (Double, Double)] = [found.kept: (found.kl, validation.objective(mask(found.kept)))]
        for (name, set) in sets {
            let kl = seen[set] ?? (train.objective(mask(set)), validation.objective(mask(set)))
            seen[set] = kl
            print(String(format: "| %@ | %@ | %.4f | %.4f |", name, names(set), kl.0, kl.1))
        }
        for s in found.swaps { print(String(format: "swap: %@ out, %@ in, train KL %.4f", names(s.dropped), names(s.added), s.kl)) }

        // Routed for real, at this budget, with the module's switches as they are.
        let candidate = try module.replacingSet(kept: kept, conversation: conversation, with: found.kept)
        func routed(_ m: DecisionModule) -> Double {
            m.budget = Double(kept) / Double(routable)
            return validation.routedKL(m, policy: kvPolicy)
        }
        let before = routed(module)
        let after = found.kept == tableSet ? before : routed(candidate)
        let keep = after < before * (1 - minGain)
        print(String(format: "routed validation: table %.4f, found %.4f (%+.1f %%): %@", before, after, 100 * (after / before - 1),
                     keep ? "kept" : "not kept (gain below --min-gain)"))
        let notes = String(
            format: "buddy train swap --router %@ --table %@ --kept %d --start %@ --rounds %d --shortlist %d --swap-size %d %@ --min-gain %g --kv-policy %@; %@ k%d: %@ (routed validation %.4f -> %.4f); %.0f s",
            router, table, kept, start ?? "table", rounds, shortlist, swapSize, dataOptions.commandLine, minGain, kvPolicy.rawValue, table, kept,
            keep ? "set \(names(found.kept))" : "unchanged", before, after, Date().timeIntervalSince(t0))
        try RouterFile.save(keep ? candidate : module, model: model, notes: notes, to: out)
        print("written to \(out)")
    }
}

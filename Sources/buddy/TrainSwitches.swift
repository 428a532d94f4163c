import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

struct TrainSwitches: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switches",
        abstract: "Teach a gated Decision Module to route token by token: per budget, a switch between its set and an alternative set.",
        discussion: """
            Within one kind of context, different tokens are served best by
            different layers (docs/TRAINING.md). For every k in --kept and each of
            the router's two tables (prose, conversation), this command
            1. measures, at every scored position of the training data, the KL
               from full depth of the table's set and of every --candidates
               router's set of k layers (each run for all tokens);
            2. fits, per alternative, a switch: a cost-weighted logistic
               regression on the Decision Module's input (pooled first-layer
               keys and values plus the newest token's h0) that sends a token to
               the alternative where it had the lower KL;
            3. takes the alternative whose switch has the lowest mean KL on the
               validation data when every token runs its choice's set, then
               routes the validation data for real (tokens run different sets,
               skipped layers leave the cache as --kv-policy says) and keeps the
               switch if its mean KL from full depth beats the table's set alone
               by more than --min-gain (relative); else k keeps its one set.
            Text: --text-chunks WikiText-2 chunks of 512 tokens from the start,
            scored from --text-first-scored on; validation text is the chunks
            after --validation-skip-chunks, second halves scored, as perplexity
            scores them. Conversations: the full model's greedy replies to the
            first --chat-prompts train-split prompts, validated on the next
            --validation-chat-prompts after --validation-chat-skip.
            Mixing sets costs little under --kv-policy fill and much under mask
            (a token then cannot attend to the keys of earlier tokens that
            skipped the layer); the shipped router was made and is evaluated
            with fill, the default. The --router's switches for budgets not in --kept
            are carried over unchanged, so one budget can be refitted alone.
            --text-extra-chunks and --validation-extra-chunks add text from later in
            the file (chunks 84 and up lie past the 64 that buddy eval perplexity
            --skip-chunks 20 scores).
            """)

    @OptionGroup var dataOptions: RefitDataOptions
    @Option(name: .long, help: "Gated Decision Module to refine (its tables and gate are kept).")
    var router: String = "buddy"
    @Option(name: .long, help: "Comma-separated routers (names or files) whose sets are the alternatives.")
    var candidates: String = "sleb,shortgpt"
    @Option(name: .long, help: "Comma-separated numbers of routable layers kept to fit switches for.")
    var kept: String = "27,25,22,20,17,14"
    @Option(name: .long, help: "Which tables to fit switches for: prose, conversation or both (comma-separated).")
    var tables: String = "prose,conversation"
    @Option(name: .long, help: "Relative validation KL gain a switch must bring to be kept.")
    var minGain: Double = 0.01
    @Option(name: .long, help: "What a skipped layer leaves in the KV cache while validating routed (mask, zero, fill).")
    var kvPolicy: KVPolicy = .fill
    @Option(name: .long, help: "L2 weight decay of the switches' logistic regression.")
    var decay: Float = 1e-2
    @Option(name: .long, help: "Where to write the router (written atomically).")
    var out: String
    @OptionGroup var modelOptions: ModelOptions

    func validate() throws {
        guard minGain >= 0, minGain < 1 else { throw ValidationError("--min-gain must be in [0, 1)") }
        guard decay >= 0, decay.isFinite else { throw ValidationError("--decay must be >= 0") }
        _ = try fittedTables()
        try modelOptions.validateThreads()
    }

    /// The tables --tables names.
    struct FittedTables {
        var prose: Bool, conversation: Bool
        func includes(conversation table: Bool) -> Bool { table ? conversation : prose }
    }

    func fittedTables() throws -> FittedTables {
        let names = tables.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        for n in names where n != "prose" && n != "conversation" {
            throw ValidationError("--tables: '\(n)' is not a table (prose, conversation)")
        }
        guard !names.isEmpty else { throw ValidationError("--tables names no table") }
        return FittedTables(prose: names.contains("prose"), conversation: names.contains("conversation"))
    }

    func run() throws {
        let model = try modelOptions.load()
        let L = model.config.layers, routable = L - 2
        guard let module = try Routers.make(router, model: model) as? DecisionModule, module.weights.gate != nil else {
            throw CLIError("--router must be a decision module with a context gate (buddy train gate)")
        }
        let ks = try kept.split(separator: ",").map { part -> Int in
            guard let k = Int(part.trimmingCharacters(in: .whitespaces)), (1..<routable).contains(k) else {
                throw CLIError("--kept: '\(part)' is not a number of layers in 1...\(routable - 1)")
            }
            return k
        }
        let alternatives = try TrainingData.candidateSets(candidates, flag: "--candidates", model: model)
        let fitted = try fittedTables()
        let t0 = Date()

        let text = try dataOptions.text(model: model, prose: fitted.prose)
        let chat = try dataOptions.chat(model: model, conversation: fitted.conversation, threads: modelOptions.threads)
        let scratch = PerplexityEvaluator(model: model, contextSize: 512, threads: modelOptions.threads)
        // Switches of the input router for budgets not refitted here stay as they are.
        var switches = module.weights.tokenSwitches.filter { !ks.contains($0.kept) || !fitted.includes(conversation: $0.conversation) }
        if !switches.isEmpty {
            print("kept from --router: switches for k = " + switches.map { "\($0.kept) (\($0.conversation ? "conversation" : "prose"))" }.joined(separator: ", "))
        }
        var report: [String] = []

        for (conversation, data) in [(false, text), (true, chat)] where fitted.includes(conversation: conversation) {
            let label = conversation ? "conversation" : "prose"
            let train = TrainingData.search(model: model, sequences: data.train, threads: modelOptions.threads, label: "\(label) training")
            let validation = TrainingData.search(model: model, sequences: data.validation, threads: modelOptions.threads, label: "\(label) validation")
            let zTrain = TokenSwitchTraining.inputs(model: model, module: module, sequences: data.train, scratch: scratch)
            let zValidation = TokenSwitchTraining.inputs(model: model, module: module, sequences: data.validation, scratch: scratch)
            func mask(_ set: [Int]) -> [Bool] { LayerBudget.mask(layers: L, chosen: set) }
            let work = ks.reduce(0) { n, k in n + 1 + Set(alternatives.map { $0.sets[k]! }).count }
            let bar = ProgressBar("\(label) switches", total: work)
            var done = 0
            print("\(label): \(train.scoredCount) training and \(validation.scoredCount) validation positions; mean KL from full depth")
            print("| k | table's set (train / val) | alternative | alternative alone (val) | per-token oracle (val) | switched (train / val) | switched share (val) | routed val: table / switched | kept |")
            print("|---|---|---|---|---|---|---|---|---|")
            for k in ks {
                let base = LayerBudget.topK(Array(module.priorScores(kept: k, gated: conversation)), k: k)
                let baseTrain = train.positionKL(mask(base)), baseValidation = validation.positionKL(mask(base))
                let baseMean = (train: mean(baseTrain), validation: mean(baseValidation))
                done += 1; bar.update(done, detail: "k \(k)")
                var best: (name: String, set: [Int], fit: TokenSwitchTraining.Fit, alone: Double, oracle: Double,
                           train: Double, validation: Double, share: Double)?
                var tried = Set<[Int]>([base])
                for alt in alternatives {
                    let set = alt.sets[k]!.sorted()
                    guard tried.insert(set).inserted else { continue }
                    let altTrain = train.positionKL(mask(set)), altValidation = validation.positionKL(mask(set))
                    let fit = TokenSwitchTraining.fit(inputs: zTrain, base: baseTrain, alternative: altTrain, decay: decay)
                    let onTrain = TokenSwitchTraining.switchedCost(fit, inputs: zTrain, base: baseTrain, alternative: altTrain)
                    let onValidation = TokenSwitchTraining.switchedCost(fit, inputs: zValidation, base: baseValidation, alternative: altValidation)
                    let oracle = mean(zip(baseValidation, altValidation).map { min($0, $1) })
                    if best == nil || onValidation.cost < best!.validation {
                        best = (alt.name, set, fit, mean(altValidation), oracle, onTrain.cost, onValidation.cost, onValidation.share)
                    }
                    done += 1; bar.update(done, detail: "k \(k), \(alt.name)")
                }
                guard let b = best else {
                    print(String(format: "| %d | %.4f / %.4f | (every candidate runs this set) | | | | | | no |", k, baseMean.train, baseMean.validation))
                    continue
                }
                // Routed for real: the module with this one switch against the module without.
                let candidate = DecisionModule.TokenSwitch(kept: k, conversation: conversation, alternative: b.set, weights: b.fit.weights, bias: b.fit.bias)
                func routed(_ extra: [DecisionModule.TokenSwitch]) throws -> Double {
                    var w = module.weights
                    w.tokenSwitches = extra  // this k's switch alone: the others do not act at this budget
                    let m = try DecisionModule(name: module.name, layers: L, dim: model.config.dim, kvDim: model.config.kvDim, hidden: module.hidden, weights: w)
                    m.budget = Double(k) / Double(routable)
                    return validation.routedKL(m, policy: kvPolicy)
                }
                let routedTable = try routed([]), routedSwitched = try routed([candidate])
                let keep = routedSwitched < routedTable * (1 - minGain)
                if keep { switches.append(candidate) }
                let row = String(format: "| %d | %.4f / %.4f | %@ | %.4f | %.4f | %.4f / %.4f | %.2f | %.4f / %.4f | %@ |", k, baseMean.train, baseMean.validation,
                                 b.name, b.alone, b.oracle, b.train, b.validation, b.share, routedTable, routedSwitched, keep ? "yes" : "no")
                print(row)
                report.append("\(label) k\(k): \(keep ? "switch to \(b.name)" : "none")")
            }
            bar.update(work, detail: "done")
        }

        var w = module.weights
        w.tokenSwitches = switches
        let refined = try DecisionModule(name: module.name, layers: L, dim: model.config.dim, kvDim: model.config.kvDim, hidden: module.hidden, weights: w)
        let notes = String(format: "buddy train switches --router %@ --candidates %@ --kept %@ --tables %@ %@ --min-gain %g --decay %g --kv-policy %@; %@; %.0f s",
                           router, candidates, kept, tables, dataOptions.commandLine, minGain, Double(decay), kvPolicy.rawValue,
                           report.joined(separator: "; "), Date().timeIntervalSince(t0))
        try RouterFile.save(refined, model: model, notes: notes, to: out)
        print("\(switches.count) switches; written to \(out)")
    }

    func mean(_ a: [Double]) -> Double { a.reduce(0, +) / Double(max(a.count, 1)) }
}

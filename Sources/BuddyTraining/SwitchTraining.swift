import BuddyCore
import BuddyRouting
import Foundation

/// `buddy train switches`: per budget, a token switch between a gated Decision Module's set
/// and an alternative set (docs/TRAINING.md).
public enum SwitchTraining {
    public struct Options {
        public var data: RefitData
        public var router: String = "buddy"
        public var candidates: String = "sleb,shortgpt"
        public var kept: String = "27,25,22,20,17,14"
        public var tables: String = "prose,conversation"
        public var minGain: Double = 0.01
        public var kvPolicy: KVPolicy = .fill
        public var decay: Float = 1e-2
        public var out: String
        public var threads: Int = 2
        public init(data: RefitData, router: String = "buddy", candidates: String = "sleb,shortgpt", kept: String = "27,25,22,20,17,14", tables: String = "prose,conversation", minGain: Double = 0.01, kvPolicy: KVPolicy = .fill, decay: Float = 1e-2, out: String, threads: Int = 2) {
            self.data = data
            self.router = router
            self.candidates = candidates
            self.kept = kept
            self.tables = tables
            self.minGain = minGain
            self.kvPolicy = kvPolicy
            self.decay = decay
            self.out = out
            self.threads = threads
        }

        public func validate() throws {
            guard minGain >= 0, minGain < 1 else { throw ToolError.usage("--min-gain must be in [0, 1)") }
            guard decay >= 0, decay.isFinite else { throw ToolError.usage("--decay must be >= 0") }
            _ = try fittedTables()
            try validateThreads(threads)
        }

        /// The tables --tables names.
        public func fittedTables() throws -> FittedTables {
            let names = tables.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            for n in names where n != "prose" && n != "conversation" {
                throw ToolError.usage("--tables: '\(n)' is not a table (prose, conversation)")
            }
            guard !names.isEmpty else { throw ToolError.usage("--tables names no table") }
            return FittedTables(prose: names.contains("prose"), conversation: names.contains("conversation"))
        }
    }

    /// Which of the two tables get switches.
    public struct FittedTables: Equatable, Sendable {
        public var prose: Bool, conversation: Bool
        public func includes(conversation table: Bool) -> Bool { table ? conversation : prose }
    }

    /// Fits, validates and keeps the switches that help, and writes the router.
    public static func run(_ o: Options, model: LanguageModel, report: Reporter) throws {
        let L = model.config.layers, routable = L - 2, threads = o.threads
        guard let module = try Routers.make(o.router, model: model) as? DecisionModule, module.weights.gate != nil else {
            throw ToolError("--router must be a decision module with a context gate (buddy train gate)")
        }
        let ks = try o.kept.split(separator: ",").map { part -> Int in
            guard let k = Int(part.trimmingCharacters(in: .whitespaces)), (1..<routable).contains(k) else {
                throw ToolError("--kept: '\(part)' is not a number of layers in 1...\(routable - 1)")
            }
            return k
        }
        let alternatives = try TrainingData.candidateSets(o.candidates, flag: "--candidates", model: model)
        let fitted = try o.fittedTables()
        let t0 = Date()

        let text = try o.data.text(model: model, prose: fitted.prose)
        let chat = try o.data.chat(model: model, conversation: fitted.conversation, threads: threads, report: report)
        let scratch = PerplexityEvaluator(model: model, contextSize: 512, threads: threads)
        // Switches of the input router for budgets not refitted here stay as they are.
        var switches = module.weights.tokenSwitches.filter { !ks.contains($0.kept) || !fitted.includes(conversation: $0.conversation) }
        if !switches.isEmpty {
            report.line("kept from --router: switches for k = " + switches.map { "\($0.kept) (\($0.conversation ? "conversation" : "prose"))" }.joined(separator: ", "))
        }
        var notes: [String] = []
        let mean = TrainingData.mean

        for (conversation, data) in [(false, text), (true, chat)] where fitted.includes(conversation: conversation) {
            let label = conversation ? "conversation" : "prose"
            let train = TrainingData.search(model: model, sequences: data.train, threads: threads, label: "\(label) training", report: report)
            let validation = TrainingData.search(model: model, sequences: data.validation, threads: threads, label: "\(label) validation", report: report)
            let zTrain = TokenSwitchTraining.inputs(model: model, module: module, sequences: data.train, scratch: scratch)
            let zValidation = TokenSwitchTraining.inputs(model: model, module: module, sequences: data.validation, scratch: scratch)
            func mask(_ set: [Int]) -> [Bool] { LayerBudget.mask(layers: L, chosen: set) }
            let work = ks.reduce(0) { n, k in n + 1 + Set(alternatives.map { $0.sets[k]! }).count }
            let bar = report.progress("\(label) switches", work)
            var done = 0
            report.line("\(label): \(train.scoredCount) training and \(validation.scoredCount) validation positions; mean KL from full depth")
            report.line("| k | table's set (train / val) | alternative | alternative alone (val) | per-token oracle (val) | switched (train / val) | switched share (val) | routed val: table / switched | kept |")
            report.line("|---|---|---|---|---|---|---|---|---|")
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
                    let fit = TokenSwitchTraining.fit(inputs: zTrain, base: baseTrain, alternative: altTrain, decay: o.decay)
                    let onTrain = TokenSwitchTraining.switchedCost(fit, inputs: zTrain, base: baseTrain, alternative: altTrain)
                    let onValidation = TokenSwitchTraining.switchedCost(fit, inputs: zValidation, base: baseValidation, alternative: altValidation)
                    let oracle = mean(zip(baseValidation, altValidation).map { min($0, $1) })
                    if best == nil || onValidation.cost < best!.validation {
                        best = (alt.name, set, fit, mean(altValidation), oracle, onTrain.cost, onValidation.cost, onValidation.share)
                    }
                    done += 1; bar.update(done, detail: "k \(k), \(alt.name)")
                }
                guard let b = best else {
                    report.line(String(format: "| %d | %.4f / %.4f | (every candidate runs this set) | | | | | | no |", k, baseMean.train, baseMean.validation))
                    continue
                }
                // Routed for real: the module with this one switch against the module without.
                let candidate = DecisionModule.TokenSwitch(kept: k, conversation: conversation, alternative: b.set, weights: b.fit.weights, bias: b.fit.bias)
                func routed(_ extra: [DecisionModule.TokenSwitch]) throws -> Double {
                    var w = module.weights
                    w.tokenSwitches = extra  // this k's switch alone: the others do not act at this budget
                    let m = try DecisionModule(name: module.name, layers: L, dim: model.config.dim, kvDim: model.config.kvDim, hidden: module.hidden, weights: w)
                    m.budget = Double(k) / Double(routable)
                    return validation.routedKL(m, policy: o.kvPolicy)
                }
                let routedTable = try routed([]), routedSwitched = try routed([candidate])
                let keep = routedSwitched < routedTable * (1 - o.minGain)
                if keep { switches.append(candidate) }
                let row = String(format: "| %d | %.4f / %.4f | %@ | %.4f | %.4f | %.4f / %.4f | %.2f | %.4f / %.4f | %@ |", k, baseMean.train, baseMean.validation,
                                 b.name, b.alone, b.oracle, b.train, b.validation, b.share, routedTable, routedSwitched, keep ? "yes" : "no")
                report.line(row)
                notes.append("\(label) k\(k): \(keep ? "switch to \(b.name)" : "none")")
            }
            bar.update(work, detail: "done")
        }

        var w = module.weights
        w.tokenSwitches = switches
        let refined = try DecisionModule(name: module.name, layers: L, dim: model.config.dim, kvDim: model.config.kvDim, hidden: module.hidden, weights: w)
        let fileNotes = String(format: "buddy train switches --router %@ --candidates %@ --kept %@ --tables %@ %@ --min-gain %g --decay %g --kv-policy %@; %@; %.0f s",
                               o.router, o.candidates, o.kept, o.tables, o.data.commandLine, o.minGain, Double(o.decay), o.kvPolicy.rawValue,
                               notes.joined(separator: "; "), Date().timeIntervalSince(t0))
        try RouterFile.save(refined, model: model, notes: fileNotes, to: o.out)
        report.line("\(switches.count) switches; written to \(o.out)")
    }
}

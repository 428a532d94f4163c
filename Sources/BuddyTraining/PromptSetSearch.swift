import BuddyCore
import BuddyRouting
import Foundation

/// A router whose prompt sets can be replaced (the Decision Module and the static rankings).
public protocol PromptSetHolder: BudgetedLayerSelector, PromptSetSelector {
    var promptSets: PromptSets { get set }
}
extension DecisionModule: PromptSetHolder {}
extension StaticRanking: PromptSetHolder {}

/// `buddy train prompt-sets`: for each budget, the layer set a prompt at that budget runs,
/// searched on training chat with the reply routed by the router itself.
///
/// The measure is chat KL from full depth along the full model's greedy replies to
/// training prompts (MT-Bench's train split), prompt at the budget, reply decided token by
/// token by the router (unsteered, so a reply runs as one batch; steering moves only decode
/// steps and leaves the prompt at k). Per budget, with k its routable layers:
///
///   1. the router's own prompt decisions (the reference to beat) and the set it picks most
///      often, S0;
///   2. S0 as every prompt's set, then every one-layer change of it for the prompt: each kept
///      layer left out (k − 1 layers) and each skipped layer added (k + 1), which ranks what
///      each layer is worth to the prompt;
///   3. the swaps that add one of the `width` best additions and leave out one of the `width`
///      cheapest removals (exactly k layers);
///   4. with `rounds` > 1, steps 2 and 3 again from the best set so far, until a round finds
///      nothing better;
///   5. the best set of exactly k found, kept only if it beats the router's own decisions;
///      otherwise the budget gets no prompt set.
///
/// About 2 + rounds × (routable + width²) measurements per budget. Every measurement is checkpointed,
/// so a rerun resumes. Conversations run in parallel on single-threaded lanes, one per thread
/// (`ChatLane`), and are summed in prompt order: the numbers do not depend on the thread count.
public enum PromptSetSearch {
    /// The part of a conversation a searched set serves.
    public enum SetPart: String, Sendable {
        case prompt, reply
    }

    public struct Options: Sendable {
        public var router: String
        public var chatData: String
        public var prompts: Int = 40
        public var replyTokens: Int = 64
        public var budgets: [Double] = [0.8]
        public var width: Int = 2
        /// Rounds of one-layer changes, each from the best set of the last (stops early when one finds nothing better).
        public var rounds: Int = 1
        public var standIns: StandInChoice = .auto
        public var kvPolicy: KVPolicy = .fill
        /// Which part of a conversation the searched set serves: the prompt, or the reply
        /// (`buddy train reply-sets`, the Decision Module's one set at the budget).
        public var part: SetPart = .prompt
        /// Which prompts of --chat-data are searched on (train: even positions).
        public var split: ChatPromptSplit = .train
        /// Reply sets only: prose and validation chat on which the module's own set, the reply
        /// set and a pair scorer over both compete for the choice (nil: the reply set is kept
        /// whenever it beats the module on the searched chat).
        public var pairData: ReplySetPair.Data?
        /// Reply sets with --text-data only: the search's measure is the mean of chat KL and of
        /// KL on the training prose (`pairData`'s text chunks), so that the set it finds is not a
        /// worse set for text.
        public var proseObjective = false
        public var out: String
        public var checkpoint: String?
        public var threads: Int = 1
        public init(router: String, chatData: String, out: String) { self.router = router; self.chatData = chatData; self.out = out }

        public func validate() throws {
            guard prompts >= 1, replyTokens >= 1, width >= 1, rounds >= 1 else { throw ToolError.usage("--prompts, --reply-tokens, --width and --rounds must be at least 1") }
            guard !budgets.isEmpty, budgets.allSatisfy({ $0 > 0 && $0 < 1 }) else { throw ToolError.usage("--budgets must be numbers in (0, 1)") }
        }

        /// The budgets as `--budgets` takes them ("0.8,0.7").
        var budgetsArgument: String { budgets.map { String(format: "%g", $0) }.joined(separator: ",") }

        /// The command that reproduces a search, as recorded in the router's notes.
        var command: String {
            "buddy train \(part)-sets --router \(router) --chat-data \(chatData)" + (split == .train ? "" : " --split \(split.rawValue)")
                + " --prompts \(prompts) --reply-tokens \(replyTokens)"
                + " --budgets " + budgetsArgument
                + (width == 2 ? "" : " --width \(width)") + (rounds == 1 ? "" : " --rounds \(rounds)") + (standIns == .auto ? "" : " --stand-ins \(standIns.argument)")
                + (pairData.map { " " + $0.commandLine } ?? "") + (proseObjective ? " --prose-objective" : "") + " --out \(out)"
        }
    }

    /// What one budget's search found.
    public struct Outcome: Sendable {
        public var budget: Double
        public var kept: Int
        /// Mean KL with the router's own prompt decisions, with S0, and with the set kept.
        public var routerKL: Double
        public var startKL: Double
        public var start: [Int]
        public var best: [Int]?
        public var bestKL: Double?
    }

    /// Measurements by key ("k=22 router", "k=22 set 1,2,..."): KL summed and tokens.
    struct Checkpoint: Codable {
        var settings: String
        var sums: [String: [Double]] = [:]
    }

    @discardableResult
    public static func run(_ o: Options, model: LanguageModel, report: Reporter) throws -> [Outcome] {
        try o.validate()
        guard let text = try? String(contentsOfFile: o.chatData, encoding: .utf8) else { throw ToolError("cannot read chat data '\(o.chatData)'") }
        let questions: [ChatPrompt]
        do { questions = Array(try ChatPromptSet.parse(text, split: o.split).prefix(o.prompts)) } catch { throw ToolError("\(o.chatData): \(error)") }
        guard !questions.isEmpty else { throw ToolError("'\(o.chatData)' has no prompts in the \(o.split.rawValue) split") }
        guard let router = try Routers.make(o.router, model: model) as? PromptSetHolder else {
            throw ToolError("--router \(o.router): prompt sets need the Decision Module or a static ranking file")
        }
        // A reply set replaces the module's choice at a budget; a static ranking's sets are its ranking.
        let module = router as? DecisionModule
        guard o.part == .prompt || module != nil else { throw ToolError("--router \(o.router): reply sets need the Decision Module") }
        guard let routerPath = Routers.locate(o.router, model: model),
              let routerJSON = try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: routerPath))) as? [String: Any] else {
            throw ToolError("--router \(o.router): cannot read its file")
        }
        let standIns = try o.standIns.resolve(model: model, note: report.note)
        let routable = model.config.layers - 2

        // Conversations run in parallel, one per lane and thread, each lane with a single-threaded
        // session and its own copy of the router (prompt sets, budget and pooled context are per
        // conversation). Sums are taken in prompt order, so the numbers equal one lane's bit for bit.
        let lanes = try (0..<max(1, o.threads)).map { i in
            let holder = i == 0 ? router : try Routers.make(o.router, model: model) as? PromptSetHolder
            guard let holder else { throw ToolError("--router \(o.router): cannot load a copy for lane \(i)") }
            return ChatLane(model: model, router: holder, policy: o.kvPolicy, part: o.part)
        }

        // The checkpoint is reused only by the same search (data, router, stand-ins). The router
        // is identified without its prompt sets and notes, which a search itself rewrites, and
        // without its format version, which a search raises when it saves (an older module file,
        // version 5, comes back as version 7 with the same decisions).
        var decisions = routerJSON
        decisions["prompt_sets"] = nil
        decisions["notes"] = nil
        decisions["version"] = nil
        let routerIdentity = try JSONSerialization.data(withJSONObject: decisions, options: [.sortedKeys])
            .withUnsafeBytes { String(format: "%016llx", StandInFile.fnv64($0)) }
        let settings = [o.chatData, "\(questions.count)", "\(o.replyTokens)", routerIdentity,
                        standIns.map { $0.identity } ?? "off", o.kvPolicy.rawValue, model.fingerprint]
            .joined(separator: "|") + (o.part == .prompt ? "" : "|\(o.part)|\(o.split.rawValue)")
            + (o.proseObjective ? "|prose \(o.pairData?.text ?? "")x\(o.pairData?.textChunks ?? 0)" : "")
        let checkpointPath = o.checkpoint ?? o.out + ".\(o.part)-sets.checkpoint.json"
        var saved = Checkpoint(settings: settings)
        if let data = FileManager.default.contents(atPath: checkpointPath),
           let old = try? JSONDecoder().decode(Checkpoint.self, from: data), old.settings == settings {
            saved = old
            report.note("resuming: \(old.sums.count) measurements from \(checkpointPath)")
        } else if FileManager.default.fileExists(atPath: checkpointPath) {
            report.note("\(checkpointPath) was made by another search (data, router or stand-ins differ); starting afresh")
        }

        let bar = report.progress("references", questions.count)
        let references = try perConversation(questions.count, lanes: lanes, bar: bar) { i, lane in
            try lane.evaluator.reference(prompt: lane.evaluator.promptTokens(questions[i].text), maxTokens: o.replyTokens)
        }

        // The tokens of --text-data, read once for the search's prose measure and every pair step.
        let textTokens = try o.pairData.map { try TrainingData.textTokens($0.text, model: model) }
        // The training prose of the search's measure (--prose-objective).
        var prose: LayerSetSearch?
        if o.proseObjective {
            guard o.part == .reply, let d = o.pairData, let textTokens else { throw ToolError("--prose-objective needs reply sets and --text-data") }
            let chunks = try d.trainingProse(textTokens, extra: false)
            prose = TrainingData.search(model: model, sequences: chunks, threads: o.threads, label: "search prose", report: report)
            prose?.standIns = standIns
        }
        /// With --prose-objective, the mean of `chatKL` and the KL on the training prose of the
        /// module with `set` at k (its own decisions for nil), measured once and checkpointed.
        func withProse(_ chatKL: Double, _ set: [Int]?, k: Int, key: String) throws -> Double {
            guard let prose, let module else { return chatKL }
            if let s = saved.sums["prose " + key] { return 0.5 * chatKL + 0.5 * s[0] / s[1] }
            let costs: [Double]
            if let set {
                costs = prose.positionKL(LayerBudget.mask(layers: model.config.layers, chosen: Set(set)))
            } else {
                module.budget = Double(k) / Double(routable)
                costs = prose.routedPositionKL(module, policy: o.kvPolicy)
            }
            saved.sums["prose " + key] = [costs.reduce(0, +), Double(costs.count)]
            try AtomicFile.write(try JSONEncoder().encode(saved), to: checkpointPath)
            return 0.5 * chatKL + 0.5 * TrainingData.mean(costs)
        }

        /// Mean KL over the references with `set` as every prompt's set (nil: the router's own
        /// decisions), and how often each prompt mask was run.
        func key(_ set: [Int]?, k: Int) -> String { "k=\(k) " + (set.map { "set " + $0.map(String.init).joined(separator: ",") } ?? "router") }
        /// Sets every lane's selector for measuring `set` at k (the router's own decisions for nil).
        func configure(_ set: [Int]?, k: Int) throws {
            for lane in lanes { try lane.configure(set, k: k, routable: routable, standIns: standIns) }
        }
        func measure(_ set: [Int]?, k: Int, label: String) throws -> (kl: Double, masks: [[Bool]: Int]) {
            let key = key(set, k: k)
            if set != nil, let s = saved.sums[key] { return (try withProse(s[0] / s[1], set, k: k, key: key), [:]) }
            try configure(set, k: k)
            let bar = report.progress(label, references.count)
            let measured = try perConversation(references.count, lanes: lanes, bar: bar) { i, lane -> (ChatDivergence, [Bool]?) in
                let selector = lane.selector!
                let d = try lane.evaluator.compare(references[i], batched: Routers.canBatch(selector, budget: selector.budget))
                // compare evaluates the prompt first; with the reply batched the session's
                // last mask is the reply's, so read the prompt's decision afresh.
                guard set == nil, o.part == .prompt else { return (d, nil) }
                lane.session.reset()
                try lane.session.evaluate(references[i].prompt)
                return (d, lane.session.lastMask)
            }
            var total = ChatDivergence()
            var masks: [[Bool]: Int] = [:]
            for (d, mask) in measured {
                total.add(d)
                if let mask { masks[mask, default: 0] += 1 }
            }
            saved.sums[key] = [total.klSum, Double(total.tokens)]
            try AtomicFile.write(try JSONEncoder().encode(saved), to: checkpointPath)
            return (try withProse(total.meanKL, set, k: k, key: key), masks)
        }

        /// `measure` for several sets at k (none of them nil), each measured once and
        /// checkpointed as `measure` does, with the work they share done once per conversation
        /// (`ChatEvaluator.compare(_:sets:part:)`): the same numbers, in about half the time.
        func measureGroup(_ sets: [[Int]], k: Int, label: String) throws -> [Double] {
            var missing: [[Int]] = []
            for set in sets where saved.sums[key(set, k: k)] == nil && !missing.contains(set) { missing.append(set) }
            if missing.count == 1 { _ = try measure(missing[0], k: k, label: label) }
            if missing.count > 1 {
                let L = model.config.layers
                let masks = missing.map { LayerBudget.mask(layers: L, chosen: $0) }
                let order = sharingOrder(masks)
                var totals = [ChatDivergence](repeating: ChatDivergence(), count: missing.count)
                let bar = report.progress(label + " (\(missing.count) sets)", references.count)
                // The first set's selector decides the shared reply (the prompt part) or is not
                // consulted (the reply part); a conversation that cannot share runs every set alone.
                try configure(missing[order[0]], k: k)
                let base = lanes[0].selector!
                let batchable = Routers.canBatch(base, budget: base.budget)
                let measured = try perConversation(references.count, lanes: lanes, bar: bar) { i, lane -> [ChatDivergence] in
                    var out = [ChatDivergence](repeating: ChatDivergence(), count: missing.count)
                    if batchable, let shared = lane.evaluator.compare(references[i], sets: order.map { masks[$0] }, part: o.part == .prompt ? .prompt : .reply) {
                        for (j, d) in zip(order, shared) { out[j] = d }
                    } else {
                        for j in missing.indices {
                            try lane.configure(missing[j], k: k, routable: routable, standIns: standIns)
                            let alone = lane.selector!
                            out[j] = try lane.evaluator.compare(references[i], batched: Routers.canBatch(alone, budget: alone.budget))
                        }
                        try lane.configure(missing[order[0]], k: k, routable: routable, standIns: standIns)
                    }
                    return out
                }
                for conversation in measured { for j in missing.indices { totals[j].add(conversation[j]) } }
                for (j, set) in missing.enumerated() { saved.sums[key(set, k: k)] = [totals[j].klSum, Double(totals[j].tokens)] }
                try AtomicFile.write(try JSONEncoder().encode(saved), to: checkpointPath)
            }
            return try sets.map { set in
                let s = saved.sums[key(set, k: k)]!
                return try withProse(s[0] / s[1], set, k: k, key: key(set, k: k))
            }
        }

        var outcomes: [Outcome] = []
        for b in o.budgets {
            let k = LayerBudget.routableCount(budget: b, layers: model.config.layers)
            guard k >= 2, k < routable else { report.note(String(format: "%.2f: k = %d leaves no room for a search", b, k)); continue }
            let own = try measure(nil, k: k, label: String(format: "%.2f router", b))
            let start: [Int]
            if o.part == .reply, let module {
                // The module's set at k (its "search" candidate when a scorer mixes several).
                let choice = module.weights.choices[k - 1]
                start = choice.sets[choice.names.firstIndex(of: "search") ?? 0]
            } else {
                start = try (mostFrequent(own.masks)).map { m in (1...routable).filter { m[$0] } }
                    ?? { throw ToolError("no prompt decision recorded") }()
            }
            let startKL = try measure(start, k: k, label: String(format: "%.2f S0", b)).kl
            // Each round starts from the best set so far: what each layer is worth to the prompt
            // (KL with it added, for skipped layers, or left out, for kept ones), then the swaps.
            var best: (set: [Int], kl: Double) = (start, startKL)
            var additions: [(layer: Int, kl: Double)] = [], removals: [(layer: Int, kl: Double)] = []
            for round in 1...o.rounds {
                let base = best.set
                additions = []; removals = []
                let kept = (1...routable).filter { base.contains($0) }, skipped = (1...routable).filter { !base.contains($0) }
                let removed = try measureGroup(kept.map { l in base.filter { $0 != l } }, k: k - 1, label: String(format: "%.2f r%d, one layer left out", b, round))
                let added = try measureGroup(skipped.map { l in (base + [l]).sorted() }, k: k + 1, label: String(format: "%.2f r%d, one layer added", b, round))
                removals = Array(zip(kept, removed)).map { (layer: $0.0, kl: $0.1) }
                additions = Array(zip(skipped, added)).map { (layer: $0.0, kl: $0.1) }
                additions.sort { $0.kl < $1.kl }
                removals.sort { $0.kl < $1.kl }
                var swaps: [[Int]] = []
                for a in additions.prefix(o.width) {
                    for r in removals.prefix(o.width) { swaps.append((base.filter { $0 != r.layer } + [a.layer]).sorted()) }
                }
                for (set, kl) in zip(swaps, try measureGroup(swaps, k: k, label: String(format: "%.2f r%d, swaps", b, round))) where kl < best.kl {
                    best = (set, kl)
                }
                if best.set == base { break }   // no swap helped: another round would measure the same sets
            }
            let kept = best.kl < own.kl ? best : nil
            outcomes.append(Outcome(budget: b, kept: k, routerKL: own.kl, startKL: startKL, start: start, best: kept?.set, bestKL: kept?.kl))
            report.line(String(format: "%.2f (k = %d): router's own %@ decisions %.4f, its %@ set %.4f, ", b, k, o.part.rawValue, own.kl,
                               o.part == .prompt ? "most frequent" : "start", startKL)
                        + (kept.map { String(format: "kept %@ %.4f", $0.set.map(String.init).joined(separator: ","), $0.kl) } ?? "no \(o.part) set kept"))
            report.line("  layer added: " + additions.map { String(format: "+%d %.4f", $0.layer, $0.kl) }.joined(separator: " "))
            report.line("  layer left out: " + removals.map { String(format: "−%d %.4f", $0.layer, $0.kl) }.joined(separator: " "))
        }

        if o.part == .reply, let module {
            // The module with each kept set as its one choice at that k; prompt sets as they were.
            var choices = module.weights.choices
            var figures = outcomes.map { String(format: "%.2f: %.4f -> %.4f", $0.budget, $0.routerKL, $0.bestKL ?? $0.routerKL) }.joined(separator: ", ")
            for outcome in outcomes {
                guard let best = outcome.best else { continue }
                if let pairData = o.pairData {
                    let pair = try ReplySetPair.choose(module: module, k: outcome.kept, own: outcome.start, reply: best, data: pairData, textTokens: textTokens ?? [], chat: o,
                                                       model: model, standIns: standIns, report: report)
                    choices[outcome.kept - 1] = pair.choice
                    // No " /" in the notes: tests read a space before a slash as a path outside the repository.
                    figures += " (chat KL, prompt at full depth)"
                        + String(format: "; k %d on validation prose and chat: own set %.4f, reply set %.4f, pair %.4f, shipped %@",
                                 outcome.kept, pair.own, pair.reply, pair.pair, pair.shipped)
                        + String(format: " (prose own %.4f, reply %.4f, pair %.4f, chat own %.4f, reply %.4f, pair %.4f)", pair.prose[0], pair.prose[1], pair.prose[2],
                                 pair.chat[0], pair.chat[1], pair.chat[2])
                } else {
                    choices[outcome.kept - 1] = DecisionModule.Choice(kept: outcome.kept, sets: [best], names: ["reply search"])
                }
            }
            let written = try module.replacingChoices(choices)
            let notes = ((routerJSON["notes"] as? String) ?? "") + "; then reply sets: " + o.command + "; " + figures
                + (o.pairData == nil ? " (chat KL, prompt at full depth)" : "")
            try RouterFile.save(written, model: model, notes: notes, to: o.out)
            if o.checkpoint == nil { try? FileManager.default.removeItem(atPath: checkpointPath) }
            report.line("wrote \(o.out)")
            return outcomes
        }

        // Write the router with its prompt sets: budgets not searched keep the sets they had.
        let fresh = try Routers.make(o.router, model: model)
        guard let holder = fresh as? PromptSetHolder else { throw ToolError("--router \(o.router) cannot hold prompt sets") }
        let earlierKept = Array(holder.promptSets.sets.keys)   // the file's sets, before this search's replace them
        for outcome in outcomes { try holder.promptSets.set(outcome.best, kept: outcome.kept) }
        let notes = recordedNotes(old: (routerJSON["notes"] as? String) ?? "", oldKept: earlierKept, options: o, searchedKept: outcomes.map { $0.kept },
                                  figures: outcomes.map { String(format: "%.2f: %.4f -> %.4f", $0.budget, $0.routerKL, $0.bestKL ?? $0.routerKL) }.joined(separator: ", "))
        if let m = holder as? DecisionModule { try RouterFile.save(m, model: model, notes: notes, to: o.out) }
        else if let r = holder as? StaticRanking { try RouterFile.save(r, model: model, notes: notes, to: o.out) }
        // The checkpoint is kept: a later search of the same router (more budgets, more rounds)
        // reuses its measurements. The settings leave out the prompt sets this search writes, so
        // scripts/train_router.sh's steps 3-5 find their first rounds measured by step 2.
        report.line("wrote \(o.out)")
        return outcomes
    }

    /// One lane of a search: a single-threaded session, its evaluator, and a router of its own.
    final class ChatLane {
        let session: Session
        let evaluator: ChatEvaluator
        let router: PromptSetHolder
        let part: SetPart
        /// What `configure` last set as the session's selector.
        private(set) var selector: BudgetedLayerSelector?

        init(model: LanguageModel, router: PromptSetHolder, policy: KVPolicy, part: SetPart) {
            session = Session(model: model, capacity: 2048, threads: 1, batchSize: 256)
            session.policy = policy
            // A reply set is searched with the prompt at full depth, as the chat runs it, so that
            // the prompt's own sets (at this budget and at k ± 1 alike) play no part.
            session.promptDepth = part == .reply ? .full : .budget
            evaluator = ChatEvaluator(session: session)
            self.router = router
            self.part = part
        }

        /// Sets the session's selector for measuring `set` at k (the router's own decisions for nil).
        func configure(_ set: [Int]?, k: Int, routable: Int, standIns: StandIns?) throws {
            let selector: BudgetedLayerSelector
            if part == .reply, let module = router as? DecisionModule, let set {
                selector = try module.replacingChoice(DecisionModule.Choice(kept: k, sets: [set], names: ["reply search"]))
            } else {
                selector = router
                if part == .prompt {
                    router.promptSets = .none(routable: routable)
                    if let set { try router.promptSets.set(set, kept: k) }
                }
            }
            selector.budget = Double(k) / Double(routable)
            session.selector = selector
            session.standIns = standIns
            self.selector = selector
        }
    }

    /// body(i, lane) for every conversation i, the lanes in parallel, the results in conversation
    /// order; `bar` counts the conversations done. The first error thrown is rethrown.
    static func perConversation<T>(_ count: Int, lanes: [ChatLane], bar: ProgressDisplay, _ body: (Int, ChatLane) throws -> T) throws -> [T] {
        try ThreadPool.mapItems(count, lanes: lanes.count, done: { bar.update($0, detail: "conversations") }) { i, lane in try body(i, lanes[lane]) }
    }

    /// The order in which `ChatEvaluator.compare(_:sets:part:)` should run `masks`: first the
    /// one whose first differences from the others lie deepest (the least work redone), then
    /// the others as given.
    public static func sharingOrder(_ masks: [[Bool]]) -> [Int] {
        guard let L = masks.first?.count else { return [] }
        func redone(_ b: Int) -> Int {
            masks.indices.reduce(0) { sum, j in sum + L - (LayerBudget.firstDifference(masks[j], masks[b]) ?? L) }
        }
        let base = masks.indices.min { redone($0) < redone($1) }!
        return [base] + masks.indices.filter { $0 != base }
    }

    /// The mask run most often; among equally frequent ones the one that runs the earliest
    /// layers (lexicographic order, a layer run before one skipped), so a rerun starts from the
    /// same set whatever order the dictionary holds them in (Swift seeds its hashing per process).
    public static func mostFrequent(_ masks: [[Bool]: Int]) -> [Bool]? {
        masks.min { a, b in
            a.value != b.value ? a.value > b.value : a.key.lexicographicallyPrecedes(b.key) { $0 && !$1 }
        }?.key
    }

    /// The router's notes after a search: what made the router, then the search's command and
    /// figures. A search of only some budgets leaves the other budgets' sets as an earlier search
    /// made them, so that search's record stays and this one follows it ("; then prompt sets: …"),
    /// replacing an earlier follow-up over the same budgets; the notes list, in order, the
    /// commands that reproduce the file. A reply-set search (`--part reply`, "; then reply sets: …")
    /// read the router the records before it made, so it and everything before it stay as they
    /// are, in the order they ran; only the prompt-set records after it can be replaced.
    public static func recordedNotes(old: String, oldKept: [Int], options o: Options, searchedKept: [Int], figures: String) -> String {
        let record = "prompt sets: " + o.command + "; " + figures + " (chat KL, train split)"
        let budgets = " --budgets " + o.budgetsArgument + " "
        let followUpMarker = "; then prompt sets: "
        if let reply = old.range(of: "; then reply sets: ", options: .backwards) {
            let after = old[reply.upperBound...].components(separatedBy: followUpMarker)
            let history = String(old[..<reply.upperBound]) + after[0]
            let later = after.dropFirst().filter { !$0.contains(budgets) }.map { "prompt sets: " + $0 }
            return ([history] + later).joined(separator: "; then ") + "; then " + record
        }
        let parts = old.components(separatedBy: "; prompt sets: ")
        let coversEarlierSets = Set(oldKept).isSubset(of: Set(searchedKept))
        guard parts.count > 1, !coversEarlierSets else { return parts[0] + "; " + record }
        let followUps = old.components(separatedBy: followUpMarker)
        let records = [followUps[0]] + followUps.dropFirst().filter { !$0.contains(budgets) }.map { "prompt sets: " + $0 }
        return records.joined(separator: "; then ") + "; then " + record
    }
}

import BuddyCore
import BuddyRouting
import Foundation

/// The grid every `buddy eval` command runs: budgets × methods × stand-in modes, with one router
/// file for the method `buddy` and one KV policy.
public struct EvalGrid {
    public var budgets: String = "1"
    public var methods: String = "buddy"
    public var router: String?
    public var kvPolicy: KVPolicy = .fill
    public var standIns: String = "auto"
    /// The output head of tokens that run few layers (every method alike).
    public var head: HeadChoice = .standard
    public init(budgets: String = "1", methods: String = "buddy", router: String? = nil, kvPolicy: KVPolicy = .fill, standIns: String = "auto",
                head: HeadChoice = .standard) {
        self.head = head
        self.budgets = budgets
        self.methods = methods
        self.router = router
        self.kvPolicy = kvPolicy
        self.standIns = standIns
    }

    /// The stand-in modes of the grid, each with its label for the table (on/off) and weights.
    public func standInModes(model: LanguageModel, note: (String) -> Void) throws -> [(label: String, weights: StandIns?)] {
        var modes: [(label: String, weights: StandIns?)] = []
        for part in standIns.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            guard let choice = StandInChoice(argument: part) else { throw ToolError.usage("--stand-ins: empty entry") }
            let w = try choice.resolve(model: model, note: note)
            if case .file = choice, standIns.contains(",") {
                modes.append((label: part, weights: w))   // several files: name them apart
            } else {
                modes.append((label: choice.label(w), weights: w))
            }
        }
        return modes
    }

    public var methodList: [String] { methods.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
    public func budgetList() throws -> [Double] { try parseBudgets(budgets) }

    public func validate() throws {
        _ = try budgetList()
        for m in methodList where !Routers.names.contains(BudgetSteering.method(m).router) {
            throw ToolError.usage("unknown method '\(m)' (use: \(Routers.names.joined(separator: ", ")), each optionally with +steer, +sentence or +blind)")
        }
    }

    /// The router for one cell of the grid; nil at budget 1 (the full model).
    public func selector(method: String, budget: Double, model: LanguageModel) throws -> BudgetedLayerSelector? {
        guard budget < 1 else { return nil }
        let (name, steering) = BudgetSteering.method(method)
        do {
            let selector = try Routers.make(name == "buddy" ? (router ?? "buddy") : name, model: model, budget: budget)
            return steering.map { BudgetSteering(selector, signal: $0) } ?? selector
        } catch {
            throw ToolError("\(error)")
        }
    }

    /// Every cell of the grid in table order (stand-in modes, then methods, then budgets).
    func forEachCell(model: LanguageModel, note: (String) -> Void, _ body: (_ mode: (label: String, weights: StandIns?), _ method: String, _ budget: Double) throws -> Void) throws {
        for mode in try standInModes(model: model, note: note) {
            for method in methodList {
                for b in try budgetList() { try body(mode, method, b) }
            }
        }
    }
}

/// The chat prompts `buddy eval chat` and `buddy eval auto` run: a split of a JSON-lines file.
public struct ChatPromptSelection {
    public var data: String
    public var split: String = "heldout"
    public var skip: Int = 0
    public var limit: Int?
    public var maxReply: Int = 128
    /// Which user turn is scored: the question, or its follow-up (MT-Bench's second turn),
    /// asked after the full model's own reply to the question.
    public var turn: ChatTurn = .first
    /// A system prompt before every prompt's first turn; nil keeps the model's own default.
    public var system: String?
    public init(data: String, split: String = "heldout", skip: Int = 0, limit: Int? = nil, maxReply: Int = 128, turn: ChatTurn = .first,
                system: String? = nil) {
        self.data = data
        self.system = system
        self.split = split
        self.skip = skip
        self.limit = limit
        self.maxReply = maxReply
        self.turn = turn
    }

    public func validate() throws {
        if let limit, limit < 1 { throw ToolError.usage("--limit must be at least 1") }
        if skip < 0 { throw ToolError.usage("--skip must not be negative") }
        guard ChatPromptSplit(rawValue: split) != nil else { throw ToolError.usage("--split must be train, heldout or all") }
        guard (1...2048).contains(maxReply) else { throw ToolError.usage("--max-reply must be between 1 and 2048") }
    }

    /// The prompts of the split (after --skip, at most --limit), or an error naming the file.
    public func load() throws -> [ChatPrompt] {
        guard let text = try? String(contentsOfFile: data, encoding: .utf8) else { throw ToolError("cannot read data file '\(data)'") }
        var prompts: [ChatPrompt]
        do { prompts = try ChatPromptSet.parse(text, split: ChatPromptSplit(rawValue: split)!) } catch { throw ToolError("\(data): \(error)") }
        prompts = Array(prompts.dropFirst(skip))
        if let limit { prompts = Array(prompts.prefix(limit)) }
        guard !prompts.isEmpty else { throw ToolError("'\(data)' has no prompts in the \(split) split" + (skip > 0 ? " after skipping \(skip)" : "")) }
        if turn == .followUp, let p = prompts.first(where: { $0.followUp == nil }) {
            throw ToolError("prompt \(p.id) in '\(data)' has no follow-up turn (--turn follow-up needs a second entry in every \"turns\" list)")
        }
        return prompts
    }

    /// One user turn, after the system prompt when one is given.
    public func messages(_ text: String) -> [ChatMessage] { ChatMessage.opening(system: system, user: text) }

    /// The prompt's name in per-item rows: its id, with "-follow-up" for the follow-up turn, so
    /// that items of both turns can be pooled in one paired comparison.
    public func itemKey(_ p: ChatPrompt) -> String {
        p.id.replacingOccurrences(of: ",", with: ";") + (turn == .followUp ? "-follow-up" : "")
    }

    /// The prompt's tokens and the full model's greedy reply of up to --max-reply tokens (refused
    /// when prompt and reply would not fit the session). For a follow-up turn the prompt is the
    /// question, the full model's greedy reply to it (up to --max-reply tokens) and the follow-up.
    public func reference(to p: ChatPrompt, evaluator: ChatEvaluator) throws -> (ids: [Int32], reference: ChatReference) {
        var ids = evaluator.promptTokens(messages(p.text))
        func fits() throws {
            guard ids.count + maxReply <= evaluator.session.capacity else { throw ToolError("prompt \(p.id) is too long (\(ids.count) tokens)") }
        }
        try fits()
        if turn == .followUp, let followUp = p.followUp {
            let first = try evaluator.reference(prompt: ids, maxTokens: maxReply).reply
            ids = evaluator.followUpTokens(question: p.text, firstReply: first, followUp: followUp, system: system)
            try fits()
        }
        return (ids, try evaluator.reference(prompt: ids, maxTokens: maxReply))
    }
}

/// The user turn `buddy eval chat` and `buddy eval auto` score.
public enum ChatTurn: String, Sendable, CaseIterable {
    case first
    case followUp = "follow-up"
}

/// `buddy eval perplexity`: llama.cpp's protocol over the grid.
public enum PerplexityRun {
    public struct Options {
        public var data: String
        public var chunks: Int?
        public var skipChunks: Int = 0
        public var ctx: Int = 512
        public var grid: EvalGrid = EvalGrid()
        public var threads: Int = 2
        public init(data: String, chunks: Int? = nil, skipChunks: Int = 0, ctx: Int = 512, grid: EvalGrid = EvalGrid(), threads: Int = 2) {
            self.data = data
            self.chunks = chunks
            self.skipChunks = skipChunks
            self.ctx = ctx
            self.grid = grid
            self.threads = threads
        }

        public func validate() throws {
            guard ctx >= 16 && ctx <= 8192 else { throw ToolError.usage("--ctx must be between 16 and 8192") }
            if let chunks, chunks < 1 { throw ToolError.usage("--chunks must be at least 1") }
            guard skipChunks >= 0 else { throw ToolError.usage("--skip-chunks must be >= 0") }
            try validateThreads(threads)
        }
    }

    /// The header of the per-chunk rows (`--items`): one row per cell and chunk, the chunk
    /// numbered from the start of the file, its summed negative log-likelihood and scored tokens.
    public static let itemHeader = "method,budget,kv_policy,stand_ins,chunk,nll,tokens"

    /// The table (metrics ppl, tokens), the chunks scored, the file's token count and one
    /// `itemHeader` row per cell and chunk (header first), for paired comparisons
    /// (`PairedComparison`); `model` is loaded once the text has been read.
    public static func run(_ o: Options, model loadModel: () throws -> LanguageModel, report: Reporter) throws -> (table: EvalTable, chunks: Int, fileTokens: Int, items: [String]) {
        guard var text = try? String(contentsOfFile: o.data, encoding: .utf8) else {
            throw ToolError("cannot read data file '\(o.data)' as UTF-8 text")
        }
        // llama.cpp's -f drops one trailing newline; do the same so chunks line up.
        if text.hasSuffix("\n") { text.removeLast() }
        let model = try loadModel()
        let evaluator = PerplexityEvaluator(model: model, contextSize: o.ctx, threads: o.threads)
        evaluator.head = o.grid.head
        let tokens = evaluator.tokenize(text)
        let available = tokens.count / o.ctx - o.skipChunks
        guard available > 0 else { throw ToolError("'\(o.data)' has \(tokens.count) tokens: no chunk of \(o.ctx) left after skipping \(o.skipChunks)") }
        let total = min(available, o.chunks ?? available)
        let kvPolicy = o.grid.kvPolicy
        var table = EvalTable(metrics: ["ppl", "tokens"], headers: ["ppl", "tokens"], formats: ["%.3f", "%.0f"], kvPolicy: kvPolicy.rawValue)
        var items = [itemHeader]
        var fullDepthChunks: [(nll: Double, count: Int)] = []
        func addItems(_ method: String, _ b: Double, _ standIns: String, _ chunks: [(nll: Double, count: Int)]) {
            for (i, c) in chunks.enumerated() {
                items.append(String(format: "%@,%.2f,%@,%@,%d,%.6f,%d", method, b, kvPolicy.rawValue, standIns, o.skipChunks + i, c.nll, c.count))
            }
        }
        try o.grid.forEachCell(model: model, note: report.note) { mode, method, b in
            evaluator.standIns = mode.weights
            // Budget 1 is the full model whatever the method; compute it once.
            if b >= 1, let done = table.fullDepth {
                table.add(method, b, done.values, standIns: mode.label)
                addItems(method, b, mode.label, fullDepthChunks)
                return
            }
            let selector = try o.grid.selector(method: method, budget: b, model: model)
            let label = String(format: "%@ %.2f %@", method, b, mode.label == "off" ? "" : "+stand-ins")
            let bar = report.progress(label, total)
            let fixed = Routers.fixedMask(selector, budget: b)
            var steered = BudgetSteering.Tally()   // a steered cell's scored steps and the layers they ran
            let result = evaluator.evaluate(
                tokens: tokens, maxChunks: total, firstChunk: o.skipChunks,
                runs: fixed.map { m in { m[$0] } }, selector: fixed == nil ? selector : nil, policy: kvPolicy,
                progress: { done, _, partial in
                    // Its counters restart with each chunk (a "reply"), so add them up after each.
                    steered.add(selector)
                    bar.update(done, detail: String(format: "ppl %.4f", partial.perplexity))
                })
            if let note = steeredComputeNote(method, b, standIns: mode.label, steered, step: "scored step", layers: model.config.layers) { report.note(note) }
            table.add(method, b, [result.perplexity, Double(result.count)], standIns: mode.label)
            if b >= 1 { fullDepthChunks = result.chunks }
            addItems(method, b, mode.label, result.chunks)
        }
        return (table, total, tokens.count, items)
    }
}

/// `buddy eval hellaswag`: acc_norm over the grid, with every task's choice.
public enum HellaSwagRun {
    /// The header of the per-task rows (`--items`): one row per cell and task, the task numbered
    /// from the start of the file, its gold ending and the ending chosen.
    public static let itemHeader = "method,budget,kv_policy,task,gold,chosen,stand_ins"

    public struct Options {
        public var data: String
        public var skip: Int = 0
        public var limit: Int?
        public var grid: EvalGrid = EvalGrid()
        public var threads: Int = 2
        public init(data: String, skip: Int = 0, limit: Int? = nil, grid: EvalGrid = EvalGrid(), threads: Int = 2) {
            self.data = data
            self.skip = skip
            self.limit = limit
            self.grid = grid
            self.threads = threads
        }

        public func validate() throws {
            if let limit, limit < 1 { throw ToolError.usage("--limit must be at least 1") }
            guard skip >= 0 else { throw ToolError.usage("--skip must not be negative") }
            try validateThreads(threads)
        }
    }

    /// The table (acc_norm, n; with a standard error column) and one CSV line per task and cell
    /// (header first); `model` is loaded once the tasks have been read.
    public static func run(_ o: Options, model loadModel: () throws -> LanguageModel, report: Reporter) throws -> (table: EvalTable, items: [String]) {
        guard let text = try? String(contentsOfFile: o.data, encoding: .utf8) else { throw ToolError("cannot read data file '\(o.data)'") }
        var tasks: [HellaSwagTask]
        do { tasks = try HellaSwagTask.parse(text) } catch { throw ToolError("\(error)") }
        guard o.skip < tasks.count else { throw ToolError("--skip \(o.skip): '\(o.data)' has only \(tasks.count) tasks") }
        tasks = Array(tasks.dropFirst(o.skip))
        if let limit = o.limit { tasks = Array(tasks.prefix(limit)) }
        let model = try loadModel()
        let session = Session(model: model, capacity: 512, threads: o.threads, batchSize: 128)
        session.head = o.grid.head
        let kvPolicy = o.grid.kvPolicy
        session.policy = kvPolicy
        var table = EvalTable(metrics: ["acc_norm", "n"], headers: ["acc_norm", "n"], formats: ["%.4f", "%.0f"], kvPolicy: kvPolicy.rawValue)
        table.derived = [("± s.e.", { v in String(format: "%.4f", (v[0] * (1 - v[0]) / v[1]).squareRoot()) })]
        var itemRows = [itemHeader]
        var fullDepthItems: [String] = []   // task,gold,chosen at full depth, the same for every method
        try o.grid.forEachCell(model: model, note: report.note) { mode, method, b in
            session.standIns = mode.weights
            if b >= 1, let done = table.fullDepth {
                table.add(method, b, done.values, standIns: mode.label)
                itemRows += fullDepthItems.map { "\(method),\(b),\(kvPolicy.rawValue),\($0),\(mode.label)" }
                return
            }
            session.selector = try o.grid.selector(method: method, budget: b, model: model)
            // Static layer sets and routers that decide per row score each ending as one
            // batch (same numbers, faster); other per-token routers run token by token.
            let ev = HellaSwagEvaluator(session: session, batched: Routers.canBatch(session.selector as? BudgetedLayerSelector, budget: b))
            let bar = report.progress(String(format: "hellaswag %@ %.2f %@", method, b, mode.label == "off" ? "" : "+stand-ins"), tasks.count)
            var correct = 0
            for (i, t) in tasks.enumerated() {
                session.reset()
                let best = try ev.score(t).best
                if best == t.gold { correct += 1 }
                itemRows.append("\(method),\(b),\(kvPolicy.rawValue),\(o.skip + i),\(t.gold),\(best),\(mode.label)")
                if b >= 1 { fullDepthItems.append("\(o.skip + i),\(t.gold),\(best)") }
                bar.update(i + 1, detail: String(format: "acc_norm %.3f", Double(correct) / Double(i + 1)))
            }
            table.add(method, b, [Double(correct) / Double(tasks.count), Double(tasks.count)], standIns: mode.label)
        }
        return (table, itemRows)
    }
}

/// `buddy eval chat`: KL from full depth and top-1 agreement along the full model's replies.
public enum ChatFidelityRun {
    /// The header of the per-prompt rows (`--items`): one row per cell and prompt, with the
    /// summed KL over the reply, the top-1 agreements and the reply's tokens.
    public static let itemHeader = "method,budget,kv_policy,stand_ins,prompt,kl_sum,agreements,tokens"
    /// The header of the per-position rows (`--positions`): one row per cell, prompt and reply
    /// position (`ChatPosition`), for studies of where along a reply the divergence lies.
    public static let positionHeader = "method,budget,stand_ins,prompt,position,token,kl,routed_entropy,routed_log_probability,reference_entropy"

    /// The table (kl, top1_agreement, tokens), the number of prompts and one `itemHeader` row
    /// per cell and prompt (header first), for paired comparisons (`PairedComparison`).
    /// `promptDepth` says whether each prompt runs at the cell's budget (the protocol of the
    /// published figures) or at full depth, as the chat runs it.
    /// With `positions`, `positionRows` holds one `positionHeader` row per cell, prompt and
    /// reply position (header first; the full model's own cells have none).
    public static func run(prompts selection: ChatPromptSelection, grid: EvalGrid, promptDepth: PromptDepth = .budget, threads: Int,
                           positions: Bool = false,
                           model loadModel: () throws -> LanguageModel, report: Reporter) throws -> (table: EvalTable, prompts: Int, items: [String], positionRows: [String]) {
        let prompts = try selection.load()
        let model = try loadModel()
        let session = Session(model: model, capacity: 2048, threads: threads, batchSize: 256)
        session.policy = grid.kvPolicy
        session.promptDepth = promptDepth
        session.head = grid.head
        let evaluator = ChatEvaluator(session: session)
        evaluator.recordsPositions = positions
        var positionRows = positions ? [positionHeader] : []
        // Every cell of the grid, each with its own router (per-token state lives in it).
        // A cell whose layers depend on the budget alone runs each reply as one batch.
        var cells: [(method: String, budget: Double, selector: BudgetedLayerSelector?, batched: Bool, standIns: (label: String, weights: StandIns?))] = []
        try grid.forEachCell(model: model, note: report.note) { mode, method, b in
            let selector = try grid.selector(method: method, budget: b, model: model)
            cells.append((method, b, selector, Routers.canBatch(selector, budget: b), mode))
        }
        var totals = [ChatDivergence](repeating: ChatDivergence(), count: cells.count)
        var steered = [BudgetSteering.Tally](repeating: .init(), count: cells.count)   // what steered cells ran
        let bar = report.progress("chat", prompts.count * (cells.count + 1))
        var done = 0
        var items = [itemHeader]
        for p in prompts {
            let (_, ref) = try selection.reference(to: p, evaluator: evaluator)
            done += 1
            for (i, cell) in cells.enumerated() {
                let d: ChatDivergence
                if cell.budget >= 1 {
                    // The full model agrees with itself: KL 0, top-1 1.
                    d = ChatDivergence(klSum: 0, agreements: ref.reply.count, tokens: ref.reply.count)
                } else {
                    session.selector = cell.selector
                    session.standIns = cell.standIns.weights
                    d = try evaluator.compare(ref, batched: cell.batched)
                    steered[i].add(cell.selector)
                    for (t, q) in evaluator.positions.enumerated() {
                        positionRows.append(String(format: "%@,%.2f,%@,%@,%d,%d,%.6f,%.6f,%.6f,%.6f", cell.method, cell.budget, cell.standIns.label,
                                                   selection.itemKey(p), t, ref.reply[t], q.kl, q.routedEntropy, q.routedLogProbability, q.referenceEntropy))
                    }
                }
                totals[i].add(d)
                items.append(String(format: "%@,%.2f,%@,%@,%@,%.6f,%d,%d", cell.method, cell.budget, grid.kvPolicy.rawValue, cell.standIns.label,
                                    selection.itemKey(p), d.klSum, d.agreements, d.tokens))
                done += 1
                bar.update(done, detail: "prompt \(p.id)")
            }
        }
        var table = EvalTable(metrics: ["kl", "top1_agreement", "tokens"], headers: ["KL (nats/token)", "top-1 agreement", "tokens"],
                              formats: ["%.4f", "%.4f", "%.0f"], kvPolicy: grid.kvPolicy.rawValue)
        for (i, cell) in cells.enumerated() { table.add(cell.method, cell.budget, [totals[i].meanKL, totals[i].top1Agreement, Double(totals[i].tokens)], standIns: cell.standIns.label) }
        for (i, cell) in cells.enumerated() {
            if let note = steeredComputeNote(cell.method, cell.budget, standIns: cell.standIns.label, steered[i], step: "reply step", layers: model.config.layers) { report.note(note) }
        }
        return (table, prompts.count, items, positionRows)
    }
}

/// What a steered cell ran: its mean routable layers per `step`, k only on average (nil for a
/// cell that was not steered).
func steeredComputeNote(_ method: String, _ budget: Double, standIns: String, _ tally: BudgetSteering.Tally, step: String, layers: Int) -> String? {
    tally.meanLayers.map {
        String(format: "%@ at %.2f (stand-ins %@): %.2f routable layers per %@ on average (k = %d)", method, budget, standIns, $0, step,
               LayerBudget.routableCount(budget: budget, layers: layers))
    }
}

import BuddyCore
import BuddyRouting
import Foundation

/// `buddy train predictor`: measure per-prompt quality curves and fit the Budget Predictor
/// (used by --budget auto) on them.
public enum PredictorTraining {
    public struct Options {
        public var chatData: String
        /// More chat requests (MT-Bench layout), every one of them a training prompt
        /// (`scripts/training_chat_requests.py`); nil: the train split of `chatData` only.
        public var extraChatData: String?
        public var textData: String
        public var textPrompts: Int = 120
        public var textTokens: Int = 10_240
        public var maxReply: Int = 48
        public var budgets: String = "0.5,0.6,0.7,0.75,0.8,0.85,0.9,0.95"
        /// The router measured, optionally steered (`buddy+steer`); by default as the chat runs it.
        public var router: String = PredictorTraining.defaultRouter
        public var standIns: StandInChoice = .auto
        public var out: String
        public var curves: String?
        public var lambdas: String = "0.01,0.1,1,10"
        public var valFraction: Double = 0.2
        public var qualityTolerance: Double = BudgetPredictor.defaultTolerance
        /// Tolerances the cross-validated comparison with fixed budgets covers (`toleranceReport`).
        public var tolerances: String = "0.25,0.4,0.6,1.0"
        /// The budgets --budget auto may choose (`ChoiceRule`).
        public var choiceRule: ChoiceRule = .grid
        /// Make the share rule the predictor's default with this share at full depth
        /// (`AutoBudgetRule.share`; needs `choiceRule` hull); nil: the tolerance rule.
        public var fullDepthShare: Double?
        public var seed: UInt64 = 0
        public var threads: Int = 2
        public init(chatData: String, extraChatData: String? = nil, textData: String, textPrompts: Int = 120, textTokens: Int = 10_240, maxReply: Int = 48, budgets: String = "0.5,0.6,0.7,0.75,0.8,0.85,0.9,0.95", router: String = PredictorTraining.defaultRouter, standIns: StandInChoice = .auto, out: String, curves: String? = nil, lambdas: String = "0.01,0.1,1,10", valFraction: Double = 0.2, qualityTolerance: Double = BudgetPredictor.defaultTolerance, tolerances: String = "0.25,0.4,0.6,1.0", seed: UInt64 = 0, threads: Int = 2, choiceRule: ChoiceRule = .grid) {
            self.chatData = chatData
            self.extraChatData = extraChatData
            self.textData = textData
            self.textPrompts = textPrompts
            self.textTokens = textTokens
            self.maxReply = maxReply
            self.budgets = budgets
            self.router = router
            self.standIns = standIns
            self.out = out
            self.curves = curves
            self.lambdas = lambdas
            self.valFraction = valFraction
            self.qualityTolerance = qualityTolerance
            self.tolerances = tolerances
            self.seed = seed
            self.threads = threads
            self.choiceRule = choiceRule
        }

        public func validate() throws {
            let grid = try parseBudgets(budgets)
            guard grid.allSatisfy({ $0 < 1 }), Set(grid).count == grid.count else { throw ToolError.usage("--budgets must be distinct values below 1") }
            guard textPrompts >= 0, maxReply >= 1, maxReply <= 512 else { throw ToolError.usage("--text-prompts must be >= 0 and --max-reply 1...512") }
            guard valFraction > 0, valFraction < 1 else { throw ToolError.usage("--val-fraction must be in (0, 1)") }
            guard qualityTolerance > 0 else { throw ToolError.usage("--quality-tolerance must be positive") }
            if let share = fullDepthShare {
                guard share > 0, share < 1 else { throw ToolError.usage("--full-depth-share must be in (0, 1)") }
                guard choiceRule == .hull else { throw ToolError.usage("--full-depth-share needs --choices hull (the share rule runs the lowest choice or full depth)") }
            }
            try validateThreads(threads)
        }
    }

    /// Which grid budgets the fitted predictor may choose (`BudgetPredictor.choices`).
    public enum ChoiceRule: String, CaseIterable, Sendable {
        /// The lower convex hull of the training chat prompts' mean curve within the recommended
        /// zone, and full depth (`BudgetPredictor.hullChoices`). Tried on 2026-12-05 and not the
        /// default: held out it sent every request of a kind to the same budget (docs/TRAINING.md).
        case hull
        /// Every grid budget (the default).
        case grid

        /// The choices for a predictor fitted on `curves`: the mean curve is the chat prompts'
        /// among them (all curves' when there are none), as --budget auto serves the chat.
        /// `routable` is the model's routable layer count (the hull needs layer counts); 0 for a
        /// caller of the grid rule, which does not.
        public func choices(for curves: [BudgetCurve], grid: [Double], routable: Int) -> [Double] {
            guard self == .hull, !curves.isEmpty else { return grid }
            precondition(routable > 0, "the hull rule needs the model's routable layer count")
            let chat = curves.filter { isChat($0.id) }
            let scored = chat.isEmpty ? curves : chat
            let mean = grid.indices.map { g in scored.reduce(0.0) { $0 + $1.kl[g] } / Double(scored.count) }
            return BudgetPredictor.hullChoices(budgets: grid, meanKL: mean, routable: Double(routable)) {
                Double(LayerBudget.routableCount(budget: $0, layers: routable + 2))
            }
        }
    }

    /// The router whose curves are measured unless `--router` says otherwise: the Decision
    /// Module, steered along the reply by its entropy when the chat steers by default, as it was
    /// when the shipped predictor was fitted. Since 2026-12-07 the chat also steers by sentence
    /// ends and since 2026-12-08 by the reply's first sentence (`BudgetSteering.productSignal`);
    /// the predictor was not refitted for either (held-out `--budget auto` was measured with
    /// each; eval/NOTES.md).
    public static let defaultRouter = "buddy" + (BudgetSteering.onByDefault ? BudgetSteering.Signal.entropy.suffix : "")

    /// The routers a curve measurement asks for, one budget at a time: `make`'s router, or for a
    /// steered method (`buddy+steer`) one steered router per grid budget made here and handed
    /// out for every prompt, so its entropy window spans replies as in a conversation (a fresh
    /// one per prompt would see one reply only, the variant that lost on training data).
    public static func curveRouters(_ method: String, grid: [Double],
                                    make: @escaping (Double) throws -> BudgetedLayerSelector) throws -> (Double) throws -> BudgetedLayerSelector {
        guard let signal = BudgetSteering.method(method).steering else { return make }
        let steered = try grid.map { BudgetSteering(try make($0), signal: signal) }
        return { b in
            guard let i = grid.firstIndex(of: b) else { return BudgetSteering(try make(b), signal: signal) }
            return steered[i]
        }
    }

    /// The measured curves on disk, reused by a rerun measured the same way.
    public struct CurveFile: Codable, Sendable {
        public var modelFingerprint: String
        public var router: String
        public var budgets: [Double]
        public var maxReply: Int
        /// Digest of the router file the curves were measured with (nil in older files, which
        /// are then measured again): a retrained router at the same path must not reuse them.
        public var routerIdentity: String?
        /// "off", or "on" and the stand-ins' `identity` ("on" alone in older files, which are
        /// then measured again; nil in files from before stand-ins: measured without them).
        public var standIns: String?
        public var curves: [BudgetCurve]
    }

    /// Measures the curves, fits the predictor and writes it to `options.out`; `model` is loaded
    /// once the data files have been read.
    public static func run(_ o: Options, model loadModel: () throws -> LanguageModel, report: Reporter) throws {
        let grid = try parseBudgets(o.budgets).sorted()
        let lambdaList = o.lambdas.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard !lambdaList.isEmpty, lambdaList.allSatisfy({ $0 > 0 }) else { throw ToolError("--lambdas must be positive numbers") }
        guard let chatText = try? String(contentsOfFile: o.chatData, encoding: .utf8) else { throw ToolError("cannot read '\(o.chatData)'") }
        guard var text = try? String(contentsOfFile: o.textData, encoding: .utf8) else { throw ToolError("cannot read '\(o.textData)'") }
        if text.hasSuffix("\n") { text.removeLast() }
        var chat: [ChatPrompt]
        do { chat = try ChatPromptSet.parse(chatText, split: .train) } catch { throw ToolError("\(o.chatData): \(error)") }
        var extraCount = 0
        if let path = o.extraChatData {
            guard let extraText = try? String(contentsOfFile: path, encoding: .utf8) else { throw ToolError("cannot read '\(path)'") }
            let extra: [ChatPrompt]
            do { extra = try ChatPromptSet.parse(extraText, split: .all) } catch { throw ToolError("\(path): \(error)") }
            // Curves are keyed by "chat-<id>", and MT-Bench's ids are numbers (`isMTBench`): a
            // request's id must be a distinct name, or two prompts' curves would mix.
            guard Set(extra.map(\.id)).count == extra.count, extra.allSatisfy({ !$0.id.allSatisfy(\.isNumber) }) else {
                throw ToolError("\(path): every request needs a distinct question_id that is not a number (e.g. \"hellaswag-1400\")")
            }
            chat += extra
            extraCount = extra.count
        }
        let model = try loadModel()
        let session = Session(model: model, capacity: 1024, threads: o.threads, batchSize: 256)
        session.standIns = try o.standIns.resolve(model: model, note: report.note)
        let standInLabel = session.standIns == nil ? "off" : "on"
        let standInIdentity = session.standIns.map { "on " + $0.identity } ?? "off"
        let routerName = BudgetSteering.method(o.router).router
        let routerIdentity = Routers.identity(routerName, model: model)
        let evaluator = ChatEvaluator(session: session)

        // The prompts, in a fixed order: chat first, then seeded text segments.
        var prompts: [(id: String, ids: [Int32])] = chat.map { ("chat-\($0.id)", evaluator.promptTokens($0.text)) }
        var ids = model.tokenizer.encode(text, parseSpecial: false)
        ids = Array(ids.prefix(o.textTokens))
        var rng = SeededRNG(seed: o.seed)
        if o.textPrompts > 0 {
            guard ids.count > 512 else { throw ToolError("'\(o.textData)' is too short for text prompts") }
            for i in 0..<o.textPrompts {
                let len = 32 + Int(rng.next() % 353)
                let start = Int(rng.next() % UInt64(ids.count - len))
                var p = Array(ids[start..<(start + len)])
                if model.tokenizer.addBOS, let bos = model.tokenizer.bosID { p.insert(bos, at: 0) }
                prompts.append(("text-\(i)-\(start)", p))
            }
        }

        // Resume from saved curves when they were measured the same way.
        let curvePath = o.curves ?? o.out + ".curves.json"
        var file = CurveFile(modelFingerprint: model.fingerprint, router: o.router, budgets: grid, maxReply: o.maxReply,
                             routerIdentity: routerIdentity, standIns: standInIdentity, curves: [])
        let dec = JSONDecoder(); dec.keyDecodingStrategy = .convertFromSnakeCase
        if let data = FileManager.default.contents(atPath: curvePath) {
            if let saved = try? dec.decode(CurveFile.self, from: data), saved.modelFingerprint == model.fingerprint,
               saved.router == o.router, saved.routerIdentity == routerIdentity, saved.budgets == grid, saved.maxReply == o.maxReply,
               (saved.standIns ?? "off") == standInIdentity {
                file.curves = saved.curves
                report.note("resuming: \(saved.curves.count) curves already measured in \(curvePath)")
            } else {
                report.note("warning: \(curvePath) was measured differently (or is unreadable); it will be replaced")
            }
        }
        let enc = JSONEncoder(); enc.keyEncodingStrategy = .convertToSnakeCase
        let meter = BudgetCurveMeter(evaluator: evaluator, budgets: grid, makeRouter: try curveRouters(o.router, grid: grid) { b in
            do { return try Routers.make(routerName, model: model, budget: b) } catch { throw ToolError("router '\(routerName)': \(error)") }
        })
        let done = Set(file.curves.map(\.id))
        let bar = report.progress("measuring curves", prompts.count)
        for (i, p) in prompts.enumerated() {
            if !done.contains(p.id) {
                file.curves.append(try meter.measure(id: p.id, prompt: p.ids, maxReply: o.maxReply))
                try AtomicFile.write(try enc.encode(file), to: curvePath)
            }
            let c = file.curves.last!
            bar.update(i + 1, detail: "\(p.id): KL@\(grid[0]) \(String(format: "%.3f", c.kl[0])), @\(grid.last!) \(String(format: "%.3f", c.kl.last!))")
        }

        let usable = file.curves.filter { c in prompts.contains { $0.id == c.id } }
        let routable = model.config.layers - 2
        var fitted = try fit(usable, grid: grid, lambdas: lambdaList, valFraction: o.valFraction, tolerance: o.qualityTolerance,
                             router: o.router, choiceRule: o.choiceRule, routable: routable, rng: &rng, report: report)
        var shareNote = ""
        if let share = o.fullDepthShare {
            fitted.predictor = try fitted.predictor.withShareRule(share, seedFeatures: usable.filter { isChat($0.id) }.map(\.features))
            let row = try shareComparison(usable, grid: grid, lambda: fitted.lambda, share: share, seed: fitted.predictor, routable: routable, router: o.router)
            report.line(String(format: "share rule %g on the %d training chat prompts in order, each predicted without it (5 folds): mean budget %.3f, %.1f %% at full depth, "
                               + "KL %.4f against %.4f fixed at the same mean layers (%+.1f %%) and %.4f for a coin sending the same share (%+.1f %%)",
                               share, row.prompts, row.meanBudget, 100 * row.fullShare, row.autoKL, row.fixedKL, 100 * row.gain, row.coinKL, 100 * row.gainOverCoin))
            shareNote = String(format: ", share rule %g (cross-validated on the training chat prompts: %+.1f %% against the fixed budget of the same mean layers, %+.1f %% against a coin)",
                               share, 100 * row.gain, 100 * row.gainOverCoin)
        }
        let tolerances = try o.tolerances.split(separator: ",").map { t -> Double in
            guard let v = Double(t), v > 0 else { throw ToolError.usage("--tolerances must be positive numbers") }
            return v
        }
        try toleranceReport(usable, grid: grid, lambda: fitted.lambda, tolerances: tolerances, routable: routable,
                            router: o.router, choiceRule: o.choiceRule, report: report)
        let chatSource = o.extraChatData == nil ? "\(chat.count) chat train-split" : "\(chat.count - extraCount) chat train-split, \(extraCount) chat requests from \(o.extraChatData!)"
        let notes = "buddy train predictor: \(usable.count) prompts (\(chatSource), rest WikiText-2 segments from the first \(o.textTokens) tokens), "
            + "continuations of \(o.maxReply) tokens, router \(o.router), stand-ins \(standInLabel), ridge lambda \(fitted.lambda) (validation MSE of log KL \(String(format: "%.4f", fitted.validationMSE))), "
            + "choices \(o.choiceRule.rawValue): \(fitted.predictor.choices.map { String(format: "%g", $0) }.joined(separator: ", ")) and full depth" + shareNote
        try RouterFile.save(fitted.predictor, model: model, notes: notes, to: o.out)
        report.line("wrote \(o.out) (\(notes))")
    }

    /// The predictor fitted on all of `curves` with the ridge strength among `lambdas` that
    /// predicts log KL best on a seeded validation split (`valFraction` of the curves, at least 2).
    /// Reports each lambda's errors, the mean-curve baseline's, and what --budget auto would choose
    /// on the validation curves at `tolerance`.
    public static func fit(_ curves: [BudgetCurve], grid: [Double], lambdas: [Double], valFraction: Double, tolerance: Double, router: String,
                           choiceRule: ChoiceRule = .grid, routable: Int = 0,
                           rng: inout SeededRNG, report: Reporter) throws -> (predictor: BudgetPredictor, lambda: Double, validationMSE: Double) {
        guard curves.count >= 10 else { throw ToolError("need at least 10 measured prompts, have \(curves.count)") }
        var order = Array(curves.indices)
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        let nVal = max(2, Int(Double(curves.count) * valFraction))
        let val = order.prefix(nVal).map { curves[$0] }, train = order.dropFirst(nVal).map { curves[$0] }
        let trainChoices = choiceRule.choices(for: train, grid: grid, routable: routable)
        var best: (lambda: Double, model: BudgetPredictor, val: Double)?
        for l in lambdas {
            let p = try BudgetPredictor.fit(features: train.map(\.features), logKL: train.map(logKL), budgets: grid, choices: trainChoices, lambda: l,
                                            router: router)
            let v = logError(p, val)
            report.note(String(format: "lambda %g: train MSE(log KL) %.4f, validation %.4f", l, logError(p, train), v))
            if best == nil || v < best!.val { best = (l, p, v) }
        }
        // A constant predictor (the mean curve) is the bar the regression must clear.
        let constant = try BudgetPredictor.fit(features: train.map(\.features), logKL: train.map(logKL), budgets: grid, choices: trainChoices,
                                               lambda: 1e12, router: router)
        report.note(String(format: "mean-curve baseline: validation MSE(log KL) %.4f", logError(constant, val)))

        // What --budget auto would do on the validation prompts at the report tolerance.
        func summary(_ p: BudgetPredictor, _ name: String) {
            let a = autoChoices(p, val, grid: grid, tolerance: tolerance)
            report.note(String(format: "%@: mean chosen budget %.3f (oracle %.3f), KL within %.3g on %d/%d validation prompts",
                               name, a.meanChosen, a.meanOracle, tolerance, a.met, val.count))
        }
        summary(best!.model, "predictor")
        summary(constant, "mean curve")
        let final = try BudgetPredictor.fit(features: curves.map(\.features), logKL: curves.map(logKL), budgets: grid,
                                            choices: choiceRule.choices(for: curves, grid: grid, routable: routable), lambda: best!.lambda, router: router)
        return (final, best!.lambda, best!.val)
    }

    /// How --budget auto does on the chat prompts among `curves` at one tolerance, against a
    /// fixed budget of the same mean compute (`toleranceComparison`).
    public struct ToleranceRow: Equatable, Sendable {
        public init(tolerance: Double, meanBudget: Double, chosen: [Double], autoKL: Double, fixedKL: Double, mixKL: Double? = nil) {
            self.tolerance = tolerance; self.meanBudget = meanBudget; self.chosen = chosen; self.autoKL = autoKL; self.fixedKL = fixedKL
            self.mixKL = mixKL ?? fixedKL
        }
        public var tolerance: Double
        public var meanBudget: Double      // auto's mean routable layers / routable
        public var chosen: [Double]        // the distinct budgets auto chose, ascending
        public var autoKL: Double          // mean measured KL at the chosen budgets
        public var fixedKL: Double         // the mean curve at auto's mean routable layers
        /// The best mix of fixed budgets that ignores the prompt, at the same mean layers (the
        /// mean curve's lower convex hull): a bar the fixed budget alone understates wherever
        /// the curve is not convex in compute (docs/TRAINING.md).
        public var mixKL: Double
        public var gain: Double { fixedKL > 0 ? (autoKL - fixedKL) / fixedKL : 0 }
        public var gainOverMix: Double { mixKL > 0 ? (autoKL - mixKL) / mixKL : 0 }
    }

    /// --budget auto on the chat prompts among `curves` at each tolerance, every prompt's choice
    /// made by a predictor fitted without it (5 folds by position, `lambda`). The fixed budget's
    /// KL is the same prompts' mean measured curve, interpolated linearly in routable layers at
    /// auto's mean (budget 1: no drift), as `buddy eval auto` does on held-out prompts. This is the
    /// evidence for `BudgetPredictor.defaultTolerance`, and it uses the training prompts only.
    public static func toleranceComparison(_ curves: [BudgetCurve], grid: [Double], lambda: Double, tolerances: [Double],
                                           routable: Int, router: String, choiceRule: ChoiceRule = .grid,
                                           scored: (String) -> Bool = isChat) throws -> [ToleranceRow] {
        let chat = curves.indices.filter { scored(curves[$0].id) }
        guard curves.count >= 2 * folds, !chat.isEmpty else { return [] }
        let predictors = try foldPredictors(curves, grid: grid, lambda: lambda, routable: routable, router: router, choiceRule: choiceRule)
        let fixed = meanCurve(curves, of: chat, grid: grid, routable: routable)
        return tolerances.map { t in
            var kSum = 0.0, klSum = 0.0, chosen = Set<Double>()
            for i in chat {
                let b = curves[i].features.withUnsafeBufferPointer { predictors[i % folds].choose($0.baseAddress!, tolerance: t) }
                chosen.insert(b)
                kSum += layers(b, routable: routable)
                klSum += b >= 1 ? 0 : curves[i].kl[grid.firstIndex(of: b)!]
            }
            let n = Double(chat.count)
            return ToleranceRow(tolerance: t, meanBudget: kSum / n / Double(routable), chosen: chosen.sorted(),
                                autoKL: klSum / n, fixedKL: interpolate(fixed, atLayers: kSum / n), mixKL: BudgetPredictor.bestMix(fixed, atLayers: kSum / n))
        }
    }

    /// Folds of the cross-validated rule comparisons (by position).
    static let folds = 5

    /// One predictor per fold, each fitted without the curves at positions ≡ fold (mod `folds`).
    static func foldPredictors(_ curves: [BudgetCurve], grid: [Double], lambda: Double, routable: Int, router: String,
                               choiceRule: ChoiceRule) throws -> [BudgetPredictor] {
        try (0..<folds).map { f in
            let train = curves.indices.filter { $0 % folds != f }.map { curves[$0] }
            return try BudgetPredictor.fit(features: train.map(\.features), logKL: train.map(logKL), budgets: grid,
                                           choices: choiceRule.choices(for: train, grid: grid, routable: routable), lambda: lambda, router: router)
        }
    }

    /// The routable layers a budget runs (all of them at full depth).
    static func layers(_ b: Double, routable: Int) -> Double { Double(LayerBudget.routableCount(budget: b, layers: routable + 2)) }

    /// The mean measured curve of the curves at `indices` as points (routable layers, KL), one
    /// per grid budget, and full depth at KL 0: the fixed budgets a rule is compared with.
    static func meanCurve(_ curves: [BudgetCurve], of indices: [Int], grid: [Double], routable: Int) -> [(k: Double, kl: Double)] {
        grid.indices.map { g in (k: layers(grid[g], routable: routable), kl: indices.reduce(0.0) { $0 + curves[$1].kl[g] } / Double(indices.count)) }
            + [(k: Double(routable), kl: 0)]
    }

    /// The fixed budget's KL at a mean of `k` routable layers: `points` interpolated linearly
    /// (k never exceeds the last point, full depth, so a bracket always exists).
    static func interpolate(_ points: [(k: Double, kl: Double)], atLayers k: Double) -> Double {
        guard let (lo, hi, w) = BudgetPredictor.bracket(points.map(\.k), at: k) else { return 0 }
        return points[lo].kl + w * (points[hi].kl - points[lo].kl)
    }

    /// The share rule on the training chat prompts, in their order: one `AutoBudget` walks them
    /// (its window seeded as `seed`'s), each prompt's prediction at the lowest choice made by a
    /// predictor fitted without it (5 folds by position). Against the fixed budget at the same
    /// mean routable layers (the chat prompts' mean curve, interpolated) and a coin sending the
    /// same share to full depth.
    public static func shareComparison(_ curves: [BudgetCurve], grid: [Double], lambda: Double, share: Double, seed: BudgetPredictor,
                                       routable: Int, router: String) throws
        -> (prompts: Int, meanBudget: Double, fullShare: Double, autoKL: Double, fixedKL: Double, coinKL: Double, gain: Double, gainOverCoin: Double) {
        let chat = curves.indices.filter { isChat(curves[$0].id) }
        guard curves.count >= 2 * folds, !chat.isEmpty else { throw ToolError("need at least \(2 * folds) curves and one chat prompt") }
        let low = seed.lowestChoiceIndex
        let predictors = try foldPredictors(curves, grid: grid, lambda: lambda, routable: routable, router: router, choiceRule: .grid)
        let chooser = try AutoBudget(predictor: seed, rule: .share(share))
        var kSum = 0.0, klSum = 0.0, lowSum = 0.0, full = 0
        for i in chat {
            let x = curves[i].features.withUnsafeBufferPointer { predictors[i % folds].predictKL($0.baseAddress!)[low] }
            let b = chooser.choose(predictedAtLowestChoice: x)
            kSum += layers(b, routable: routable)
            klSum += b >= 1 ? 0 : curves[i].kl[low]
            lowSum += curves[i].kl[low]
            if b >= 1 { full += 1 }
        }
        let n = Double(chat.count)
        let fixedKL = interpolate(meanCurve(curves, of: chat, grid: grid, routable: routable), atLayers: kSum / n)
        let fullShare = Double(full) / n, autoKL = klSum / n, coinKL = (1 - fullShare) * lowSum / n
        return (chat.count, kSum / n / Double(routable), fullShare, autoKL, fixedKL, coinKL,
                fixedKL > 0 ? autoKL / fixedKL - 1 : 0, coinKL > 0 ? autoKL / coinKL - 1 : 0)
    }

    /// A training chat prompt's curve: "chat-" and the prompt's id.
    public static func isChat(_ id: String) -> Bool { id.hasPrefix("chat-") }
    /// An MT-Bench question's curve: "chat-" and its numeric id (extra requests have named ids).
    public static func isMTBench(_ id: String) -> Bool { isChat(id) && id.dropFirst(5).allSatisfy(\.isNumber) && id.count > 5 }

    /// Prints `toleranceComparison` and returns `preferredTolerance` of its rows (over every
    /// training chat prompt; with extra chat requests, the MT-Bench questions alone follow).
    @discardableResult
    public static func toleranceReport(_ curves: [BudgetCurve], grid: [Double], lambda: Double, tolerances: [Double], routable: Int,
                                       router: String, choiceRule: ChoiceRule = .grid, report: Reporter) throws -> Double? {
        let rows = try toleranceComparison(curves, grid: grid, lambda: lambda, tolerances: tolerances, routable: routable, router: router,
                                           choiceRule: choiceRule)
        guard !rows.isEmpty else { return nil }
        func table(_ rows: [ToleranceRow], _ title: String) {
            report.line(title)
            report.line("| tolerance | mean budget | budgets chosen | auto KL | fixed KL, same mean layers | auto vs fixed | best prompt-blind mix | auto vs mix |")
            report.line("|---|---|---|---|---|---|---|---|")
            for r in rows {
                report.line(String(format: "| %g | %.3f | %@ | %.4f | %.4f | %+.1f %% | %.4f | %+.1f %% |", r.tolerance, r.meanBudget,
                                   r.chosen.map { String(format: "%g", $0) }.joined(separator: ", "), r.autoKL, r.fixedKL, 100 * r.gain,
                                   r.mixKL, 100 * r.gainOverMix))
            }
        }
        let chat = curves.filter { isChat($0.id) }.count, mtBench = curves.filter { isMTBench($0.id) }.count
        table(rows, "--budget auto on the \(chat) training chat prompts, each chosen by a predictor fitted without it (5 folds):")
        if mtBench > 0, mtBench < chat {
            table(try toleranceComparison(curves, grid: grid, lambda: lambda, tolerances: tolerances, routable: routable, router: router,
                                          choiceRule: choiceRule, scored: isMTBench),
                  "the same, on the \(mtBench) MT-Bench questions among them:")
        }
        guard let best = preferredTolerance(rows) else { return nil }
        report.line(String(format: "preferred tolerance on the training prompts: %g (%+.1f %% against fixed)", best.tolerance, 100 * best.gain))
        return best.tolerance
    }

    /// Gains closer than this (fraction of the fixed budget's KL) count as a tie.
    public static let toleranceTie = 0.005

    /// The tolerance to make the default. Candidates: the tolerances whose choices spread over
    /// more than one budget and whose mean chosen budget stays in the slider's recommended zone
    /// (`Budget.recommendedFloor`), since a default that runs the chat where the slider warns
    /// of damage would defeat the point of choosing automatically, and at or below `ceiling`
    /// (`Budget.automaticCeiling`), since one that runs nearly everything at full depth saves
    /// nothing; when none stays there, all spreading ones. Among them the largest gain against
    /// the fixed budget, ties (within `toleranceTie`) to the smallest tolerance, which keeps
    /// replies closer to the full model for the same advantage (nil when none spreads).
    public static func preferredTolerance(_ rows: [ToleranceRow], floor: Double = Budget.recommendedFloor,
                                          ceiling: Double = Budget.automaticCeiling) -> ToleranceRow? {
        let spreading = rows.filter { $0.chosen.count > 1 }
        let inZone = spreading.filter { Budget.isRecommended($0.meanBudget, floor: floor) && $0.meanBudget <= ceiling + 1e-9 }
        let candidates = inZone.isEmpty ? spreading : inZone
        guard let best = candidates.map(\.gain).min() else { return nil }
        return candidates.filter { $0.gain <= best + toleranceTie }.min { $0.tolerance < $1.tolerance }
    }

    /// The curve's KL as the predictor learns it: natural log, floored at 1e-6.
    public static func logKL(_ c: BudgetCurve) -> [Double] { c.kl.map { log(max($0, 1e-6)) } }

    /// Mean squared error of the predicted log KL over every curve and grid budget.
    public static func logError(_ p: BudgetPredictor, _ set: [BudgetCurve]) -> Double {
        var s = 0.0
        for c in set {
            let pred = c.features.withUnsafeBufferPointer { p.predictKL($0.baseAddress!) }
            for (a, b) in zip(pred.map { log($0) }, logKL(c)) { s += (a - b) * (a - b) }
        }
        return s / Double(set.count * p.budgets.count)
    }

    /// The budgets --budget auto would choose for `curves` at `tolerance`: their mean, the mean of
    /// the smallest grid budgets whose measured KL is within it (1 when none is), and on how many
    /// curves the chosen budget's KL was within it.
    public static func autoChoices(_ p: BudgetPredictor, _ curves: [BudgetCurve], grid: [Double], tolerance: Double) -> (meanChosen: Double, meanOracle: Double, met: Int) {
        var chosenSum = 0.0, oracleSum = 0.0, met = 0
        for c in curves {
            let b = c.features.withUnsafeBufferPointer { p.choose($0.baseAddress!, tolerance: tolerance) }
            let actual = b >= 1 ? 0 : c.kl[grid.firstIndex(of: b)!]
            if actual <= tolerance { met += 1 }
            chosenSum += b
            oracleSum += grid.indices.first { c.kl[$0] <= tolerance }.map { grid[$0] } ?? 1
        }
        return (chosenSum / Double(curves.count), oracleSum / Double(curves.count), met)
    }
}

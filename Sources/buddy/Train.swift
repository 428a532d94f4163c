import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train the Decision Module (default) or the Budget Predictor for this model.",
        subcommands: [TrainRouter.self, TrainSets.self, TrainGate.self, TrainSwitches.self, TrainSwap.self, TrainPredictor.self], defaultSubcommand: TrainRouter.self)
}

struct TrainRouter: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "router",
        abstract: "Train the Decision Module for this model and write a router file.",
        discussion: """
            Method (docs/TRAINING.md): per-token layer importances are measured by forward
            passes (KL from full depth when a single layer is skipped), a two-layer MLP learns
            to predict them from the routing context (pooled layer-0 K/V, the token's hidden
            state after layer 0, the budget), and the router scores layers as
              prior(best static ranking) + alpha × predicted importance.
            alpha is chosen on held-out chunks by routed perplexity over the budgets;
            alpha = 0 reproduces the static ranking exactly, so training cannot do worse
            than its prior on that data. Reproduce the shipped router with:
              buddy train --data ../shared/data/wikitext2_valid.txt --out routers/buddy-router.json
            """)

    @Option(name: .long, help: "Training text (WikiText-2 validation file).")
    var data: String
    @Option(name: .long, help: "Where to write the router (written atomically).")
    var out: String
    @Option(name: .long, help: "Static ranking used as the prior: sleb, shortgpt, last or a ranking file.")
    var prior: String = "sleb"
    @Option(name: .long, help: "Training chunks of --chunk tokens from the start of --data.")
    var trainChunks: Int = 12
    @Option(name: .long, help: "Tokens per training chunk.")
    var chunk: Int = 256
    @Option(name: .long, help: "Held-out 512-token chunks (after the training text) for choosing alpha.")
    var valChunks: Int = 3
    @Option(name: .long, help: "Budgets alpha is chosen over.")
    var budgets: String = "0.5,0.6,0.7,0.8,0.9,0.95"
    @Option(name: .long, help: "Candidate alphas (scale of the learned part relative to the prior).")
    var alphas: String = "0,0.01,0.02,0.04,0.08"
    @Option(name: .long, help: "Hidden units of the Decision Module.")
    var hidden: Int = 32
    @Option(name: .long, help: "Training epochs over the collected examples (the epoch with the lowest validation error is kept).")
    var epochs: Int = 30
    @Option(name: .long, help: "L2 weight decay of the MLP.")
    var weightDecay: Float = 1e-3
    @Option(name: .long, help: "Random seed.")
    var seed: UInt64 = 0
    @Option(name: .long, help: "Measured examples are saved here after every chunk and reused by a rerun (default: <out>.checkpoint; removed when training finishes).")
    var checkpoint: String?
    @OptionGroup var modelOptions: ModelOptions

    func run() throws {
        guard var text = try? String(contentsOfFile: data, encoding: .utf8) else { throw CLIError("cannot read data file '\(data)'") }
        if text.hasSuffix("\n") { text.removeLast() }
        let model = try modelOptions.load()
        let c = model.config
        let priorRanking: StaticRanking
        do {
            guard let p = try Routers.make(prior, model: model) as? StaticRanking else { throw CLIError("--prior must name a static ranking") }
            priorRanking = p
        } catch let e as CLIError { throw e } catch { throw CLIError("prior '\(prior)': \(error)") }
        let ids = model.tokenizer.encode(text, parseSpecial: false)
        let trainTokens = trainChunks * chunk
        let valStart = (trainTokens + 511) / 512
        guard ids.count >= (valStart + valChunks) * 512 else { throw CLIError("not enough text for \(trainChunks) training and \(valChunks) validation chunks") }
        let t0 = Date()

        // 1. Measure per-token layer importances, checkpointed after every chunk so an
        //    interrupted run resumes where it stopped.
        let trainer = RouterTrainer(model: model, chunkSize: chunk, threads: modelOptions.threads)
        let checkpointPath = checkpoint ?? out + ".checkpoint"
        var ex = RoutingExamples()
        var firstChunk = 0
        if let saved = ExampleCheckpoint.load(checkpointPath, fingerprint: model.fingerprint, chunk: chunk), saved.chunksDone <= trainChunks {
            ex = saved.examples
            firstChunk = saved.chunksDone
            Out.err("resuming from \(checkpointPath): \(firstChunk) chunks already measured")
        }
        let bar = ProgressBar("measuring", total: trainChunks)
        for i in firstChunk..<trainChunks {
            trainer.collect(chunk: ids[(i * chunk)..<((i + 1) * chunk)], firstScored: chunk / 4, into: &ex)
            try ExampleCheckpoint.save(ex, chunksDone: i + 1, fingerprint: model.fingerprint, chunk: chunk, to: checkpointPath)
            bar.update(i + 1, detail: "\(ex.count) examples")
        }

        // 2. Normalise inputs (with random budgets appended) and standardise targets per layer.
        var rng = SeededRNG(seed: seed)
        let base = 2 * c.kvDim + c.dim, inDim = base + BudgetEncoding.count
        var inputs = ex.inputs.map { x -> [Float] in
            var v = x + [Float](repeating: 0, count: BudgetEncoding.count)
            let b = 0.3 + 0.65 * Double(rng.nextUnitFloat())
            v.withUnsafeMutableBufferPointer { BudgetEncoding.write(b, into: $0.baseAddress! + base) }
            return v
        }
        var mean = [Float](repeating: 0, count: inDim), scale = [Float](repeating: 1, count: inDim)
        for d in 0..<inDim {
            let (mu, sd) = columnStatistics(inputs, d)
            mean[d] = Float(mu)
            scale[d] = sd > 1e-8 ? Float(1 / sd) : 1
        }
        inputs = inputs.map { x in (0..<inDim).map { (x[$0] - mean[$0]) * scale[$0] } }
        let R = c.layers - 2
        var targets = ex.targets
        for l in 0..<R {
            let (mu, sd) = columnStatistics(targets, l)
            let inv = 1 / max(1e-6, sd)
            for i in targets.indices { targets[i][l] = Float((Double(targets[i][l]) - mu) * inv) }
        }
        // Hold out whole chunks (the last tenth of the examples) for validation.
        let split = ex.count * 9 / 10
        let (trX, trY) = (Array(inputs[..<split]), Array(targets[..<split]))
        let (vaX, vaY) = (Array(inputs[split...]), Array(targets[split...]))

        // 3. Fit the MLP.
        var mlp = MLPTrainer(inputDim: inDim, hidden: hidden, outputs: R, seed: seed)
        mlp.weightDecay = weightDecay
        let batchSize = 32
        let steps = epochs * ((trX.count + batchSize - 1) / batchSize)
        let fitBar = ProgressBar("training", total: steps)
        var order = Array(trX.indices)
        var step = 0
        var lastLoss: Float = 0
        print(String(format: "examples: %d train, %d validation; initial MSE train %.4f, validation %.4f (predicting the mean gives 1.0)",
                     trX.count, vaX.count, mlp.meanSquaredError(trX, trY), mlp.meanSquaredError(vaX, vaY)))
        // Early stopping: keep the weights of the epoch with the lowest validation error.
        var best = (epoch: 0, mse: mlp.meanSquaredError(vaX, vaY), model: mlp)
        for epoch in 0..<epochs {
            order.shuffle(using: &rng)
            for s in stride(from: 0, to: order.count, by: batchSize) {
                let idx = order[s..<min(order.count, s + batchSize)]
                lastLoss = mlp.train(batch: idx.map { trX[$0] }, idx.map { trY[$0] })
                step += 1
                fitBar.update(step, detail: String(format: "epoch %d loss %.4f", epoch + 1, lastLoss))
            }
            let v = mlp.meanSquaredError(vaX, vaY)
            if v < best.mse { best = (epoch + 1, v, mlp) }
        }
        mlp = best.model
        let trainMSE = mlp.meanSquaredError(trX, trY), valMSE = mlp.meanSquaredError(vaX, vaY)
        print(String(format: "kept epoch %d of %d: MSE train %.4f, validation %.4f", best.epoch, epochs, trainMSE, valMSE))

        // 4. Choose alpha on held-out text by routed perplexity.
        let budgetList = try parseBudgets(budgets)
        let alphaList = alphas.split(separator: ",").compactMap { Float($0.trimmingCharacters(in: .whitespaces)) }
        guard !alphaList.isEmpty, alphaList.contains(0) else { throw CLIError("--alphas must include 0 (the prior alone)") }
        let priorModule = try DecisionModule(prior: priorRanking, dim: c.dim, kvDim: c.kvDim, hidden: hidden)
        func module(alpha: Float) throws -> DecisionModule {
            try DecisionModule(name: "buddy", layers: c.layers, dim: c.dim, kvDim: c.kvDim, hidden: hidden, weights: .init(
                inputMean: mean, inputScale: scale, w1: mlp.w1, b1: mlp.b1,
                w2: mlp.w2.map { $0 * alpha }, b2: mlp.b2.map { $0 * alpha },
                prior: priorModule.weights.prior, priorWeight: 1))
        }
        let evaluator = PerplexityEvaluator(model: model, contextSize: 512, threads: modelOptions.threads)
        let valBar = ProgressBar("choosing alpha", total: alphaList.count * budgetList.count)
        var table: [Float: [Double]] = [:]
        for (ai, a) in alphaList.enumerated() {
            let m = try module(alpha: a)
            var logs: [Double] = []
            for (bi, b) in budgetList.enumerated() {
                m.budget = b
                let r = evaluator.evaluate(tokens: ids, maxChunks: valChunks, firstChunk: valStart, selector: m, policy: .mask)
                logs.append(log(r.perplexity))
                valBar.update(ai * budgetList.count + bi + 1, detail: String(format: "alpha %.3f budget %.2f ppl %.2f", a, b, r.perplexity))
            }
            table[a] = logs
        }
        print("held-out perplexity (chunks \(valStart)..<\(valStart + valChunks) of 512):")
        print("| alpha | " + budgetList.map { String(format: "%.2f", $0) }.joined(separator: " | ") + " |")
        print("|---|" + String(repeating: "---|", count: budgetList.count))
        for a in alphaList { print(String(format: "| %.3f | ", a) + table[a]!.map { String(format: "%.2f", exp($0)) }.joined(separator: " | ") + " |") }
        let bestAlpha = alphaList.min { table[$0]!.reduce(0, +) < table[$1]!.reduce(0, +) }!
        print(String(format: "chosen alpha %.3f (%@)", bestAlpha, bestAlpha == 0 ? "the learned part did not help on held-out text: the router equals its prior" : "mean log-perplexity below the prior's"))

        let final = try module(alpha: bestAlpha)
        let notes = String(format: "buddy train --prior %@ --train-chunks %d --chunk %d --val-chunks %d --hidden %d --epochs %d --weight-decay %g --seed %llu; alpha %.3f; MSE train %.4f val %.4f; %.0f s",
                           prior, trainChunks, chunk, valChunks, hidden, epochs, Double(weightDecay), seed, bestAlpha, trainMSE, valMSE, Date().timeIntervalSince(t0))
        try RouterFile.save(final, model: model, notes: notes, to: out)
        try? FileManager.default.removeItem(atPath: checkpointPath)
        print("written to \(out)")
    }
}

/// The measured training examples of `buddy train router`, saved after every chunk
/// (binary: magic, JSON header line, then Float32 little-endian inputs and targets).
enum ExampleCheckpoint {
    static let magic = "BUDDY-EXAMPLES-1\n"

    static func save(_ ex: RoutingExamples, chunksDone: Int, fingerprint: String, chunk: Int, to path: String) throws {
        let inDim = ex.inputs.first?.count ?? 0, outDim = ex.targets.first?.count ?? 0
        let header: [String: Any] = ["fingerprint": fingerprint, "chunk": chunk, "chunks_done": chunksDone, "count": ex.count, "input_dim": inDim, "target_dim": outDim]
        var data = Data(magic.utf8)
        data.append(try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        data.append(0x0A)
        for row in ex.inputs { row.withUnsafeBytes { data.append(contentsOf: $0) } }
        for row in ex.targets { row.withUnsafeBytes { data.append(contentsOf: $0) } }
        try AtomicFile.write(data, to: path)
    }

    /// The checkpoint when it exists, is intact and was made the same way; else nil.
    static func load(_ path: String, fingerprint: String, chunk: Int) -> (examples: RoutingExamples, chunksDone: Int)? {
        guard let data = FileManager.default.contents(atPath: path), data.starts(with: Data(magic.utf8)) else { return nil }
        let rest = data.dropFirst(magic.utf8.count)
        guard let nl = rest.firstIndex(of: 0x0A),
              let h = try? JSONSerialization.jsonObject(with: rest[rest.startIndex..<nl]) as? [String: Any],
              h["fingerprint"] as? String == fingerprint, h["chunk"] as? Int == chunk,
              let done = h["chunks_done"] as? Int, let n = h["count"] as? Int, let di = h["input_dim"] as? Int, let dt = h["target_dim"] as? Int,
              n >= 0, di >= 0, dt >= 0, n <= 10_000_000, di <= 100_000, dt <= 10_000 else { return nil }
        let body = rest[(nl + 1)...]
        guard body.count == n * (di + dt) * 4 else { return nil }
        var floats = [Float](repeating: 0, count: n * (di + dt))
        _ = floats.withUnsafeMutableBytes { body.copyBytes(to: $0) }
        var ex = RoutingExamples()
        for i in 0..<n { ex.inputs.append(Array(floats[(i * di)..<((i + 1) * di)])) }
        let t0 = n * di
        for i in 0..<n { ex.targets.append(Array(floats[(t0 + i * dt)..<(t0 + (i + 1) * dt)])) }
        return (ex, done)
    }
}

struct TrainPredictor: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predictor",
        abstract: "Fit the Budget Predictor (used by --budget auto) from measured per-prompt quality curves.",
        discussion: """
            For each training prompt (the train half of the chat prompts, plus WikiText-2
            segments from before the evaluation text) the full model's greedy continuation is
            teacher-forced through the router at every grid budget and the mean KL per token is
            recorded. Curves are saved after every prompt to --curves, so an interrupted run
            resumes where it stopped. A ridge regression then predicts log KL at each budget
            from the prompt's routing context; `--budget auto` runs the smallest budget whose
            predicted KL is under --quality-tolerance. Reproduce the shipped predictor with:
              buddy train predictor --chat-data ../shared/data/mt_bench_questions.jsonl \\
                --text-data ../shared/data/wikitext2_valid.txt --out routers/budget-predictor.json
            """)

    @Option(name: .long, help: "Chat prompts (MT-Bench JSON lines); the train split (even positions) is used.")
    var chatData: String
    @Option(name: .long, help: "Text for extra prompts (WikiText-2); segments come from its first --text-tokens tokens.")
    var textData: String
    @Option(name: .long, help: "Number of text segments used as prompts.")
    var textPrompts: Int = 120
    @Option(name: .long, help: "Text segments are drawn from the first N tokens (evaluation skips the first 20 chunks of 512 = 10,240).")
    var textTokens: Int = 10_240
    @Option(name: .long, help: "Reference continuation length in tokens.")
    var maxReply: Int = 48
    @Option(name: .long, help: "Budget grid the predictor chooses from.")
    var budgets: String = "0.5,0.6,0.7,0.75,0.8,0.85,0.9,0.95"
    @Option(name: .long, help: "Router whose quality curves are measured.")
    var router: String = "buddy"
    @Option(name: .long, help: "Stand-ins the curves are measured with: on (the model's), off, or a file. Default: on when the model has stand-ins.")
    var standIns: StandInChoice = .auto
    @Option(name: .long, help: "Where to write the predictor (written atomically).")
    var out: String
    @Option(name: .long, help: "Measured curves, saved after each prompt and reused on the next run (default: <out>.curves.json).")
    var curves: String?
    @Option(name: .long, help: "Ridge strengths tried; the one with the lowest validation error is kept.")
    var lambdas: String = "0.01,0.1,1,10"
    @Option(name: .long, help: "Share of prompts held out for validation.")
    var valFraction: Double = 0.2
    @Option(name: .long, help: "Tolerance (mean KL per token) the validation report uses.")
    var qualityTolerance: Double = BudgetPredictor.defaultTolerance
    @Option(name: .long, help: "Random seed (segments and the validation split).")
    var seed: UInt64 = 0
    @OptionGroup var modelOptions: ModelOptions

    func validate() throws {
        let grid = try parseBudgets(budgets)
        guard grid.allSatisfy({ $0 < 1 }), Set(grid).count == grid.count else { throw ValidationError("--budgets must be distinct values below 1") }
        guard textPrompts >= 0, maxReply >= 1, maxReply <= 512 else { throw ValidationError("--text-prompts must be >= 0 and --max-reply 1...512") }
        guard valFraction > 0, valFraction < 1 else { throw ValidationError("--val-fraction must be in (0, 1)") }
        guard qualityTolerance > 0 else { throw ValidationError("--quality-tolerance must be positive") }
        try modelOptions.validateThreads()
    }

    struct CurveFile: Codable {
        var modelFingerprint: String
        var router: String
        var budgets: [Double]
        var maxReply: Int
        /// "on"/"off" (nil in files from before stand-ins: measured without them).
        var standIns: String?
        var curves: [BudgetCurve]
    }

    func run() throws {
        let grid = try parseBudgets(budgets).sorted()
        let lambdaList = lambdas.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard !lambdaList.isEmpty, lambdaList.allSatisfy({ $0 > 0 }) else { throw CLIError("--lambdas must be positive numbers") }
        guard let chatText = try? String(contentsOfFile: chatData, encoding: .utf8) else { throw CLIError("cannot read '\(chatData)'") }
        guard var text = try? String(contentsOfFile: textData, encoding: .utf8) else { throw CLIError("cannot read '\(textData)'") }
        if text.hasSuffix("\n") { text.removeLast() }
        let model = try modelOptions.load()
        let chat: [ChatPrompt]
        do { chat = try ChatPromptSet.parse(chatText, split: .train) } catch { throw CLIError("\(chatData): \(error)") }
        let session = Session(model: model, capacity: 1024, threads: modelOptions.threads, batchSize: 256)
        session.standIns = try standIns.resolve(model: model)
        let standInLabel = session.standIns == nil ? "off" : "on"
        let evaluator = ChatEvaluator(session: session)

        // The prompts, in a fixed order: chat first, then seeded text segments.
        var prompts: [(id: String, ids: [Int32])] = chat.map { ("chat-\($0.id)", evaluator.promptTokens($0.text)) }
        var ids = model.tokenizer.encode(text, parseSpecial: false)
        ids = Array(ids.prefix(textTokens))
        var rng = SeededRNG(seed: seed)
        if textPrompts > 0 {
            guard ids.count > 512 else { throw CLIError("'\(textData)' is too short for text prompts") }
            for i in 0..<textPrompts {
                let len = 32 + Int(rng.next() % 353)
                let start = Int(rng.next() % UInt64(ids.count - len))
                var p = Array(ids[start..<(start + len)])
                if model.tokenizer.addBOS, let bos = model.tokenizer.bosID { p.insert(bos, at: 0) }
                prompts.append(("text-\(i)-\(start)", p))
            }
        }

        // Resume from saved curves when they were measured the same way.
        let curvePath = curves ?? out + ".curves.json"
        var file = CurveFile(modelFingerprint: model.fingerprint, router: router, budgets: grid, maxReply: maxReply, standIns: standInLabel, curves: [])
        let dec = JSONDecoder(); dec.keyDecodingStrategy = .convertFromSnakeCase
        if let data = FileManager.default.contents(atPath: curvePath) {
            if let saved = try? dec.decode(CurveFile.self, from: data), saved.modelFingerprint == model.fingerprint,
               saved.router == router, saved.budgets == grid, saved.maxReply == maxReply, (saved.standIns ?? "off") == standInLabel {
                file.curves = saved.curves
                Out.err("resuming: \(saved.curves.count) curves already measured in \(curvePath)")
            } else {
                Out.err("warning: \(curvePath) was measured differently (or is unreadable); it will be replaced")
            }
        }
        let enc = JSONEncoder(); enc.keyEncodingStrategy = .convertToSnakeCase
        let meter = BudgetCurveMeter(evaluator: evaluator, budgets: grid) { b in
            do { return try Routers.make(router, model: model, budget: b) } catch { throw CLIError("router '\(router)': \(error)") }
        }
        let done = Set(file.curves.map(\.id))
        let bar = ProgressBar("measuring curves", total: prompts.count)
        for (i, p) in prompts.enumerated() {
            if !done.contains(p.id) {
                file.curves.append(try meter.measure(id: p.id, prompt: p.ids, maxReply: maxReply))
                try AtomicFile.write(try enc.encode(file), to: curvePath)
            }
            let c = file.curves.last!
            bar.update(i + 1, detail: "\(p.id): KL@\(grid[0]) \(String(format: "%.3f", c.kl[0])), @\(grid.last!) \(String(format: "%.3f", c.kl.last!))")
        }

        // Fit on a seeded train/validation split, choose lambda, report, then refit on all.
        let usable = file.curves.filter { c in prompts.contains { $0.id == c.id } }
        guard usable.count >= 10 else { throw CLIError("need at least 10 measured prompts, have \(usable.count)") }
        var order = Array(usable.indices)
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        let nVal = max(2, Int(Double(usable.count) * valFraction))
        let val = order.prefix(nVal).map { usable[$0] }, train = order.dropFirst(nVal).map { usable[$0] }
        func logKL(_ c: BudgetCurve) -> [Double] { c.kl.map { log(max($0, 1e-6)) } }
        func mse(_ p: BudgetPredictor, _ set: [BudgetCurve]) -> Double {
            var s = 0.0
            for c in set {
                let pred = c.features.withUnsafeBufferPointer { p.predictKL($0.baseAddress!) }
                for (a, b) in zip(pred.map { log($0) }, logKL(c)) { s += (a - b) * (a - b) }
            }
            return s / Double(set.count * grid.count)
        }
        var best: (lambda: Double, model: BudgetPredictor, val: Double)?
        for l in lambdaList {
            let p = try BudgetPredictor.fit(features: train.map(\.features), logKL: train.map(logKL), budgets: grid, lambda: l, router: router)
            let v = mse(p, val)
            Out.err(String(format: "lambda %g: train MSE(log KL) %.4f, validation %.4f", l, mse(p, train), v))
            if best == nil || v < best!.val { best = (l, p, v) }
        }
        // A constant predictor (the mean curve) is the bar the regression must clear.
        let constant = try BudgetPredictor.fit(features: train.map(\.features), logKL: train.map(logKL), budgets: grid, lambda: 1e12, router: router)
        Out.err(String(format: "mean-curve baseline: validation MSE(log KL) %.4f", mse(constant, val)))

        // What --budget auto would do on the validation prompts at the report tolerance.
        func report(_ p: BudgetPredictor, _ name: String) {
            var chosenSum = 0.0, oracleSum = 0.0, met = 0
            for c in val {
                let b = c.features.withUnsafeBufferPointer { p.choose($0.baseAddress!, tolerance: qualityTolerance) }
                let actual = b >= 1 ? 0 : c.kl[grid.firstIndex(of: b)!]
                if actual <= qualityTolerance { met += 1 }
                chosenSum += b
                oracleSum += grid.indices.first { c.kl[$0] <= qualityTolerance }.map { grid[$0] } ?? 1
            }
            Out.err(String(format: "%@: mean chosen budget %.3f (oracle %.3f), KL within %.3g on %d/%d validation prompts",
                           name, chosenSum / Double(val.count), oracleSum / Double(val.count), qualityTolerance, met, val.count))
        }
        report(best!.model, "predictor")
        report(constant, "mean curve")
        let final = try BudgetPredictor.fit(features: usable.map(\.features), logKL: usable.map(logKL), budgets: grid, lambda: best!.lambda, router: router)
        let notes = "buddy train predictor: \(usable.count) prompts (\(chat.count) chat train-split, rest WikiText-2 segments from the first \(textTokens) tokens), "
            + "continuations of \(maxReply) tokens, router \(router), stand-ins \(standInLabel), ridge lambda \(best!.lambda) (validation MSE of log KL \(String(format: "%.4f", best!.val)))"
        try RouterFile.save(final, model: model, notes: notes, to: out)
        print("wrote \(out) (\(notes))")
    }
}

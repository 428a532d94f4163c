import BuddyCore
import BuddyRouting
import Foundation

/// `buddy train router`: measure per-token layer importances, fit the Decision Module's MLP
/// and choose alpha on held-out text (docs/TRAINING.md).
public enum RouterTraining {
    public struct Options {
        public var data: String
        public var out: String
        public var prior: String = "sleb"
        public var trainChunks: Int = 12
        public var chunk: Int = 256
        public var valChunks: Int = 3
        public var budgets: String = "0.5,0.6,0.7,0.8,0.9,0.95"
        public var alphas: String = "0,0.01,0.02,0.04,0.08"
        public var hidden: Int = 32
        public var epochs: Int = 30
        public var weightDecay: Float = 1e-3
        public var seed: UInt64 = 0
        public var checkpoint: String?
        public var threads: Int = 2
        public init(data: String, out: String, prior: String = "sleb", trainChunks: Int = 12, chunk: Int = 256, valChunks: Int = 3, budgets: String = "0.5,0.6,0.7,0.8,0.9,0.95", alphas: String = "0,0.01,0.02,0.04,0.08", hidden: Int = 32, epochs: Int = 30, weightDecay: Float = 1e-3, seed: UInt64 = 0, checkpoint: String? = nil, threads: Int = 2) {
            self.data = data
            self.out = out
            self.prior = prior
            self.trainChunks = trainChunks
            self.chunk = chunk
            self.valChunks = valChunks
            self.budgets = budgets
            self.alphas = alphas
            self.hidden = hidden
            self.epochs = epochs
            self.weightDecay = weightDecay
            self.seed = seed
            self.checkpoint = checkpoint
            self.threads = threads
        }
    }

    /// Trains and writes the router to `options.out`; `model` is loaded once the text has been read.
    public static func run(_ o: Options, model loadModel: () throws -> LanguageModel, report: Reporter) throws {
        guard var text = try? String(contentsOfFile: o.data, encoding: .utf8) else { throw ToolError("cannot read data file '\(o.data)'") }
        if text.hasSuffix("\n") { text.removeLast() }
        let model = try loadModel()
        let c = model.config
        let priorRanking: StaticRanking
        do {
            guard let p = try Routers.make(o.prior, model: model) as? StaticRanking else { throw ToolError("--prior must name a static ranking") }
            priorRanking = p
        } catch let e as ToolError { throw e } catch { throw ToolError("prior '\(o.prior)': \(error)") }
        let ids = model.tokenizer.encode(text, parseSpecial: false)
        let (trainChunks, chunk, valChunks, hidden, epochs, seed) = (o.trainChunks, o.chunk, o.valChunks, o.hidden, o.epochs, o.seed)
        let trainTokens = trainChunks * chunk
        let valStart = (trainTokens + 511) / 512
        guard ids.count >= (valStart + valChunks) * 512 else { throw ToolError("not enough text for \(trainChunks) training and \(valChunks) validation chunks") }
        let t0 = Date()

        // 1. Measure per-token layer importances, checkpointed after every chunk so an
        //    interrupted run resumes where it stopped.
        let trainer = RouterTrainer(model: model, chunkSize: chunk, threads: o.threads)
        let checkpointPath = o.checkpoint ?? o.out + ".checkpoint"
        var ex = RoutingExamples()
        var firstChunk = 0
        if let saved = ExampleCheckpoint.load(checkpointPath, fingerprint: model.fingerprint, chunk: chunk), saved.chunksDone <= trainChunks {
            ex = saved.examples
            firstChunk = saved.chunksDone
            report.note("resuming from \(checkpointPath): \(firstChunk) chunks already measured")
        }
        let bar = report.progress("measuring", trainChunks)
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
        mlp.weightDecay = o.weightDecay
        let batchSize = 32
        let steps = epochs * ((trX.count + batchSize - 1) / batchSize)
        let fitBar = report.progress("training", steps)
        var order = Array(trX.indices)
        var step = 0
        var lastLoss: Float = 0
        report.line(String(format: "examples: %d train, %d validation; initial MSE train %.4f, validation %.4f (predicting the mean gives 1.0)",
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
        report.line(String(format: "kept epoch %d of %d: MSE train %.4f, validation %.4f", best.epoch, epochs, trainMSE, valMSE))

        // 4. Choose alpha on held-out text by routed perplexity.
        let budgetList = try parseBudgets(o.budgets)
        let alphaList = o.alphas.split(separator: ",").compactMap { Float($0.trimmingCharacters(in: .whitespaces)) }
        guard !alphaList.isEmpty, alphaList.contains(0) else { throw ToolError("--alphas must include 0 (the prior alone)") }
        let priorModule = try DecisionModule(prior: priorRanking, dim: c.dim, kvDim: c.kvDim, hidden: hidden)
        func module(alpha: Float) throws -> DecisionModule {
            try DecisionModule(name: "buddy", layers: c.layers, dim: c.dim, kvDim: c.kvDim, hidden: hidden, weights: .init(
                inputMean: mean, inputScale: scale, w1: mlp.w1, b1: mlp.b1,
                w2: mlp.w2.map { $0 * alpha }, b2: mlp.b2.map { $0 * alpha },
                prior: priorModule.weights.prior, priorWeight: 1))
        }
        let evaluator = PerplexityEvaluator(model: model, contextSize: 512, threads: o.threads)
        let valBar = report.progress("choosing alpha", alphaList.count * budgetList.count)
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
        report.line("held-out perplexity (chunks \(valStart)..<\(valStart + valChunks) of 512):")
        report.line("| alpha | " + budgetList.map { String(format: "%.2f", $0) }.joined(separator: " | ") + " |")
        report.line("|---|" + String(repeating: "---|", count: budgetList.count))
        for a in alphaList { report.line(String(format: "| %.3f | ", a) + table[a]!.map { String(format: "%.2f", exp($0)) }.joined(separator: " | ") + " |") }
        let bestAlpha = alphaList.min { table[$0]!.reduce(0, +) < table[$1]!.reduce(0, +) }!
        report.line(String(format: "chosen alpha %.3f (%@)", bestAlpha, bestAlpha == 0 ? "the learned part did not help on held-out text: the router equals its prior" : "mean log-perplexity below the prior's"))

        let final = try module(alpha: bestAlpha)
        let notes = String(format: "buddy train --prior %@ --train-chunks %d --chunk %d --val-chunks %d --hidden %d --epochs %d --weight-decay %g --seed %llu; alpha %.3f; MSE train %.4f val %.4f; %.0f s",
                           o.prior, trainChunks, chunk, valChunks, hidden, epochs, Double(o.weightDecay), seed, bestAlpha, trainMSE, valMSE, Date().timeIntervalSince(t0))
        try RouterFile.save(final, model: model, notes: notes, to: o.out)
        try? FileManager.default.removeItem(atPath: checkpointPath)
        report.line("written to \(o.out)")
    }
}

/// The measured training examples of `buddy train router`, saved after every chunk
/// (binary: magic, JSON header line, then Float32 little-endian inputs and targets).
public enum ExampleCheckpoint {
    public static let magic = "BUDDY-EXAMPLES-1\n"

    public static func save(_ ex: RoutingExamples, chunksDone: Int, fingerprint: String, chunk: Int, to path: String) throws {
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
    public static func load(_ path: String, fingerprint: String, chunk: Int) -> (examples: RoutingExamples, chunksDone: Int)? {
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

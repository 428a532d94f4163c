import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
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

        // 1. Measure per-token layer importances.
        let trainer = RouterTrainer(model: model, chunkSize: chunk, threads: modelOptions.threads)
        var ex = RoutingExamples()
        let bar = ProgressBar("measuring", total: trainChunks)
        for i in 0..<trainChunks {
            trainer.collect(chunk: ids[(i * chunk)..<((i + 1) * chunk)], firstScored: chunk / 4, into: &ex)
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
        print("written to \(out)")
    }
}

import BuddyCore
import BuddyRouting
import Foundation

/// The last step of `buddy train reply-sets` with --text-data: a set searched on chat replies
/// may serve prose worse than the module's own set at that k. So the module's choice at k
/// becomes whichever does best on validation prose and chat pooled per position: its own set,
/// the reply set, or both with a pair scorer (`SetChoiceFit`) that decides per token from the
/// routing context, as `buddy train router`'s scorers do. The input normalisation is the
/// module's own, shared by every k.
public enum ReplySetPair {
    public struct Data: Sendable {
        public var text: String
        public var textChunks = 8
        public var textFirstScored = 128
        public var validationSkipChunks = 12
        public var validationChunks = 8
        /// Chat prompts of the search's split used for validation, after the searched ones.
        public var validationPrompts = 60
        public var l2: [Float] = [0.0001, 0.001, 0.01, 0.1]
        public var balance: Float = 1
        public var minGain = 0.005
        public init(text: String) { self.text = text }

        var commandLine: String {
            "--text-data \(text) --text-chunks \(textChunks) --validation-skip-chunks \(validationSkipChunks) --validation-chunks \(validationChunks)"
                + " --validation-prompts \(validationPrompts)"
        }
    }

    public struct Outcome: Sendable {
        /// Validation KL (prose and chat positions pooled) of the module's set, the reply set and the pair.
        public var own: Double, reply: Double, pair: Double
        public var choice: DecisionModule.Choice
        public var shipped: String
    }

    /// The choice at k (`own` the module's set, `reply` the searched one) that does best on validation.
    public static func choose(module: DecisionModule, k: Int, own: [Int], reply: [Int], data: Data, chat: PromptSetSearch.Options,
                              model: LanguageModel, standIns: StandIns?, report: Reporter) throws -> Outcome {
        let L = model.config.layers, routable = L - 2
        let ids = try TrainingData.textTokens(data.text, model: model)
        let textTrain = try TrainingData.textSequences(ids, chunks: 0..<data.textChunks, length: 512, firstScored: data.textFirstScored, path: data.text)
        let textValidation = try TrainingData.textSequences(ids, chunks: data.validationSkipChunks..<(data.validationSkipChunks + data.validationChunks),
                                                            length: 512, firstScored: 256, path: data.text)
        let chatTrain = try TrainingData.chatSequences(model: model, path: chat.chatData, split: chat.split, prompts: 0..<chat.prompts,
                                                       replyTokens: chat.replyTokens, threads: chat.threads, report: report)
        let chatValidation = try TrainingData.chatSequences(model: model, path: chat.chatData, split: chat.split,
                                                            prompts: chat.prompts..<(chat.prompts + data.validationPrompts),
                                                            replyTokens: chat.replyTokens, threads: chat.threads, report: report)
        let train = TrainingData.search(model: model, sequences: textTrain + chatTrain, threads: chat.threads, label: "pair training data", report: report)
        let validation = TrainingData.search(model: model, sequences: textValidation + chatValidation, threads: chat.threads, label: "pair validation data", report: report)
        train.standIns = standIns
        validation.standIns = standIns
        report.line("pair data: \(textTrain.count) text + \(chatTrain.count) chat sequences, \(train.scoredCount) positions; validation \(textValidation.count) + \(chatValidation.count), \(validation.scoredCount) positions")
        let sets = [own, reply]
        let bar = report.progress("per-position KL of both sets", 4)
        var trainCosts: [[Double]] = [], validationCosts: [[Double]] = []
        for (i, set) in sets.enumerated() {
            let mask = LayerBudget.mask(layers: L, chosen: Set(set))
            trainCosts.append(train.positionKL(mask)); bar.update(2 * i + 1, detail: "")
            validationCosts.append(validation.positionKL(mask)); bar.update(2 * i + 2, detail: "")
        }
        let (mean, scale) = (module.weights.inputMean, module.weights.inputScale)
        func normalised(_ rows: [[Float]]) -> [[Float]] { rows.map { x in x.indices.map { (x[$0] - mean[$0]) * scale[$0] } } }
        let zTrain = normalised(train.routingInputs()), zValidation = normalised(validation.routingInputs())
        func perPosition(_ c: [[Double]]) -> [[Double]] { (0..<c[0].count).map { t in c.map { $0[t] } } }
        let trainMatrix = perPosition(trainCosts), validationMatrix = perPosition(validationCosts)
        var best: (scorer: SetChoiceFit.Scorer, cost: Double, l2: Float)?
        for l2 in data.l2 {
            let scorer = SetChoiceFit.fit(inputs: zTrain, costs: trainMatrix, l2: l2, balance: data.balance)
            let cost = SetChoiceFit.meanCost(picks: SetChoiceFit.picks(scorer, inputs: zValidation), costs: validationMatrix)
            if best == nil || cost < best!.cost { best = (scorer, cost, l2) }
        }
        let pairChoice = DecisionModule.Choice(kept: k, sets: sets, names: ["search", "reply search"], weights: best!.scorer.weights, bias: best!.scorer.bias)
        let trial = try module.replacingChoice(pairChoice)
        trial.budget = Double(k) / Double(routable)
        let pair = validation.routedKL(trial, policy: chat.kvPolicy)
        let ownKL = TrainingData.mean(validationCosts[0]), replyKL = TrainingData.mean(validationCosts[1])
        // The module's own set stays unless another choice beats it by --min-gain.
        var outcome = Outcome(own: ownKL, reply: replyKL, pair: pair, choice: module.weights.choices[k - 1], shipped: "own")
        if replyKL < ownKL * (1 - data.minGain), replyKL <= pair {
            outcome.choice = .init(kept: k, sets: [reply], names: ["reply search"]); outcome.shipped = "reply set"
        } else if pair < ownKL * (1 - data.minGain) {
            outcome.choice = pairChoice; outcome.shipped = String(format: "pair (L2 %g)", best!.l2)
        }
        report.line(String(format: "k %d validation KL (prose and chat): own set %.4f, reply set %.4f, pair routed %.4f (estimate %.4f): %@",
                           k, ownKL, replyKL, pair, best!.cost, outcome.shipped))
        return outcome
    }
}

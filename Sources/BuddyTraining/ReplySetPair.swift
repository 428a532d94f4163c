import BuddyCore
import BuddyRouting
import Foundation

/// The last step of `buddy train reply-sets` with --text-data: a set searched on chat replies
/// may serve prose worse than the module's own set at that k. So the module's choice at k
/// becomes whichever does best on validation prose and chat pooled per position: its own set,
/// the reply set, or both with a pair scorer (`SetChoiceFit`) that decides per token from the
/// routing context, as `buddy train router`'s scorers do. The input normalisation is the
/// module's own, shared by every k.
///
/// With `balanced`, prose and chat weigh the same however many positions each has (in the fit
/// and in the choice of L2), and a choice must not cost validation prose more than --min-gain:
/// among those that do not, the one with the lowest validation chat KL, if it beats the
/// module's own set there by --min-gain. Without it, positions are pooled.
public enum ReplySetPair {
    public struct Data: Sendable {
        public var text: String
        public var textChunks = 8
        public var textFirstScored = 128
        /// More training prose for the pair's fit only (512-token chunks, e.g. 84..<116).
        public var textExtraChunks: Range<Int>?
        public var validationSkipChunks = 12
        public var validationChunks = 8
        /// Chat prompts of the search's split used for validation, after the searched ones.
        public var validationPrompts = 60
        public var l2: [Float] = [0.0001, 0.001, 0.01, 0.1]
        public var balance: Float = 1
        public var minGain = 0.005
        /// Prose and chat weigh the same, and no choice may cost prose (see above).
        public var balanced = false
        /// In the pair's fit only, the reply set costs at least the own set plus this many nats
        /// at every training prose position: the scorer learns to keep prose on the own set,
        /// telling prose from chat by the pooled context (0: costs as measured). With a guard the
        /// fit's balance counts chat positions only. Per-position KL hides what mixing costs
        /// prose: a pair that ran the reply set at 44 % of prose positions was 0.2 % worse in
        /// KL there and 1.8 % worse in perplexity (docs/TRAINING.md, "A prose guard").
        public var proseGuard = 0.0
        public init(text: String) { self.text = text }

        /// The training prose (chunks 0..<textChunks, scored from textFirstScored) of `ids`, the
        /// tokens of `text`; the pair's fit adds --text-extra-chunks, the search's measure does not.
        func trainingProse(_ ids: [Int32], extra: Bool) throws -> [SearchSequence] {
            try TrainingData.textSequences(ids, chunks: 0..<textChunks, length: 512, firstScored: textFirstScored, path: text)
                + (extra ? try textExtraChunks.map { try TrainingData.textSequences(ids, chunks: $0, length: 512, firstScored: textFirstScored, path: text) } ?? [] : [])
        }

        var commandLine: String {
            "--text-data \(text) --text-chunks \(textChunks) --validation-skip-chunks \(validationSkipChunks) --validation-chunks \(validationChunks)"
                + (textExtraChunks.map { " --text-extra-chunks \($0.lowerBound)..<\($0.upperBound)" } ?? "")
                + " --validation-prompts \(validationPrompts)" + (balanced ? " --balanced" : "")
                + (proseGuard > 0 ? " --prose-guard \(proseGuard)" : "") + (balance != 1 ? " --pair-balance \(balance)" : "")
        }
    }

    public struct Outcome: Sendable {
        /// Validation KL (prose and chat positions pooled) of the module's set, the reply set and the pair.
        public var own: Double, reply: Double, pair: Double
        /// The same on validation prose and on validation chat alone ([own, reply, pair]).
        public var prose: [Double], chat: [Double]
        public var choice: DecisionModule.Choice
        public var shipped: String
    }

    /// The choice at k (`own` the module's set, `reply` the searched one) that does best on
    /// validation; `textTokens` are the tokens of `data.text`.
    public static func choose(module: DecisionModule, k: Int, own: [Int], reply: [Int], data: Data, textTokens ids: [Int32], chat: PromptSetSearch.Options,
                              model: LanguageModel, standIns: StandIns?, report: Reporter) throws -> Outcome {
        let L = model.config.layers, routable = L - 2
        let textTrain = try data.trainingProse(ids, extra: true)
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
        // Both sets in one pass per sequence, sharing the layers below their first difference.
        let masks = sets.map { LayerBudget.mask(layers: L, chosen: Set($0)) }
        let bar = report.progress("per-position KL of both sets", 4)
        let trainCosts = train.positionKLs(masks) { done, total in bar.update(2 * done / total, detail: "training") }
        let validationCosts = validation.positionKLs(masks) { done, total in bar.update(2 + 2 * done / total, detail: "validation") }
        let (mean, scale) = (module.weights.inputMean, module.weights.inputScale)
        let zTrain = standardised(train.routingInputs(), mean: mean, scale: scale)
        let zValidation = standardised(validation.routingInputs(), mean: mean, scale: scale)
        // Positions are prose first, then chat, in both splits (the sequences' order).
        let proseTrain = textTrain.reduce(0) { $0 + $1.scored.count }, proseValidation = textValidation.reduce(0) { $0 + $1.scored.count }
        /// Each position's weight: 1 pooled; balanced, prose and chat each weigh half of the total.
        func weights(prose: Int, total: Int) -> [Double] {
            guard data.balanced, prose > 0, prose < total else { return [Double](repeating: 1, count: total) }
            let wProse = 0.5 * Double(total) / Double(prose), wChat = 0.5 * Double(total) / Double(total - prose)
            return (0..<total).map { $0 < prose ? wProse : wChat }
        }
        let trainWeights = weights(prose: proseTrain, total: train.scoredCount)
        let validationWeights = weights(prose: proseValidation, total: validation.scoredCount)
        func perPosition(_ c: [[Double]], _ w: [Double]) -> [[Double]] { (0..<c[0].count).map { t in c.map { $0[t] * w[t] } } }
        let trainMatrix = perPosition(guarded(trainCosts, prose: proseTrain, guard: data.proseGuard), trainWeights), validationMatrix = perPosition(validationCosts, validationWeights)
        var best: (scorer: SetChoiceFit.Scorer, cost: Double, l2: Float, picks: [Int])?
        for l2 in data.l2 {
            let scorer = SetChoiceFit.fit(inputs: zTrain, costs: trainMatrix, l2: l2, balance: data.balance,
                                          balanceFrom: data.proseGuard > 0 ? proseTrain : 0)   // guarded: balance chat only
            let picks = SetChoiceFit.picks(scorer, inputs: zValidation)
            let cost = SetChoiceFit.meanCost(picks: picks, costs: validationMatrix)
            if best == nil || cost < best!.cost { best = (scorer, cost, l2, picks) }
        }
        let replyShare = (prose: share(best!.picks[..<proseValidation]), chat: share(best!.picks[proseValidation...]))
        let pairChoice = DecisionModule.Choice(kept: k, sets: sets, names: ["search", "reply search"], weights: best!.scorer.weights, bias: best!.scorer.bias)
        let trial = try module.replacingChoice(pairChoice)
        trial.budget = Double(k) / Double(routable)
        let pairCosts = validation.routedPositionKL(trial, policy: chat.kvPolicy)
        let all = [validationCosts[0], validationCosts[1], pairCosts]
        let prose = all.map { TrainingData.mean(Array($0[..<proseValidation])) }, chatKL = all.map { TrainingData.mean(Array($0[proseValidation...])) }
        let pooled = all.map(TrainingData.mean)
        let choices: [(DecisionModule.Choice, String)] = [(module.weights.choices[k - 1], "own"), (.init(kept: k, sets: [reply], names: ["reply search"]), "reply set"),
                                                          (pairChoice, String(format: "pair (L2 %g)", best!.l2))]
        // The module's own set stays unless another choice beats it by --min-gain.
        let pick = choice(prose: prose, chat: chatKL, pooled: pooled, balanced: data.balanced, minGain: data.minGain)
        let outcome = Outcome(own: pooled[0], reply: pooled[1], pair: pooled[2], prose: prose, chat: chatKL, choice: choices[pick].0, shipped: choices[pick].1)
        report.line(String(format: "k %d validation KL (prose and chat): own set %.4f, reply set %.4f, pair routed %.4f (estimate %.4f): %@",
                           k, pooled[0], pooled[1], pooled[2], best!.cost, outcome.shipped))
        report.line(String(format: "  prose: own %.4f, reply %.4f, pair %.4f; chat: own %.4f, reply %.4f, pair %.4f",
                           prose[0], prose[1], prose[2], chatKL[0], chatKL[1], chatKL[2]))
        report.line(String(format: "  the pair runs the reply set at %.1f %% of validation prose positions and %.1f %% of chat positions",
                           100 * replyShare.prose, 100 * replyShare.chat))
        return outcome
    }

    /// The costs the pair is fitted on: with a guard g > 0, at the first `prose` positions the
    /// reply set (index 1) costs at least the own set (index 0) plus g.
    public static func guarded(_ costs: [[Double]], prose: Int, guard g: Double) -> [[Double]] {
        guard g > 0 else { return costs }
        var out = costs
        for t in 0..<prose { out[1][t] = max(costs[1][t], costs[0][t] + g) }
        return out
    }

    /// The share of picks that are the reply set (index 1).
    public static func share(_ picks: ArraySlice<Int>) -> Double {
        picks.isEmpty ? 0 : Double(picks.filter { $0 == 1 }.count) / Double(picks.count)
    }

    /// Which of [own set, reply set, pair] becomes the choice, from their validation KL on prose,
    /// on chat and pooled. Pooled: the lower of reply set and pair if it beats the own set by
    /// `minGain` (the reply set on a tie). Balanced: among the two that cost prose at most
    /// `minGain`, the lowest chat KL, if it beats the own set's chat by `minGain`. 0 otherwise.
    public static func choice(prose: [Double], chat: [Double], pooled: [Double], balanced: Bool, minGain: Double) -> Int {
        precondition(prose.count == 3 && chat.count == 3 && pooled.count == 3, "own set, reply set, pair")
        var pick = 0
        if balanced {
            for j in 1...2 where prose[j] <= prose[0] * (1 + minGain) && chat[j] < chat[0] * (1 - minGain) && chat[j] < chat[pick] { pick = j }
        } else if pooled[1] < pooled[0] * (1 - minGain), pooled[1] <= pooled[2] {
            pick = 1
        } else if pooled[2] < pooled[0] * (1 - minGain) {
            pick = 2
        }
        return pick
    }
}

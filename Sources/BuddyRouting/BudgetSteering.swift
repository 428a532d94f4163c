import BuddyCore
import Foundation

/// Spends a budget's layers unevenly along a reply: more after a step where the routed model
/// was unsure, fewer elsewhere, with the same mean.
///
/// The budget set on it (slider, `--budget`, the Budget Predictor) is the mean: it runs k
/// routable layers, k = `LayerBudget.routableCount(budget)`. Before each decode step it looks
/// at the entropy of the previous step's logits (the routed model's own output, which every
/// run has) and runs
///
///   k + 3 layers  when that entropy is in the top quarter of the last `window` entropies,
///   k − 1 layers  otherwise,
///
/// so a quarter of the steps at k + 3 and three quarters at k − 1 average exactly k. The
/// window spans replies (a conversation's, or an evaluation's prompts one after another):
/// a reply that is uncertain throughout gets more layers than a confident one, which is most
/// of the gain; a quartile of each reply alone would only move layers within it. The
/// router underneath chooses which layers, as it does at any k. Where k + 3 or k − 1 does not
/// exist (budgets near 1, or k = 1) it runs k. Prompt chunks run at k.
///
/// Why: the drift from the full model is concentrated (the 10 % of reply positions with the
/// largest KL carry 40–47 % of it) and follows uncertainty a little; on the 250 training chat
/// requests this rule cut chat KL at 0.8's compute by 9 % (docs/TRAINING.md, "Steering the
/// budget along the reply"), and held out, as registered in eval/NOTES.md before it ran, by
/// 9.3 % ± 1.3 % over 240 prompts; so the chat, `generate` and `bench` steer by default
/// (`onByDefault`).
///
/// `blind` is the control: the same share of raised steps, chosen by a fixed-seed coin instead
/// of the entropy (evaluations only).
///
/// `sentence` (`+sentence`; the product's steering on 2026-12-07) adds one
/// rule in front: a step whose input token ends a sentence or a line
/// (`LanguageModel.sentenceEndTokens`) runs every routable layer, because that step's output
/// chooses between ending the reply and how the next sentence begins. The entropy rule decides
/// the other steps, which pay the extra back: while the reply has run more than k layers per
/// step, a step that is not raised runs k − 1 − min(3, ⌈owed / 8⌉) instead of k − 1, so the
/// reply's mean stays about k (within 1.5 % of `+steer`'s on MT-Bench replies). Why: routed
/// replies at 0.7 and 0.5 ran to the token limit in most prompts without reaching a point
/// where the full model would stop; held out this halves to quarters that share
/// (eval/NOTES.md, "Depth at sentence ends").
///
/// `lead` (`+lead`; the product's steering since 2026-12-08, `productSignal`) is `sentence` plus the reply's lead: each step of the reply's first
/// sentence (until a sentence end, at most `leadLimit` steps) runs every routable layer, where
/// k is at least two thirds of the routable layers. What the lead owes is paid back faster than
/// a sentence end's: a step that is not raised runs k − 1 − min(6, ⌈owed / 4⌉), and the entropy
/// rule raises no step while more than 8 layers are owed, so a 50-token reply is back near k
/// by its end. Why: a simple question is answered, or turned into an essay, in the reply's first
/// sentence; with that sentence at full depth the router at 0.7 gave about three quarters of
/// the right answers it loses to full depth (eval/NOTES.md, "The reply's lead sentence at full
/// depth"). Below two thirds a short reply cannot pay a full-depth lead back, so there it is
/// `sentence` exactly.
public final class BudgetSteering: BudgetedLayerSelector, OutputWatchingSelector, InputWatchingSelector, PromptSetSelector, ContextKeepingSelector {
    public enum Signal: String, Sendable, CaseIterable {
        case entropy, blind, sentence, lead
        /// How a steered method is written after its router's name (`sleb+steer`, `buddy+blind`).
        public var suffix: String {
            switch self {
            case .entropy: return "+steer"
            case .blind: return "+blind"
            case .sentence: return "+sentence"
            case .lead: return "+lead"
            }
        }
    }

    /// Whether the product's commands (chat, generate, bench) steer unless told `--steering off`:
    /// the one place that default is decided. Evaluations name steering per method instead.
    public static let onByDefault = true
    /// The signal the product's commands steer by when steering is on: the reply's first
    /// sentence, sentence ends and entropy since 2026-12-08. Sentence ends were chosen on
    /// MT-Bench's training prompts and checked held out (eval/NOTES.md, "Depth at sentence
    /// ends": replies at 0.7 and 0.5 reach the token limit far less often); the lead on the
    /// facts' training questions and training chat, then checked held out (right answers at 0.7
    /// 0.600 against 0.456) and, before it shipped, on `--budget auto` and against the static
    /// sets given the same lead (eval/NOTES.md, "The lead toward shipping").
    public static let productSignal: Signal = .lead

    /// The steering the chat, `generate` and `bench` put around a router.
    public static func forProduct(_ inner: BudgetedLayerSelector) -> BudgetSteering {
        BudgetSteering(inner, signal: productSignal)
    }

    /// Layers added after an uncertain step, and the share of steps that get them.
    public static let raise = 3
    public static let raisedShare = 0.25

    public let inner: BudgetedLayerSelector
    public let signal: Signal
    /// The mean budget.
    public var budget: Double
    public var name: String { inner.name + signal.suffix }
    public var lastScores: [Float]? { inner.lastScores }
    public var layerSetLabel: String? { inner.layerSetLabel }

    /// How many recent entropies the quartile is taken over (about 16 replies of 128 tokens).
    public static let window = 2048
    /// The last `window` entropies (nats) in arrival order (a ring) and ascending (for the
    /// quartile); both preallocated, so a step allocates nothing.
    private var recentEntropies: [Double] = []
    private var sortedEntropies: [Double] = []
    private var oldest = 0
    private var lastEntropy = 0.0
    /// Whether the token the next decode step reads ends a sentence (`willRun`).
    private var inputEndsSentence = false
    /// `lead`: steps of the reply's first sentence run at every layer so far, and whether a
    /// sentence end has been read since the reply started.
    private var leadSteps = 0
    private var leadDone = false
    /// The most steps of a reply's first sentence that `lead` runs at every layer.
    public static let leadLimit = 16
    private var random = SeededRNG(seed: 0x5EED)
    /// Since the reply started (the window does not restart): decode steps decided, how many of them ran more than k (k + 3, or every layer after a sentence end), and the
    /// routable layers they ran in all (so an evaluation can state the mean compute it got).
    public private(set) var steps = 0
    public private(set) var raisedSteps = 0
    public private(set) var routedLayers = 0

    /// Steered decode steps and the routable layers they ran, summed over replies (the counters
    /// above restart with each reply): what an evaluation reports as a steered run's compute.
    public struct Tally: Sendable {
        public private(set) var steps = 0
        public private(set) var layers = 0
        public init() {}
        /// Adds the current reply's counters of `selector`, when it is steered.
        public mutating func add(_ selector: LayerSelector?) {
            guard let s = selector as? BudgetSteering else { return }
            steps += s.steps
            layers += s.routedLayers
        }
        /// Mean routable layers per step; nil before any steered step.
        public var meanLayers: Double? { steps > 0 ? Double(layers) / Double(steps) : nil }
    }

    /// A method as written in evaluations and `train predictor`: a router name, optionally
    /// steered along the reply (`sleb+steer`: by entropy; `+blind`: the fixed-seed control), so
    /// every router can be given the same steering.
    public static func method(_ spec: String) -> (router: String, steering: Signal?) {
        for signal in Signal.allCases where spec.hasSuffix(signal.suffix) {
            return (String(spec.dropLast(signal.suffix.count)), signal)
        }
        return (spec, nil)
    }

    public init(_ inner: BudgetedLayerSelector, signal: Signal = .entropy) {
        self.inner = inner
        self.signal = signal
        budget = inner.budget
        recentEntropies.reserveCapacity(Self.window)
        sortedEntropies.reserveCapacity(Self.window)
    }

    public func willRun(sentenceEnd: Bool) {
        inputEndsSentence = sentenceEnd
        if sentenceEnd { leadDone = true }
    }

    public func observe(logits: UnsafePointer<Float>, count: Int, replyStarts: Bool) {
        if replyStarts { steps = 0; raisedSteps = 0; routedLayers = 0; leadSteps = 0; leadDone = false }
        guard signal != .blind else { return }
        let h = LogProbabilities.entropy(logits, count: count)
        lastEntropy = h
        if recentEntropies.count == Self.window {
            // Drop the oldest from the sorted list, then overwrite it in the ring.
            sortedEntropies.remove(at: Self.position(of: recentEntropies[oldest], in: sortedEntropies))
            recentEntropies[oldest] = h
            oldest = (oldest + 1) % Self.window
        } else {
            recentEntropies.append(h)
        }
        sortedEntropies.insert(h, at: Self.position(of: h, in: sortedEntropies))
    }

    /// The first index whose value is not below `x` (binary search in an ascending list).
    static func position(of x: Double, in sorted: [Double]) -> Int {
        var lo = 0, hi = sorted.count
        while lo < hi { let mid = (lo + hi) / 2; if sorted[mid] < x { lo = mid + 1 } else { hi = mid } }
        return lo
    }

    /// Whether the next step gets k + 3: the last entropy is above the window's upper quartile
    /// (strictly, so a reply of equal entropies never raises), or the coin says so.
    private func raisesNextStep() -> Bool {
        switch signal {
        case .blind:
            return Double(random.next() >> 11) / Double(1 << 53) < Self.raisedShare
        case .entropy, .sentence, .lead:
            guard !sortedEntropies.isEmpty else { return false }
            let q = sortedEntropies[Int((Double(sortedEntropies.count - 1) * (1 - Self.raisedShare)).rounded(.down))]
            return lastEntropy > q
        }
    }

    /// The routable layers to run at the next decode step, given the mean `k` of `routable`.
    func stepLayers(k: Int, routable: Int) -> Int {
        steps += 1
        guard k - 1 >= 1, k + Self.raise <= routable else { routedLayers += k; return k }
        // The lead applies where a short reply can pay it back (k at least 2/3 of routable).
        let leads = signal == .lead && 3 * k >= 2 * routable
        if leads && !leadDone && leadSteps < Self.leadLimit {
            leadSteps += 1
            raisedSteps += 1
            routedLayers += routable
            return routable
        }
        let endsSentence = signal == .sentence || signal == .lead
        if endsSentence && inputEndsSentence {
            raisedSteps += 1
            routedLayers += routable
            return routable
        }
        // Layers run beyond k per step so far (sentence ends, the lead, raised steps).
        let owed = routedLayers - (steps - 1) * k
        let raised = !(leads && owed > 8) && raisesNextStep()
        if raised { raisedSteps += 1 }
        var layers = raised ? k + Self.raise : k - 1
        if endsSentence && !raised && owed > 0 {
            // Pay back what the sentence ends (and the lead, faster) took beyond the mean.
            layers = leads ? max(1, k - 1 - min(6, (owed + 3) / 4)) : max(1, k - 1 - min(3, (owed + 7) / 8))
        }
        routedLayers += layers
        return layers
    }

    public func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] {
        let routable = LayerBudget.routable(layers: cache.layers)
        let k = LayerBudget.routableCount(budget: budget, layers: cache.layers)
        inner.budget = Double(stepLayers(k: k, routable: routable)) / Double(routable)
        return inner.selectLayers(position: position, state: state, cache: cache)
    }

    /// A prompt runs at the mean budget: the inner router's prompt set for k, if it has one.
    public func promptMask() -> [Bool]? {
        guard let inner = inner as? PromptSetSelector else { return nil }
        self.inner.budget = budget
        return inner.promptMask()
    }

    public func cacheTruncated(to length: Int) {
        (inner as? ContextKeepingSelector)?.cacheTruncated(to: length)
    }

    public func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool] {
        inner.budget = budget
        return inner.selectLayers(chunkStart: chunkStart, count: count, batch: batch, cache: cache)
    }
}

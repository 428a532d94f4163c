import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

extension KVPolicy: ExpressibleByArgument {}
extension StandInChoice: ExpressibleByArgument {}
extension HeadChoice: ExpressibleByArgument {
    static let help: ArgumentHelp = "Output head for tokens that run at most two thirds of the layers: screened (a 4-bit copy scores the vocabulary and the 256 best rows are recomputed exactly; the default) or exact (the file's head for every token). Full depth always reads the exact head."
}
extension PromptDepth: ExpressibleByArgument {
    /// --prompt-depth's help, shared by `chat` and `generate` (both default to full).
    static let help: ArgumentHelp = "What the budget covers: full (the prompt runs every layer, the budget saves compute on the reply; the default) or budget (the prompt at the budget too, as the evaluations measure)."
}

/// --steering: whether the budget is spent evenly (off) or follows the reply's sentences and uncertainty (on).
enum Steering: String, ExpressibleByArgument, CaseIterable {
    case on, off
    /// The chat's, generate's and bench's default (owned by `BudgetSteering.onByDefault`).
    static var standard: Steering { BudgetSteering.onByDefault ? .on : .off }
    static let help: ArgumentHelp = "on (the default): spend the budget unevenly along the reply: at 70 % and above every layer through the reply's first sentence (at most 16 tokens, where a short answer is given or lost), every layer at a step whose input ends a sentence or a line (where the reply decides whether to end and how the next sentence begins), k + 3 layers after a step where the model was unsure (its output's entropy in the top quarter of the last 2,048 steps, which span replies), k − 1 otherwise, and fewer while the first sentence and the sentence ends are paid back, about k on average; off: k layers at every step."
}

/// A budget as typed: a number in (0, 1] or `auto`.
typealias BudgetArgument = BudgetChoice
extension BudgetChoice: ExpressibleByArgument {}

/// --budget, --router, --kv-policy: how deep the model runs for each token.
struct RoutingOptions: ParsableArguments {
    @Option(name: .long, help: "Compute budget in (0, 1]: the fraction of the routable layers (all but the first and last) run for every token; 1 runs the full model. auto: the Budget Predictor picks one per prompt (see --full-depth-share and --quality-tolerance).")
    var budget: BudgetArgument = .fixed(1)
    @Option(name: .long, help: AutoBudgetHelp.tolerance) var qualityTolerance: Double?
    @Option(name: .long, help: AutoBudgetHelp.share) var fullDepthShare: Double?
    @Option(name: .long, help: "Which layers run under the budget: buddy (the trained Decision Module), shortgpt, sleb, last, random, even, or a router/ranking file.") var router: String = "buddy"
    @Option(name: .long, help: "What a skipped layer leaves in the KV cache: fill (its K/V from the layer's input, about 6 % of a layer, computed only when a later token runs that layer; the default, since the router mixes layer sets token by token), mask (later tokens ignore it), zero (zero-filled entries, the paper's choice).") var kvPolicy: KVPolicy = .fill
    @Option(name: .long, help: "What a skipped layer adds instead of nothing: on (the model's stand-ins, routers/stand-ins.bin), off (plain skip), or a stand-in file. Default: on when the model has stand-ins.") var standIns: StandInChoice = .auto
    @Option(name: .long, help: "Re-decide the layer set every N decode steps (Decision Module only).") var rerouteEvery: Int = 1
    @Option(name: .long, help: PromptDepth.help) var promptDepth: PromptDepth = .full
    @Option(name: .long, help: Steering.help) var steering: Steering = .standard
    @Option(name: .long, help: HeadChoice.help) var head: HeadChoice = .standard

    func validate() throws {
        try AutoBudgetHelp.validate(tolerance: qualityTolerance, share: fullDepthShare)
        guard rerouteEvery >= 1 else { throw ValidationError("--reroute-every must be at least 1") }
    }

    /// The budget `prompt` runs at: the one typed, or under `auto` the Budget Predictor's choice
    /// for it, made before the prompt runs (layer 0 only; `session` keeps what it held).
    func resolveBudget(for prompt: [Int32], in session: Session) throws -> Double {
        guard budget == .auto else { return budget.value ?? 1 }
        let predictor = try Routers.autoBudgetPredictor(model: session.model)
        let rule = AutoBudgetRule.resolve(tolerance: qualityTolerance, share: fullDepthShare, predictor: predictor)
        return try AutoBudget(predictor: predictor, rule: rule).chooseBudget(for: prompt, in: session)
    }

    /// The selector to install at `budget`, or nil when the full model runs.
    func makeSelector(budget: Double, model: LanguageModel) throws -> BudgetedLayerSelector? {
        try Routers.selector(router: router, budget: budget, rerouteEvery: rerouteEvery, steering: steering == .on, model: model)
    }
}

/// The options that say how `--budget auto` chooses (`AutoBudgetRule`), shared by every command.
enum AutoBudgetHelp {
    static let tolerance: ArgumentHelp = "For --budget auto: choose the smallest budget whose predicted drift from the full model (mean KL, nats per token) stays under this, instead of the predictor's share rule."
    static let share: ArgumentHelp = "For --budget auto: the share of requests run at full depth (those predicted to drift most among the recent ones), the rest at the predictor's lowest choice. Default: the predictor's."

    static func validate(tolerance: Double?, share: Double?) throws {
        if let tolerance, !(tolerance > 0) { throw ValidationError("--quality-tolerance must be positive") }
        if let share, !(share > 0 && share < 1) { throw ValidationError("--full-depth-share must be in (0, 1)") }
        if tolerance != nil && share != nil { throw ValidationError("give --quality-tolerance or --full-depth-share, not both") }
    }
}

/// The depth budget's one range and one clamp. The chat's slider, its engine and the
/// `/budget` command all pass budgets through `clamp`, so a value the user can reach by one
/// of them is the value every other one shows and runs (they used to disagree: 5%, 1% and
/// anything above 0). `LayerBudget.routableCount` turns a budget into the layers it runs.
public enum Budget {
    /// The smallest budget: low enough that even a deep model can be asked for one routable
    /// layer (`LayerBudget.routableCount` never runs fewer than one anyway).
    public static let minimum = 0.01
    public static let maximum = 1.0
    public static let range: ClosedRange<Double> = minimum...maximum

    /// `b` brought into `range`; a non-finite budget means no budget, i.e. the full model.
    public static func clamp(_ b: Double) -> Double {
        guard b.isFinite else { return maximum }
        return min(maximum, max(minimum, b))
    }

    /// Budgets at or above this run the default model without obvious damage: the chat's
    /// slider marks them as its recommended zone, and the automatic budget's default tolerance
    /// is chosen to stay in it. With the shipped router and stand-ins, held-out perplexity is
    /// 1.10× full depth at 0.9, 1.24× at 0.8, 1.35× at 0.7 and 1.93× at 0.5; the chat's KL from
    /// full depth (messages at full depth, its default) is 0.24 / 0.46 / 0.63 / 1.28 nats per
    /// token (EVAL.md): at 0.7 answers stay on the question but repeat themselves and invent
    /// details (README describes the chat at 90, 80, 70 and 50 %), so the floor stays at 0.8.
    /// The floor is about text and chat: on simple questions 0.8 gives up a third of full
    /// depth's right answers, about as many as 0.7 (eval/NOTES.md, "The slider's 80 % row"),
    /// which README's table says; the automatic budget's share rule and its held-out figures
    /// rest on this floor, so it was not moved for that.
    public static let recommendedFloor = 0.8

    /// The automatic budget's default tolerance must keep its mean choice on the training chat
    /// prompts at or below this: decode at 0.9 is barely faster than full depth (EVAL.md), so an
    /// automatic budget that averages more saves nothing worth its drift (choosing 0.8 or full
    /// depth, the tolerance 0.25 averaged 0.998 there; `PredictorTraining.preferredTolerance`).
    public static let automaticCeiling = 0.9

    /// Whether `b` is in the recommended zone (at or above `floor`, by default the zone's own),
    /// with a hair of slack for budgets reached by arithmetic (slider steps, means of layer counts).
    public static func isRecommended(_ b: Double, floor: Double = recommendedFloor) -> Bool { b >= floor - 1e-9 }

    /// The budget as a whole percentage, as the slider, status bar and reply lines show it.
    public static func percent(_ b: Double) -> Int { Int((b * 100).rounded()) }
}

/// How far the budget reaches: over the reply only, or over the prompt as well.
///
/// A prompt runs as a batch, which costs a fraction of the time of decoding the same number
/// of tokens, so the budget's saving is almost all in the reply. Running the prompt at full
/// depth gives every later token exact keys and values for it (the model reads the question
/// as the full model does), and lowers the reply's drift from full depth at every budget
/// (docs/STAND-INS.md, "The prompt at full depth").
public enum PromptDepth: String, Sendable, CaseIterable {
    /// Every layer for prompt tokens; the budget applies to generated tokens. The chat's
    /// and `generate`'s default.
    case full
    /// The prompt at the budget too, one decision per chunk: the evaluations' protocol, and
    /// the one the published quality targets are measured with.
    case budget
}

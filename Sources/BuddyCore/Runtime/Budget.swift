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

    /// The budget as a whole percentage, as the slider, status bar and reply lines show it.
    public static func percent(_ b: Double) -> Int { Int((b * 100).rounded()) }
}

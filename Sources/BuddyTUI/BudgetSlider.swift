import BuddyCore

/// The budget slider's state: the budget in percent and the k of L routable layers it runs.
/// It shows the engine's budget (every `.budget` event sets it) and, between a key press and
/// the engine's answer, the budget just asked for, so quick repeated presses keep stepping.
public struct SliderState: Equatable, Sendable {
    public var budget: Double
    public var routable: Int
    public var auto = false
    /// The floor in percent, as the slider and the help text show it.
    public static var recommendedPercent: Int { Budget.percent(Budget.recommendedFloor) }

    public init(budget: Double = 1, routable: Int) {
        self.budget = budget
        self.routable = routable
    }

    public var k: Int { LayerBudget.routableCount(budget: budget, layers: routable + 2) }
    public var percent: Int { Budget.percent(budget) }
    public var inRecommendedZone: Bool { Budget.isRecommended(budget) }

    /// The budget after `steps` 5% steps; an off-grid budget first moves to the next
    /// multiple of 5% in the direction of travel. Below 5% comes the engine's smallest budget.
    public func stepped(percentSteps steps: Int) -> Double {
        let x = budget * 20
        let grid = steps > 0 ? (x + 1e-6).rounded(.down) + Double(steps) : (x - 1e-6).rounded(.up) + Double(steps)
        return Budget.clamp(grid / 20)
    }

    /// The budget that runs exactly one layer more (or less) than now.
    public func stepped(layers delta: Int) -> Double {
        guard routable > 0 else { return budget }
        let k2 = min(routable, max(1, k + delta))
        return Budget.clamp(Double(k2) / Double(routable))
    }
}

public enum BudgetSlider {
    /// One line: `budget ━━━━━━━━━●────┊───  85%  24/28 layers  ✓ recommended zone 80–100%`.
    public static func draw(_ s: SliderState, in r: Rect, on c: Canvas) {
        guard r.width > 20 else { return }
        c.fill(r)
        let wide = r.width >= 100
        let label = s.auto ? "budget(auto) " : "budget "
        let info = " \(pad3(s.percent))%  \(s.k)/\(s.routable) layers"
        let z = SliderState.recommendedPercent
        let hint = s.inRecommendedZone
            ? (wide ? "  ✓ recommended zone \(z)–100%" : "  ✓ \(z)–100% ok")
            : (wide ? "  ⚠ below \(z)%: this model degrades fast" : "  ⚠ <\(z)% degrades")
        let trackW = max(8, min(wide ? 50 : 30, r.width - label.count - info.count - TextWidth.width(hint) - 1))
        var x = r.x
        c.put(x, r.y, label, .slider)
        x += label.count
        let knob = Int((s.budget * Double(trackW - 1)).rounded())
        let zoneStart = Int((Budget.recommendedFloor * Double(trackW - 1)).rounded())
        for i in 0..<trackW {
            let glyph: String
            let role: Role
            if i == knob {
                glyph = "●"; role = .sliderKnob
            } else if i == zoneStart {
                glyph = "┊"; role = .sliderZone
            } else if i < knob {
                glyph = "━"; role = i >= zoneStart ? .sliderZone : .slider
            } else {
                glyph = "─"; role = i >= zoneStart ? .sliderZone : .dim
            }
            c.put(x + i, r.y, glyph, role)
        }
        x += trackW
        c.put(x, r.y, info, .slider)
        x += info.count
        c.put(x, r.y, hint, s.inRecommendedZone ? .sliderZone : .sliderWarn, columns: r.maxX - x)
    }

    static func pad3(_ n: Int) -> String { String(repeating: " ", count: max(0, 3 - String(n).count)) + String(n) }
}

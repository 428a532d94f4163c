import BuddyCore
import BuddyEngine

/// The routing panel's data: which layers ran at each recent decode step, their router
/// scores, where the budget changed, and per-layer usage over the current reply.
public struct RoutingPanelState: Sendable {
    public struct Column: Sendable, Equatable {
        /// ran[l]: layer l ran at this step. Empty for the gap between replies.
        public var ran: [Bool]
        /// Heat level 0 ..< Role.heatLevels per layer (from the router scores), nil without scores.
        public var heat: [Int]?
        public var budgetChanged: Bool
        public var k: Int
        /// The router's table of layer sets at this step, when it has several.
        public var layerSets: String? = nil
        public var isGap: Bool { ran.isEmpty }
    }

    public var layers: Int
    public var router = ""
    public private(set) var columns: [Column] = []
    /// Steps in which each layer ran, current reply.
    public private(set) var usage: LayerUsage
    public var replySteps: Int { usage.steps }
    public static let keep = 600
    private var lastBudget: Double?

    public init(layers: Int) {
        self.layers = layers
        usage = LayerUsage(layers: layers)
    }

    public var routable: Int { max(0, layers - 2) }

    /// A reply starts: usage restarts, and a blank column separates it from the previous one.
    public mutating func startReply() {
        usage.reset()
        if let last = columns.last, !last.isGap { append(Column(ran: [], heat: nil, budgetChanged: false, k: 0)) }
    }

    public mutating func record(_ s: StepInfo) {
        guard !s.layers.isEmpty else { return }
        var ran = [Bool](repeating: false, count: layers)
        for l in s.layers where l >= 0 && l < layers { ran[l] = true }
        usage.record(s.layers)
        var heat: [Int]?
        if let sc = s.scores, sc.count == routable, let lo = sc.min(), let hi = sc.max() {
            let span = hi - lo
            var h = [Int](repeating: Role.heatLevels - 1, count: layers)
            for i in 0..<routable {
                let t = span > 0 ? (sc[i] - lo) / span : 1
                h[i + 1] = min(Role.heatLevels - 1, max(0, Int(t * Float(Role.heatLevels - 1) + 0.5)))
            }
            heat = h
        }
        let changed = lastBudget != nil && lastBudget != s.budget
        lastBudget = s.budget
        append(Column(ran: ran, heat: heat, budgetChanged: changed, k: s.k, layerSets: s.layerSets))
    }

    private mutating func append(_ c: Column) {
        columns.append(c)
        if columns.count > RoutingPanelState.keep { columns.removeFirst(columns.count - RoutingPanelState.keep) }
    }

    public mutating func clear() {
        columns.removeAll()
        usage.reset()
        lastBudget = nil
    }

    /// Routable layers that ran in a column.
    public static func executedRoutable(_ c: Column) -> Int {
        guard c.ran.count > 2 else { return 0 }
        return c.ran[1..<(c.ran.count - 1)].filter { $0 }.count
    }
}

/// Draws the panel: a grid of layers (rows) × recent steps (columns, newest right). One row
/// per layer when there is room, else two layers per row with half blocks (▀ upper ran,
/// ▄ lower ran, █ both, · neither). Fixed layers are marked `*` next to their number.
public enum RoutingPanel {
    public static func compact(layers: Int, height: Int) -> Bool { height < layers + 4 }

    public static func draw(_ st: RoutingPanelState, in r: Rect, on c: Canvas) {
        guard r.width >= 12, r.height >= 4 else { return }
        let L = st.layers
        for y in r.y..<r.maxY { c.put(r.x, y, "│", .border) }
        let x0 = r.x + 1, w = r.width - 1
        let isCompact = compact(layers: L, height: r.height)
        let rows = isCompact ? (L + 1) / 2 : L
        let wide = w >= 44
        let barW = wide ? 10 : 5
        let pctW = wide ? 5 : 0
        let labelW = 4
        let gridW = max(1, w - labelW - 1 - barW - pctW)
        // Title and the budget-change marker row.
        // The router's name matters more than the caption: drop the caption when both do not fit.
        let captioned = " layers × steps · \(st.router)"
        let title = TextWidth.width(captioned) <= w ? captioned : " \(st.router)"
        c.put(x0, r.y, title, .title, columns: w)
        let shown = Array(st.columns.suffix(gridW))
        let gx = x0 + labelW
        var markerRow = ""
        for col in shown { markerRow += col.budgetChanged ? "▾" : " " }
        c.put(gx + gridW - shown.count, r.y + 1, markerRow, .marker)
        let usageTitle = wide ? " use (reply)" : " use"
        c.put(gx + gridW, r.y + 1, usageTitle, .dim, columns: barW + pctW + 1)

        let gridTop = r.y + 2
        for row in 0..<rows where gridTop + row < r.maxY {
            let y = gridTop + row
            let upper = isCompact ? 2 * row : row
            let lower = isCompact && 2 * row + 1 < L ? 2 * row + 1 : nil
            let fixed = upper == 0 || upper == L - 1 || lower == L - 1
            let label = (upper < 10 ? " " : "") + "\(upper)" + (fixed ? "*" : " ") + " "
            c.put(x0, y, label, fixed ? .layerFixed : .dim, columns: labelW)
            var x = gx + gridW - shown.count
            for col in shown {
                defer { x += 1 }
                if col.isGap { continue }
                let a = col.ran[upper]
                let b = lower.map { col.ran[$0] } ?? false
                let glyph: String
                if isCompact {
                    glyph = a && b ? "█" : a ? "▀" : b ? "▄" : "·"
                } else {
                    glyph = a ? "█" : "·"
                }
                let role: Role
                if !(a || b) {
                    role = .layerOff
                } else if upper == 0 || upper == L - 1 || (!a && lower == L - 1) {
                    role = .layerFixed
                } else if let h = col.heat {
                    let levels = [a ? h[upper] : -1, b ? h[lower!] : -1]
                    role = .heat(levels.max()!)
                } else {
                    role = .layerOn
                }
                c.put(x, y, glyph, role)
            }
            // Usage bar for this layer (mean of the pair in compact mode).
            var frac = st.usage.fraction(upper)
            if let lo = lower { frac = (frac + st.usage.fraction(lo)) / 2 }
            c.put(gx + gridW, y, "┆", .border)
            let bx = gx + gridW + 1
            c.put(bx, y, bar(frac, width: barW), fixed ? .layerFixed : .layerOn)
            if pctW > 0 { c.put(bx + barW, y, pad(Int((frac * 100).rounded())), .dim) }
        }
        // Legend, when there is room below the grid.
        let legendY = gridTop + rows
        if legendY < r.maxY {
            let legend = isCompact ? "▀▄ upper/lower ran · off * fixed ▾ budget" : "█ ran · skipped * fixed ▾ budget changed"
            c.put(x0, legendY, " " + legend, .dim, columns: w)
        }
        if legendY + 1 < r.maxY, let last = st.columns.last(where: { !$0.isGap }) {
            let k = RoutingPanelState.executedRoutable(last)
            let sets = last.layerSets.map { " · set: " + $0 } ?? ""
            c.put(x0, legendY + 1, " last step: \(k)/\(st.routable) routable + 2 fixed" + sets, .dim, columns: w)
        }
    }

    static func pad(_ p: Int) -> String {
        let s = "\(p)%"
        return String(repeating: " ", count: max(0, 5 - s.count)) + s
    }

    /// A horizontal bar of eighths.
    public static func bar(_ frac: Double, width: Int) -> String {
        let eighths = Int((max(0, min(1, frac)) * Double(width * 8)).rounded())
        let parts = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"]
        var s = String(repeating: "█", count: eighths / 8)
        if eighths % 8 > 0 { s += parts[eighths % 8] }
        return s + String(repeating: " ", count: max(0, width - (eighths + 7) / 8))
    }
}

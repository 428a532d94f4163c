import BuddyEngine

/// The status line's data.
public struct StatusState: Sendable, Equatable {
    public var model = ""
    public var router = ""
    public var budgetPercent = 100
    public var auto = false
    public var stats = EngineStats()
    public var generating = false
    public init() {}
}

public enum StatusBar {
    /// Pieces in order of importance; the narrowest terminals keep the first ones.
    public static func pieces(_ s: StatusState, width: Int) -> [(String, Role)] {
        var out: [(String, Role)] = []
        let narrow = width < 100
        var model = s.model.replacingOccurrences(of: ".Q4_1", with: "")
        if narrow { model = model.replacingOccurrences(of: "-Instruct", with: "") }
        out.append((" \(TextWidth.truncate(model, columns: narrow ? 14 : 40)) ", .status))
        out.append(("│ \(s.router) \(s.budgetPercent)%\(s.auto ? " auto" : narrow ? "" : " manual") ", .status))
        out.append(("│ \(fmt(s.stats.tokensPerSecond)) tok/s ", .status))
        out.append(("│ ctx \(s.stats.contextUsed)/\(s.stats.contextSize) ", .status))
        out.append(("│ router \(fmt(s.stats.routerOverhead * 100))% ", .status))
        return out
    }

    static func fmt(_ x: Double) -> String {
        let v = (x * 10).rounded() / 10
        return v == v.rounded() ? "\(Int(v)).0" : "\(v)"
    }

    public static func draw(_ s: StatusState, in r: Rect, on c: Canvas) {
        guard !r.isEmpty else { return }
        c.put(r.x, r.y, String(repeating: " ", count: r.width), .status)
        let keys = r.width < 100 ? (s.generating ? " Esc stop " : " ? help ")
            : (s.generating ? " Esc stop · ? help " : " F1/? help · ^D quit ")
        let keysW = TextWidth.width(keys)
        var x = r.x
        for (text, role) in pieces(s, width: r.width) {
            let w = TextWidth.width(text)
            if x + w > r.maxX - keysW { break }
            c.put(x, r.y, text, role)
            x += w
        }
        if r.width > keysW + 10 { c.put(r.maxX - keysW, r.y, keys, .statusKey) }
    }
}

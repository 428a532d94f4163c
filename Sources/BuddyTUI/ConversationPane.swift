/// The conversation pane's data: entries, their wrapped lines for the current width, and a
/// scroll position that stays put while the user reads back (new text does not move it).
public struct ConversationState: Sendable {
    public enum Kind: Sendable, Equatable { case user, assistant, notice, error, meta }
    public struct Entry: Sendable, Equatable {
        public var kind: Kind
        public var text: String
    }
    public struct Line: Sendable, Equatable {
        public var text: String
        public var role: Role
    }

    public private(set) var entries: [Entry] = []
    /// First shown line; nil follows the newest text.
    public private(set) var top: Int?
    private var cacheWidth = -1
    private var cache: [[Line]] = []

    public init() {}

    public var isFollowing: Bool { top == nil }

    public mutating func append(_ kind: Kind, _ text: String) {
        entries.append(Entry(kind: kind, text: text))
        cache.append([])
        if cacheWidth >= 0 { cache[cache.count - 1] = render(entries.count - 1, width: cacheWidth) }
    }

    /// Adds streamed text to the newest assistant entry (starting one if needed).
    public mutating func appendStreaming(_ text: String) {
        if entries.last?.kind != .assistant { append(.assistant, "") }
        entries[entries.count - 1].text += text
        if cacheWidth >= 0 { cache[cache.count - 1] = render(entries.count - 1, width: cacheWidth) }
    }

    public mutating func clear() { entries.removeAll(); cache.removeAll(); top = nil }

    private func render(_ i: Int, width: Int) -> [Line] {
        let e = entries[i]
        let body = max(1, width - 2)
        switch e.kind {
        case .user:
            let w = TextWidth.wrap(e.text, columns: body)
            return [Line(text: "", role: .text)] + w.enumerated().map { Line(text: ($0.offset == 0 ? "› " : "  ") + $0.element, role: .user) }
        case .assistant:
            return TextWidth.wrap(e.text, columns: body).map { Line(text: "  " + $0, role: .assistant) }
        case .meta:
            return TextWidth.wrap(e.text, columns: body).map { Line(text: "  " + $0, role: .dim) }
        case .notice:
            return TextWidth.wrap(e.text, columns: body).enumerated().map { Line(text: ($0.offset == 0 ? "· " : "  ") + $0.element, role: .notice) }
        case .error:
            return TextWidth.wrap(e.text, columns: body).enumerated().map { Line(text: ($0.offset == 0 ? "! " : "  ") + $0.element, role: .error) }
        }
    }

    /// All lines at `width` (re-wrapped when the width changed).
    public mutating func lines(width: Int) -> [Line] {
        if width != cacheWidth {
            cacheWidth = width
            cache = entries.indices.map { render($0, width: width) }
        }
        return cache.flatMap { $0 }
    }

    // Scrolling, for a view `height` lines tall showing `total` lines.
    public mutating func pageUp(height: Int, total: Int) {
        let t = top ?? max(0, total - height)
        top = max(0, t - max(1, height - 1))
    }
    public mutating func pageDown(height: Int, total: Int) {
        guard let t = top else { return }
        let n = t + max(1, height - 1)
        top = n >= total - height ? nil : n
    }
    public mutating func scrollHome() { top = 0 }
    public mutating func scrollEnd() { top = nil }

    /// The first line to show.
    public func firstLine(height: Int, total: Int) -> Int {
        if let t = top { return max(0, min(t, max(0, total - height))) }
        return max(0, total - height)
    }
}

public enum ConversationPane {
    public static func draw(_ st: inout ConversationState, in r: Rect, on c: Canvas, overlay: [String]? = nil) {
        guard !r.isEmpty else { return }
        if let overlay {
            for (i, l) in overlay.prefix(r.height).enumerated() { c.put(r.x + 1, r.y + i, l, i == 0 ? .title : .text, columns: r.width - 1) }
            return
        }
        let lines = st.lines(width: r.width - 1)
        let first = st.firstLine(height: r.height, total: lines.count)
        for (i, l) in lines[first..<min(lines.count, first + r.height)].enumerated() {
            c.put(r.x + 1, r.y + i, l.text, l.role, columns: r.width - 1)
        }
        if !st.isFollowing && first + r.height < lines.count {
            let more = " ↓ \(lines.count - first - r.height) more (End) "
            c.put(r.maxX - TextWidth.width(more) - 1, r.maxY - 1, more, .marker)
        }
        if lines.isEmpty {
            c.put(r.x + 2, r.y + 1, "Type a message and press Enter.", .dim, columns: r.width - 3)
            c.put(r.x + 2, r.y + 2, "-/+ change the depth budget, ? for help.", .dim, columns: r.width - 3)
        }
    }
}

/// The multi-line input box's text, cursor, kill ring and history (readline-style editing).
public struct InputEditor: Sendable {
    public private(set) var text: [Character] = []
    public private(set) var cursor = 0
    private var killed: [Character] = []
    public private(set) var history: [String] = []
    private var historyIndex: Int?
    private var draft: [Character] = []

    public init() {}

    public var string: String { String(text) }
    public var isEmpty: Bool { text.isEmpty }

    public mutating func set(_ s: String) { text = Array(s); cursor = text.count }
    public mutating func clear() { text.removeAll(); cursor = 0; historyIndex = nil }

    public mutating func insert(_ s: String) {
        let cs = Array(s)
        text.insert(contentsOf: cs, at: cursor)
        cursor += cs.count
    }
    public mutating func backspace() { if cursor > 0 { text.remove(at: cursor - 1); cursor -= 1 } }
    public mutating func deleteForward() { if cursor < text.count { text.remove(at: cursor) } }
    public mutating func left() { cursor = max(0, cursor - 1) }
    public mutating func right() { cursor = min(text.count, cursor + 1) }

    private var lineStart: Int { var i = cursor; while i > 0 && text[i - 1] != "\n" { i -= 1 }; return i }
    private var lineEnd: Int { var i = cursor; while i < text.count && text[i] != "\n" { i += 1 }; return i }
    public mutating func home() { cursor = lineStart }
    public mutating func end() { cursor = lineEnd }

    public mutating func killToEnd() {
        let e = lineEnd == cursor && cursor < text.count ? cursor + 1 : lineEnd
        killed = Array(text[cursor..<e]); text.removeSubrange(cursor..<e)
    }
    public mutating func killToStart() {
        let s = lineStart
        killed = Array(text[s..<cursor]); text.removeSubrange(s..<cursor); cursor = s
    }
    private func wordStart(from i: Int) -> Int {
        var j = i
        while j > 0 && !isWord(text[j - 1]) { j -= 1 }
        while j > 0 && isWord(text[j - 1]) { j -= 1 }
        return j
    }
    private func wordEnd(from i: Int) -> Int {
        var j = i
        while j < text.count && !isWord(text[j]) { j += 1 }
        while j < text.count && isWord(text[j]) { j += 1 }
        return j
    }
    private func isWord(_ c: Character) -> Bool { c.isLetter || c.isNumber || c == "_" }
    public mutating func killWordBack() {
        let s = wordStart(from: cursor)
        killed = Array(text[s..<cursor]); text.removeSubrange(s..<cursor); cursor = s
    }
    public mutating func killWordForward() {
        let e = wordEnd(from: cursor)
        killed = Array(text[cursor..<e]); text.removeSubrange(cursor..<e)
    }
    public mutating func wordLeft() { cursor = wordStart(from: cursor) }
    public mutating func wordRight() { cursor = wordEnd(from: cursor) }
    public mutating func yank() { insert(String(killed)) }

    /// Moves between lines of a multi-line text; returns false on the first/last line.
    public mutating func lineUp() -> Bool {
        let s = lineStart
        guard s > 0 else { return false }
        let col = cursor - s
        var ps = s - 1
        while ps > 0 && text[ps - 1] != "\n" { ps -= 1 }
        cursor = min(ps + col, s - 1)
        return true
    }
    public mutating func lineDown() -> Bool {
        let e = lineEnd
        guard e < text.count else { return false }
        let col = cursor - lineStart
        var ne = e + 1
        while ne < text.count && text[ne] != "\n" { ne += 1 }
        cursor = min(e + 1 + col, ne)
        return true
    }

    // History.
    public mutating func commit() -> String {
        let s = string
        if !s.trimmingCharactersInSet().isEmpty && history.last != s { history.append(s) }
        clear()
        return s
    }
    public mutating func historyPrevious() {
        guard !history.isEmpty else { return }
        if historyIndex == nil { draft = text; historyIndex = history.count }
        guard let i = historyIndex, i > 0 else { return }
        historyIndex = i - 1
        set(history[i - 1])
    }
    public mutating func historyNext() {
        guard let i = historyIndex else { return }
        if i + 1 >= history.count {
            historyIndex = nil
            text = draft; cursor = text.count
        } else {
            historyIndex = i + 1
            set(history[i + 1])
        }
    }

    /// The text laid out in `columns` (character wrap, "\n" breaks), and the cursor's
    /// (row, column) in it.
    public func layout(columns: Int) -> (lines: [String], cursorRow: Int, cursorCol: Int) {
        let columns = max(2, columns)
        var lines = [""]
        var col = 0
        var cur = (0, 0)
        for (i, ch) in text.enumerated() {
            if i == cursor { cur = (lines.count - 1, col) }
            if ch == "\n" { lines.append(""); col = 0; continue }
            let w = max(1, TextWidth.width(ch))
            if col + w > columns { lines.append(""); col = 0; if i == cursor { cur = (lines.count - 1, 0) } }
            lines[lines.count - 1].append(ch)
            col += w
        }
        if cursor == text.count {
            if col >= columns { lines.append(""); col = 0 }
            cur = (lines.count - 1, col)
        }
        return (lines, cur.0, cur.1)
    }
}

extension String {
    func trimmingCharactersInSet() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}

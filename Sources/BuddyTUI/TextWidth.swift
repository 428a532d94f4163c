import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Display widths of text on a terminal (wcwidth, so CJK and emoji take two columns) and
/// word wrapping by display width. Pure functions; no curses.
public enum TextWidth {
    /// wcwidth answers by the C library's locale: make sure LC_CTYPE is a UTF-8 one
    /// (the user's, else C.UTF-8). Called by the TUI at start and by tests.
    public static func prepareLocale() {
        _ = localeReady
    }

    private static let localeReady: Bool = {
        setlocale(LC_ALL, "")
        func utf8() -> Bool { String(cString: nl_langinfo(nl_item(CODESET))).uppercased().replacingOccurrences(of: "-", with: "") == "UTF8" }
        if !utf8() {
            for name in ["C.UTF-8", "C.utf8", "en_US.UTF-8"] where setlocale(LC_CTYPE, name) != nil { break }
        }
        return utf8()
    }()

    /// The C library's wcwidth (looked up at run time: the Swift Glibc module hides it).
    private static let wcwidthFn: (@convention(c) (Int32) -> Int32)? = {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "wcwidth") else { return nil }
        return unsafeBitCast(sym, to: (@convention(c) (Int32) -> Int32).self)
    }()

    static func wcwidth(_ c: UInt32) -> Int {
        if let f = wcwidthFn { return Int(f(Int32(bitPattern: c))) }
        return 1
    }

    /// Columns a character occupies: 0 for controls and combining marks, 2 for wide ones.
    public static func width(_ c: Character) -> Int {
        prepareLocale()
        let scalars = c.unicodeScalars
        guard let first = scalars.first else { return 0 }
        if first.value < 0x7f { return first.value < 0x20 ? 0 : 1 }
        // Emoji presentation selector or a ZWJ sequence: shown two columns wide.
        if scalars.contains(where: { $0.value == 0xFE0F || $0.value == 0x200D }) { return 2 }
        var w = 0
        for s in scalars {
            let sw = wcwidth(s.value)
            if sw > 0 { w = max(w, sw) }
        }
        return w == 0 && first.properties.generalCategory != .nonspacingMark && first.properties.generalCategory != .enclosingMark
            && first.properties.generalCategory != .format && first.properties.generalCategory != .control ? 1 : w
    }

    public static func width(_ s: some StringProtocol) -> Int {
        var w = 0
        for c in s { w += width(c) }
        return w
    }

    /// The longest prefix of `s` that fits in `columns`.
    public static func prefix(_ s: String, columns: Int) -> String {
        var w = 0
        var out = ""
        for c in s {
            let cw = width(c)
            if w + cw > columns { break }
            w += cw
            out.append(c)
        }
        return out
    }

    /// `s` cut to `columns`, ending with "…" when cut.
    public static func truncate(_ s: String, columns: Int) -> String {
        guard columns > 0 else { return "" }
        if width(s) <= columns { return s }
        return prefix(s, columns: columns - 1) + "…"
    }

    /// `s` padded with spaces to exactly `columns` (cut when longer).
    public static func pad(_ s: String, columns: Int) -> String {
        let t = prefix(s, columns: columns)
        return t + String(repeating: " ", count: max(0, columns - width(t)))
    }

    /// Word wrap to `columns`: paragraphs split at "\n"; lines break at spaces, words
    /// longer than a line are split, and a wide character never straddles the edge.
    /// Tabs become spaces; other control characters are dropped.
    public static func wrap(_ text: String, columns: Int) -> [String] {
        let columns = max(1, columns)
        var lines: [String] = []
        for para in text.split(separator: "\n", omittingEmptySubsequences: false) {
            var line = ""
            var lineW = 0
            // Split into words keeping the spaces in front of them.
            var word = ""
            var wordW = 0
            var spaces = 0
            var atStart = true
            func flushWord() {
                if word.isEmpty { return }
                if atStart && spaces > 0 {
                    // Indentation at the start of a paragraph is kept.
                    let n = min(spaces, columns - 1)
                    line = String(repeating: " ", count: n)
                    lineW = n
                    spaces = 0
                }
                atStart = false
                if lineW > 0 && lineW + spaces + wordW > columns {
                    lines.append(line)
                    line = ""
                    lineW = 0
                } else if lineW > 0 {
                    line += String(repeating: " ", count: spaces)
                    lineW += spaces
                }
                // A word longer than a whole line is split at the edge.
                for c in word {
                    let cw = width(c)
                    if lineW + cw > columns && lineW > 0 {
                        lines.append(line)
                        line = ""
                        lineW = 0
                    }
                    line.append(c)
                    lineW += cw
                }
                word = ""
                wordW = 0
                spaces = 0
            }
            for var c in para {
                if c == "\t" { c = " " }
                if c == " " {
                    if !word.isEmpty { flushWord() }
                    spaces += 1
                    continue
                }
                if let v = c.unicodeScalars.first?.value, v < 0x20 || v == 0x7f { continue }
                word.append(c)
                wordW += width(c)
            }
            flushWord()
            lines.append(line)
        }
        return lines
    }
}

import CNcursesw

// Input decoding: curses key codes and characters into the app's `Key`s. `KeyDecoder` is
// pure (tested without a terminal); `KeyReader` feeds it from the curses screen.

/// Characters to keys, without curses.
public enum KeyDecoder {
    /// What `next` returns when the key after Esc is the start of a bracketed paste.
    public static let pasteStartAfterEscape: UInt32 = 0x1_0000_0

    /// Maps a character code to a key; `next` reads the following code at once (for Alt),
    /// nil when none is waiting.
    public static func decode(_ c: UInt32, next: () -> UInt32?) -> Key {
        switch c {
        case 27:
            guard let n = next() else { return .escape }
            if n == pasteStartAfterEscape { return .pasteStart }
            if n == 13 || n == 10 { return .altEnter }
            if n == 127 || n == 8 { return .altBackspace }
            if let s = Unicode.Scalar(n) { return .alt(Character(s)) }
            return .escape
        case 13: return .enter
        case 10: return .newline
        case 9: return .tab
        case 127, 8: return .backspace
        case 1...26: return .ctrl(Character(Unicode.Scalar(c + 96)!))
        default:
            if let s = Unicode.Scalar(c) { return .char(Character(s)) }
            return .escape
        }
    }
}

/// Reads keys from the curses screen (after `TerminalSession.start`).
struct KeyReader {
    // Codes of our own for the bracketed-paste markers, outside curses' KEY_ range.
    static let pasteStartCode: Int32 = 0x3e0
    static let pasteEndCode: Int32 = 0x3e1
    /// The codes this terminal's terminfo gives Ctrl-Left/Right (0 when it has none).
    private let ctrlLeft: Int32
    private let ctrlRight: Int32

    /// Teaches curses the paste markers and looks up the Ctrl-arrow codes.
    init() {
        define_key("\u{1b}[200~", KeyReader.pasteStartCode)
        define_key("\u{1b}[201~", KeyReader.pasteEndCode)
        ctrlLeft = key_defined("\u{1b}[1;5D")
        ctrlRight = key_defined("\u{1b}[1;5C")
    }

    /// One key, or nil when none is waiting. Esc followed at once by a key is Alt+key.
    func read() -> Key? {
        wtimeout(screen, 0)
        var ch: wint_t = 0
        let r = wget_wch(screen, &ch)
        if r == ERR { return nil }
        if r == KEY_CODE_YES { return functionKey(Int32(ch)) }
        return KeyDecoder.decode(UInt32(ch)) {
            var next: wint_t = 0
            let r2 = wget_wch(screen, &next)
            if r2 == OK { return UInt32(next) }
            if r2 == KEY_CODE_YES && Int32(next) == KeyReader.pasteStartCode { return KeyDecoder.pasteStartAfterEscape }
            return nil
        }
    }

    private func functionKey(_ code: Int32) -> Key {
        switch code {
        case KEY_RESIZE: return .resize
        case KEY_UP: return .up
        case KEY_DOWN: return .down
        case KEY_LEFT: return .left
        case KEY_RIGHT: return .right
        case KEY_HOME: return .home
        case KEY_END: return .end
        case KEY_PPAGE: return .pageUp
        case KEY_NPAGE: return .pageDown
        case KEY_BACKSPACE: return .backspace
        case KEY_DC: return .delete
        case KEY_ENTER: return .enter
        case KEY_F0 + 1: return .f1
        case KeyReader.pasteStartCode: return .pasteStart
        case KeyReader.pasteEndCode: return .pasteEnd
        case ctrlLeft where ctrlLeft > 0: return .ctrlLeft
        case ctrlRight where ctrlRight > 0: return .ctrlRight
        default: return .resize  // unknown function keys just redraw
        }
    }
}

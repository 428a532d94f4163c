import CNcursesw
import Foundation

// Drawing on the curses screen: attributes and colour pairs for the theme's roles, the
// canvas the widgets paint on, and putting a finished frame on the terminal.

/// curses attribute bits (the header's NCURSES_BITS macros do not reach Swift).
enum Attr {
    static let normal: UInt32 = 0
    static let underline: UInt32 = 1 << 17
    static let reverse: UInt32 = 1 << 18
    static let dim: UInt32 = 1 << 20
    static let bold: UInt32 = 1 << 21
    static func pair(_ n: Int) -> UInt32 { UInt32(n & 0xff) << 8 }
}

/// Colour pairs and attributes for each role of a theme at the terminal's colour depth.
final class Palette {
    private(set) var styles: [Role: (attr: UInt32, pair: Int16)] = [:]
    let depth: ColorDepth

    init(depth: ColorDepth) { self.depth = depth }

    /// The colour depth curses can show here, with colours started when there are any.
    static func startColors(environment: [String: String]) -> ColorDepth {
        let depth = ColorDepth.detect(colors: Int(tigetnum("colors")), hasColors: has_colors(), environment: environment)
        guard depth != .mono else { return depth }
        start_color()
        use_default_colors()
        // start_color may raise the number of colours curses reports: ask again.
        return ColorDepth.detect(colors: Int(tigetnum("colors")), hasColors: true, environment: environment)
    }

    static func baseAttr(_ r: Role, mono: Bool) -> UInt32 {
        switch r {
        case .user, .title, .sliderKnob, .statusKey, .error: return Attr.bold
        case .status: return mono ? Attr.reverse : 0
        case .dim, .layerOff, .notice, .border: return mono ? Attr.dim : 0
        case .marker, .sliderWarn, .layerFixed: return Attr.bold
        case let .heat(l): return mono ? (l >= Role.heatLevels / 2 ? Attr.bold : 0) : 0
        default: return 0
        }
    }

    func apply(_ theme: Theme) {
        styles.removeAll()
        let mono = depth == .mono || theme.isMonochrome
        var pair: Int32 = 1
        for role in Role.all {
            let attr = Palette.baseAttr(role, mono: mono)
            guard !mono else { styles[role] = (attr, 0); continue }
            let (fg, bg) = theme.colors(for: role)
            let f = depth.cursesColor(fg) ?? -1, b = depth.cursesColor(bg) ?? -1
            if depth == .truecolor {
                init_extended_pair(pair, Int32(f), Int32(b))
            } else {
                init_pair(Int16(pair), Int16(f), Int16(b))
            }
            styles[role] = (attr, Int16(pair))
            pair += 1
        }
        if let s = styles[.text] { wbkgd(screen, chtype(Attr.pair(Int(s.pair))) | chtype(UInt8(ascii: " "))) }
    }

    func style(_ r: Role) -> (attr: UInt32, pair: Int16) { styles[r] ?? (0, 0) }
}

/// Draws on screen.
final class CursesCanvas: Canvas {
    let palette: Palette
    var width: Int { Int(getmaxx(screen)) }
    var height: Int { Int(getmaxy(screen)) }
    init(palette: Palette) { self.palette = palette }

    func put(_ x: Int, _ y: Int, _ s: String, _ role: Role) {
        let w = width
        guard y >= 0, y < height, x < w, x >= 0 else { return }
        let t = TextWidth.prefix(s, columns: w - x)
        if t.isEmpty { return }
        let st = palette.style(role)
        wattr_set(screen, attr_t(st.attr), st.pair, nil)
        var ws = t.unicodeScalars.map { wchar_t(bitPattern: $0.value) }
        ws.append(0)
        mvwaddnwstr(screen, Int32(y), Int32(x), ws, Int32(ws.count - 1))
    }

    /// Paints the app and puts the frame on the terminal in one piece.
    func present(_ app: ChatApp) {
        werase(screen)
        let cursor = app.draw(on: self)
        if let (x, y) = cursor, !app.showHelp {
            curs_set(1)
            wmove(screen, Int32(y), Int32(x))
        } else {
            curs_set(0)
        }
        wnoutrefresh(screen)
        // Synchronized output (DEC mode 2026) where supported: the frame appears whole.
        TerminalSession.rawWrite("\u{1b}[?2026h")
        doupdate()
        TerminalSession.rawWrite("\u{1b}[?2026l")
    }

    /// The next `present` repaints every cell (after a resize, Ctrl-L or a new theme).
    func repaintAll() { clearok(screen, true) }
}

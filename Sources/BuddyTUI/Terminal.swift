import BuddyEngine
import CNcursesw
import Foundation

// The curses layer: terminal setup and restore, signal handlers, stderr capture, colour
// pairs for the theme's roles, key decoding, and the canvas that draws on the screen.
// Only the UI thread calls into this file.

// State the signal handlers need (they cannot capture).
nonisolated(unsafe) private var cursesActive = false
nonisolated(unsafe) private var savedStderr: Int32 = -1
nonisolated(unsafe) private var captureFd: Int32 = -1
/// curses' stdscr, as initscr returned it (the C global is off limits in Swift 6).
nonisolated(unsafe) private var screen: UnsafeMutablePointer<WINDOW>?

/// curses attribute bits (the header's NCURSES_BITS macros do not reach Swift).
enum Attr {
    static let normal: UInt32 = 0
    static let underline: UInt32 = 1 << 17
    static let reverse: UInt32 = 1 << 18
    static let dim: UInt32 = 1 << 20
    static let bold: UInt32 = 1 << 21
    static func pair(_ n: Int) -> UInt32 { UInt32(n & 0xff) << 8 }
}

/// Stops curses and puts the terminal and stderr back. Safe to call twice; used by the
/// normal exit path and by the signal handlers.
private func restoreTerminal() {
    if cursesActive {
        cursesActive = false
        endwin()
        rawWrite("\u{1b}[?2004l")
    }
    if savedStderr >= 0 {
        dup2(savedStderr, 2)
        close(savedStderr)
        savedStderr = -1
        if captureFd >= 0 {
            // Show what was written to stderr while curses owned the screen.
            lseek(captureFd, 0, SEEK_SET)
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(captureFd, &buf, buf.count)
                if n <= 0 { break }
                _ = write(2, buf, n)
            }
            close(captureFd)
            captureFd = -1
        }
    }
}

/// Bytes straight to the terminal, outside curses' buffer.
private func rawWrite(_ s: String) {
    _ = s.withCString { write(1, $0, strlen($0)) }
}

private func installSignalHandlers() {
    for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT] {
        signal(sig) { s in
            restoreTerminal()
            _exit(s == SIGINT ? 130 : 128 + s)
        }
    }
    for sig in [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP] {
        signal(sig) { s in
            restoreTerminal()
            signal(s, SIG_DFL)
            raise(s)
        }
    }
    signal(SIGPIPE, SIG_IGN)
}

/// Engine events cross to the UI thread through here: a locked queue plus a pipe the UI
/// loop polls, so a token wakes it at once.
public final class EventMailbox: @unchecked Sendable {
    private let lock = NSLock()
    private var events: [EngineEvent] = []
    let readFd: Int32
    private let writeFd: Int32

    public init() {
        var fds: [Int32] = [0, 0]
        pipe(&fds)
        readFd = fds[0]
        writeFd = fds[1]
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    }

    public func post(_ e: EngineEvent) {
        lock.lock()
        events.append(e)
        lock.unlock()
        var b: UInt8 = 1
        _ = write(writeFd, &b, 1)
    }

    public func take() -> [EngineEvent] {
        var buf = [UInt8](repeating: 0, count: 256)
        while read(readFd, &buf, buf.count) > 0 {}
        lock.lock()
        defer { lock.unlock() }
        let e = events
        events.removeAll()
        return e
    }
}

/// Colour pairs and attributes for each role of a theme at the terminal's colour depth.
final class Palette {
    private(set) var styles: [Role: (attr: UInt32, pair: Int16)] = [:]
    let depth: ColorDepth

    init(depth: ColorDepth) { self.depth = depth }

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
}

/// The terminal front end: sets up curses, runs the event loop, and always restores the
/// terminal.
public enum TUI {
    public struct Options: Sendable {
        public var theme = "default"
        public init() {}
    }

    static let pasteStartCode: Int32 = 0x3e0
    static let pasteEndCode: Int32 = 0x3e1

    public struct Unavailable: Error, CustomStringConvertible {
        public let description: String
    }

    /// Whether curses can drive this terminal (initscr would exit the process otherwise).
    public static func check() throws {
        // setupterm lives in term.h, which the module map leaves out: look it up at run time.
        typealias SetupTerm = @convention(c) (UnsafePointer<CChar>?, Int32, UnsafeMutablePointer<Int32>?) -> Int32
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "setupterm") else { return }
        var err: Int32 = 0
        if unsafeBitCast(sym, to: SetupTerm.self)(nil, 1, &err) != OK {
            let term = ProcessInfo.processInfo.environment["TERM"] ?? ""
            throw Unavailable(description: "the terminal type '\(term)' is unknown to curses (terminfo)")
        }
    }

    /// Runs until the user quits; returns the exit status (0, or 130 after Ctrl-C twice).
    public static func run(engine: ChatEngine, mailbox: EventMailbox, options: Options) throws -> Int32 {
        try check()
        TextWidth.prepareLocale()
        let (theme, warnings) = Theme.load(options.theme)

        // Capture stderr while curses owns the screen.
        var tmpl = Array("/tmp/buddy-stderr-XXXXXX".utf8CString)
        let fd = mkstemp(&tmpl)
        if fd >= 0 {
            unlink(String(cString: tmpl))
            savedStderr = dup(2)
            captureFd = fd
            dup2(fd, 2)
        }
        installSignalHandlers()
        setenv("ESCDELAY", "25", 0)
        screen = initscr()
        cursesActive = true
        defer { restoreTerminal() }
        raw()
        noecho()
        nonl()
        keypad(screen, true)
        set_escdelay(25)
        intrflush(screen, false)
        meta(screen, true)
        define_key("\u{1b}[200~", pasteStartCode)
        define_key("\u{1b}[201~", pasteEndCode)
        let ctrlLeft = key_defined("\u{1b}[1;5D"), ctrlRight = key_defined("\u{1b}[1;5C")
        rawWrite("\u{1b}[?2004h")

        let env = ProcessInfo.processInfo.environment
        var depth = ColorDepth.detect(colors: Int(tigetnum("colors")), hasColors: has_colors(), environment: env)
        if depth != .mono {
            start_color()
            use_default_colors()
            depth = ColorDepth.detect(colors: Int(tigetnum("colors")), hasColors: true, environment: env)
        }
        let palette = Palette(depth: depth)
        palette.apply(depth == .mono ? Theme.builtin : theme)
        let canvas = CursesCanvas(palette: palette)

        let app = ChatApp()
        for w in warnings { app.conversation.append(.error, w) }
        if depth == .mono && env["NO_COLOR"].map({ !$0.isEmpty }) == true { app.conversation.append(.notice, "NO_COLOR is set: monochrome") }

        var exitCode: Int32?
        var dirty = true
        var fds = [pollfd(fd: 0, events: Int16(POLLIN), revents: 0), pollfd(fd: mailbox.readFd, events: Int16(POLLIN), revents: 0)]
        while exitCode == nil {
            if dirty {
                werase(screen)
                let cursor = app.draw(on: canvas)
                if let (x, y) = cursor, !app.showHelp {
                    curs_set(1)
                    wmove(screen, Int32(y), Int32(x))
                } else {
                    curs_set(0)
                }
                wnoutrefresh(screen)
                // Synchronized output (DEC mode 2026) where supported: the frame appears whole.
                rawWrite("\u{1b}[?2026h")
                doupdate()
                rawWrite("\u{1b}[?2026l")
                dirty = false
            }
            fds[0].revents = 0
            fds[1].revents = 0
            _ = poll(&fds, 2, 250)

            // Keys.
            wtimeout(screen, 0)
            while exitCode == nil, let key = readKey(ctrlLeft: ctrlLeft, ctrlRight: ctrlRight) {
                dirty = true
                for action in app.handle(key) {
                    switch action {
                    case let .engine(cmd): engine.send(cmd)
                    case let .quit(code): exitCode = code
                    case .redraw: clearok(screen, true)
                    case .showHelp: app.showHelp = true
                    case let .setTheme(name):
                        let (t, w) = Theme.load(name)
                        for m in w { app.conversation.append(.error, m) }
                        if depth == .mono {
                            app.conversation.append(.notice, "this terminal shows no colours (or NO_COLOR is set)")
                        } else {
                            palette.apply(t)
                            app.conversation.append(.notice, "theme: \(t.name)")
                        }
                        clearok(screen, true)
                    }
                }
            }
            // Engine events.
            let events = mailbox.take()
            if !events.isEmpty { dirty = true }
            for e in events { app.handle(e) }
        }
        engine.send(.stop)
        return exitCode ?? 0
    }

    /// One key, or nil when none is waiting. Esc followed at once by a key is Alt+key.
    static func readKey(ctrlLeft: Int32, ctrlRight: Int32) -> Key? {
        var ch: wint_t = 0
        let r = wget_wch(screen, &ch)
        if r == ERR { return nil }
        if r == KEY_CODE_YES {
            let code = Int32(ch)
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
            case pasteStartCode: return .pasteStart
            case pasteEndCode: return .pasteEnd
            case ctrlLeft where ctrlLeft > 0: return .ctrlLeft
            case ctrlRight where ctrlRight > 0: return .ctrlRight
            default: return .resize  // unknown function keys just redraw
            }
        }
        return decodeChar(UInt32(ch)) {
            var next: wint_t = 0
            let r2 = wget_wch(screen, &next)
            if r2 == OK { return UInt32(next) }
            if r2 == KEY_CODE_YES && Int32(next) == pasteStartCode { return 0x1_0000_0 }
            return nil
        }
    }

    /// Maps a character code to a key; `next` reads the following code at once (for Alt).
    static func decodeChar(_ c: UInt32, next: () -> UInt32?) -> Key {
        switch c {
        case 27:
            guard let n = next() else { return .escape }
            if n == 0x1_0000_0 { return .pasteStart }
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

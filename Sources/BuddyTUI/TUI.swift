import BuddyEngine
import CNcursesw
import Foundation

/// The terminal front end's loop: starts the terminal session, then waits on the keyboard
/// and the engine's mailbox, feeds both to `ChatApp`, carries out its actions and draws.
/// The terminal is restored on every way out (see `TerminalSession`).
public enum TUI {
    public struct Options: Sendable {
        public var theme = "default"
        public init() {}
    }

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

        TerminalSession.start()
        defer { TerminalSession.restore() }
        let keys = KeyReader()
        let env = ProcessInfo.processInfo.environment
        let depth = Palette.startColors(environment: env)
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
                canvas.present(app)
                dirty = false
            }
            fds[0].revents = 0
            fds[1].revents = 0
            _ = poll(&fds, 2, 250)

            // Keys.
            while exitCode == nil, let key = keys.read() {
                dirty = true
                for action in app.handle(key) {
                    switch action {
                    case let .engine(cmd): engine.send(cmd)
                    case let .quit(code): exitCode = code
                    case .redraw: canvas.repaintAll()
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
                        canvas.repaintAll()
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
}

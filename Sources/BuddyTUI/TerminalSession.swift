import CNcursesw
import Foundation

// Terminal setup and restore: curses on and off, stderr captured while curses owns the
// screen, and the signal handlers that put the terminal back on every way out (normal quit,
// a thrown error, SIGINT/SIGTERM/SIGHUP/SIGQUIT, and crashes). Only the UI thread starts or
// stops the session; the signal handlers only restore.

// State the signal handlers need (C handlers cannot capture, so it lives at file scope).
nonisolated(unsafe) private var cursesActive = false
nonisolated(unsafe) private var savedStderr: Int32 = -1
nonisolated(unsafe) private var captureFd: Int32 = -1
/// curses' stdscr, as initscr returned it (the C global is off limits in Swift 6). Set while
/// a session is active; the drawing and input code use it.
nonisolated(unsafe) var screen: UnsafeMutablePointer<WINDOW>?

enum TerminalSession {
    /// Captures stderr, installs the signal handlers and starts curses in raw mode with
    /// bracketed paste. Every return path of the caller must call `restore()`.
    static func start() {
        // Whatever is written to stderr while curses owns the screen would garble it: keep
        // it in an unlinked file and show it after the screen is restored.
        var template = Array("/tmp/buddy-stderr-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        if fd >= 0 {
            unlink(template)   // the name mkstemp filled in
            savedStderr = dup(2)
            captureFd = fd
            dup2(fd, 2)
        }
        installSignalHandlers()
        // A short Esc delay keeps Esc (stop a reply) snappy while Alt+key still decodes.
        setenv("ESCDELAY", "25", 0)
        screen = initscr()
        cursesActive = true
        raw()
        noecho()
        nonl()
        keypad(screen, true)
        set_escdelay(25)
        intrflush(screen, false)
        meta(screen, true)
        rawWrite("\u{1b}[?2004h")
    }

    /// Stops curses and puts the terminal and stderr back. Safe to call twice, and from a
    /// signal handler (it only calls curses' endwin and plain system calls).
    static func restore() {
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

    /// Bytes straight to the terminal, outside curses' buffer (mode switches curses does not
    /// know about: bracketed paste, synchronized output).
    static func rawWrite(_ s: String) {
        _ = s.withCString { write(1, $0, strlen($0)) }
    }

    private static func installSignalHandlers() {
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT] {
            signal(sig) { s in
                TerminalSession.restore()
                _exit(s == SIGINT ? 130 : 128 + s)
            }
        }
        // A crash still restores the terminal, then dies of the same signal (core dumps and
        // the parent's view of the exit stay as they would be).
        for sig in [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP] {
            signal(sig) { s in
                TerminalSession.restore()
                signal(s, SIG_DFL)
                raise(s)
            }
        }
        signal(SIGPIPE, SIG_IGN)
    }
}

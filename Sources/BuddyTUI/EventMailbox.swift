import BuddyEngine
import Foundation

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

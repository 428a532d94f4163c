import BuddyRouting
import Foundation

/// A one-line progress bar with an ETA on stderr (only when stderr is a terminal;
/// otherwise one line per ~10% so logs stay readable).
final class ProgressBar: ProgressDisplay {
    let label: String
    /// Work units expected; a caller whose estimate grows may raise it.
    var total: Int
    let start = Date()
    let isTTY = isatty(2) != 0
    var lastPrinted = -1

    init(_ label: String, total: Int) { self.label = label; self.total = max(total, 1) }

    func update(_ done: Int, detail: String = "") {
        // An estimate that turned out short must not break the bar: it just fills.
        if done > total { total = done }
        let frac = Double(done) / Double(total)
        let elapsed = Date().timeIntervalSince(start)
        let eta = done > 0 ? elapsed / Double(done) * Double(total - done) : 0
        let width = 30
        let filled = Int(frac * Double(width))
        let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
        let line = String(format: "%@ %@ %d/%d  %.0fs elapsed, ETA %.0fs  %@", label, bar, done, total, elapsed, eta, detail)
        if isTTY {
            FileHandle.standardError.write(("\r\u{1B}[K" + line).data(using: .utf8)!)
            if done >= total { FileHandle.standardError.write("\n".data(using: .utf8)!) }
        } else {
            let decile = Int(frac * 10)
            if decile != lastPrinted || done >= total {
                lastPrinted = decile
                FileHandle.standardError.write((line + "\n").data(using: .utf8)!)
            }
        }
    }
}

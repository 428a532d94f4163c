import BuddyCore
import Foundation

/// A count of work done that a long computation advances; the executable draws it as a
/// progress bar on stderr, tests ignore it.
public protocol ProgressDisplay: AnyObject {
    /// Work units expected; a computation whose estimate grows may raise it.
    var total: Int { get set }
    func update(_ done: Int, detail: String)
}

/// Where a training, calibration or evaluation driver sends what it has to say: result lines
/// (the executable prints them to stdout), notes (stderr) and progress displays.
public struct Reporter {
    public var line: (String) -> Void
    public var note: (String) -> Void
    public var progress: (_ label: String, _ total: Int) -> ProgressDisplay

    public init(line: @escaping (String) -> Void, note: @escaping (String) -> Void,
                progress: @escaping (_ label: String, _ total: Int) -> ProgressDisplay) {
        self.line = line
        self.note = note
        self.progress = progress
    }

    /// Says nothing and shows no progress.
    public static var silent: Reporter { Reporter(line: { _ in }, note: { _ in }, progress: { SilentProgress(total: $1) }) }
}

/// A progress display nobody sees.
public final class SilentProgress: ProgressDisplay {
    public var total: Int
    public init(total: Int) { self.total = total }
    public func update(_ done: Int, detail: String) {}
}

/// A failure a command reports to its user, in words (the executable prints the description).
public struct ToolError: Error, CustomStringConvertible, Equatable {
    public let description: String
    /// The command line is at fault: shown with the usage, as the argument parser's own errors are.
    public let isUsage: Bool

    public init(_ description: String, usage: Bool = false) {
        self.description = description
        self.isUsage = usage
    }

    public static func usage(_ description: String) -> ToolError { ToolError(description, usage: true) }
}

extension BudgetCurve {
    /// A curve measured elsewhere (or made up, in tests).
    public static func measured(id: String, features: [Float], kl: [Double], tokens: Int) -> BudgetCurve {
        BudgetCurve(id: id, features: features, kl: kl, tokens: tokens)
    }
}

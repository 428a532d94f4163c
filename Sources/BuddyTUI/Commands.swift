import BuddyCore
import BuddyEngine
import Foundation

/// Slash commands typed in the input box.
public enum SlashCommand: Equatable, Sendable {
    case budget(Double), auto, router(String), system(String?), reset, save(String?), load(String), theme(String), help, quit

    public static let usage = """
        /budget 0.6 | 60%    set the depth budget (fraction of routable layers)
        /auto                toggle the automatic budget (Budget Predictor)
        /router NAME|PATH    buddy, shortgpt, sleb, last, random, even, or a router file
        /system TEXT         set the system prompt (empty: the model's own)
        /reset               forget the conversation
        /save [FILE]         save the conversation as JSON
        /load FILE           load a saved conversation
        /theme NAME          default, light, mono, ansi16 or a .theme file
        /help  /quit
        """

    /// nil when `line` is not a command; otherwise the command or a message saying what is wrong.
    public static func parse(_ line: String) -> Result<SlashCommand, CommandError>? {
        let t = line.trimmingCharactersInSet()
        guard t.hasPrefix("/"), !t.hasPrefix("//") else { return nil }
        let parts = t.dropFirst().split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        let name = parts.first.map(String.init)?.lowercased() ?? ""
        let arg = parts.count > 1 ? String(parts[1]).trimmingCharactersInSet() : ""
        func need(_ what: String) -> Result<SlashCommand, CommandError> { .failure(CommandError("/\(name) needs \(what)")) }
        switch name {
        case "budget", "b":
            guard !arg.isEmpty else { return need("a budget, e.g. /budget 0.85 or /budget 85%") }
            var v = arg
            let percent = v.hasSuffix("%")
            if percent { v.removeLast() }
            guard var b = Double(v), b.isFinite else { return .failure(CommandError("'\(arg)' is not a budget (try 0.85 or 85%)")) }
            if percent || b > 1 { b /= 100 }
            guard b > 0, b <= 1 else { return .failure(CommandError("the budget must be in (0, 1], i.e. 1%–100%")) }
            // The same clamp as the slider and the engine, so the slider shows what will run.
            return .success(.budget(Budget.clamp(b)))
        case "auto": return .success(.auto)
        case "router":
            guard !arg.isEmpty else { return need("a name (buddy, shortgpt, sleb, last, random, even) or a router file") }
            return .success(.router(arg))
        case "system": return .success(.system(arg.isEmpty ? nil : arg))
        case "reset", "clear": return .success(.reset)
        case "save": return .success(.save(arg.isEmpty ? nil : arg))
        case "load":
            guard !arg.isEmpty else { return need("a file") }
            return .success(.load(arg))
        case "theme":
            guard !arg.isEmpty else { return need("a theme name (default, light, mono, ansi16)") }
            return .success(.theme(arg))
        case "help", "h", "?": return .success(.help)
        case "quit", "exit", "q": return .success(.quit)
        default: return .failure(CommandError("unknown command /\(name) (try /help)"))
        }
    }

    /// What the command does: the one mapping from slash commands to engine commands, for
    /// the full-screen chat and line mode alike. `autoBudgetOn` is the engine's last word on
    /// the automatic budget, which `/auto` toggles.
    public func action(autoBudgetOn: Bool, now: Date = Date()) -> AppAction {
        switch self {
        case let .budget(b): return .engine(.setBudget(b))
        case .auto: return .engine(.setAuto(!autoBudgetOn))
        case let .router(r): return .engine(.setRouter(r))
        case let .system(s): return .engine(.setSystemPrompt(s))
        case .reset: return .engine(.reset)
        case let .save(f): return .engine(.save(path: f ?? SlashCommand.defaultSaveName(now)))
        case let .load(f): return .engine(.load(path: f))
        case let .theme(n): return .setTheme(n)
        case .help: return .showHelp
        case .quit: return .quit(0)
        }
    }

    /// A default file name for /save: buddy-chat-YYYYMMDD-HHMMSS.json.
    public static func defaultSaveName(_ date: Date = Date()) -> String {
        let f = DateFormatter()
        f.dateFormat = "yyyyMMdd-HHmmss"
        f.locale = Locale(identifier: "en_US_POSIX")
        return "buddy-chat-\(f.string(from: date)).json"
    }
}

public struct CommandError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// A line typed in the chat, as both front ends read it.
public enum ChatInput: Equatable, Sendable {
    /// Nothing but blanks.
    case empty
    /// A message for the model.
    case message(String)
    /// A slash command's action.
    case action(AppAction)
    /// A slash command that could not be read, and why.
    case invalid(CommandError)

    /// Reads `line`: a slash command becomes its action, anything else a message, where a
    /// leading "//" sends a message that starts with "/".
    public static func interpret(_ line: String, autoBudgetOn: Bool, now: Date = Date()) -> ChatInput {
        let text = line.trimmingCharactersInSet()
        if text.isEmpty { return .empty }
        switch SlashCommand.parse(text) {
        case let .success(command)?: return .action(command.action(autoBudgetOn: autoBudgetOn, now: now))
        case let .failure(error)?: return .invalid(error)
        case nil: return .message(text.hasPrefix("//") ? String(text.dropFirst()) : text)
        }
    }
}

import BuddyCore
import Foundation

// What the command line chooses, parsed and resolved against a model: budgets, stand-ins,
// the router for a budget. The executable's options hold these; the drivers take them.

/// The budgets of a comma-separated list such as 1,0.9,0.8, each in (0, 1].
public func parseBudgets(_ text: String) throws -> [Double] {
    let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    let values = parts.compactMap(Double.init)
    guard values.count == parts.count, !values.isEmpty, values.allSatisfy({ $0 > 0 && $0 <= 1 }) else {
        throw ToolError.usage("budgets must be a comma-separated list of numbers in (0, 1], e.g. 1,0.9,0.8")
    }
    return values
}

/// --stand-ins: what a skipped layer adds to the residual stream.
/// auto (default): the model's shipped stand-ins (`routers/stand-ins.bin`) when it has them;
/// on: those, and an error when there are none; off: nothing (the layer vanishes); a path:
/// that stand-in file.
public enum StandInChoice: Equatable, Sendable {
    case auto, on, off
    case file(String)

    public init?(argument: String) {
        switch argument.lowercased() {
        case "auto": self = .auto
        case "on": self = .on
        case "off": self = .off
        case "": return nil
        default: self = .file(argument)
        }
    }
    public var defaultValueDescription: String { "auto" }

    /// The stand-ins to install (nil: plain skipping), checked against the model; `note` hears
    /// why auto runs without them when the model's file does not fit (default: stderr).
    public func resolve(model: LanguageModel, note: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }) throws -> StandIns? {
        do {
            switch self {
            case .off: return nil
            case .auto:
                let (s, mismatch) = try Routers.autoStandIns(model: model)
                if let mismatch { note("note: running without stand-ins: \(mismatch)") }
                return s
            case .on:
                guard let s = try Routers.standIns(model: model) else {
                    throw ToolError("--stand-ins on: this model has no stand-in file (routers/\(StandInFile.defaultFileName)); make one with `buddy calibrate stand-ins`")
                }
                return s
            case let .file(path): return try Routers.standIns(model: model, path: path)
            }
        } catch let e as StandInError { throw ToolError("\(e)") }
    }

    /// The choice as typed on a command line (for the notes of what a command made).
    public var argument: String {
        switch self {
        case .auto: "auto"
        case .on: "on"
        case .off: "off"
        case let .file(path): path
        }
    }

    /// The label eval tables and JSON records use.
    public func label(_ resolved: StandIns?) -> String { resolved == nil ? "off" : "on" }
}

/// A budget as typed: a number in (0, 1] or `auto` (the Budget Predictor chooses).
public enum BudgetChoice: Equatable, Sendable {
    case fixed(Double)
    case auto

    public init?(argument: String) {
        if argument.lowercased() == "auto" { self = .auto; return }
        guard let v = Double(argument), v > 0, v <= 1 else { return nil }
        self = .fixed(v)
    }
    /// The fixed budget, nil for auto.
    public var value: Double? { if case let .fixed(v) = self { return v } else { return nil } }
    public var defaultValueDescription: String { value.map { "\($0)" } ?? "auto" }
}

/// Refuses a worker thread count outside 1...256.
public func validateThreads(_ threads: Int) throws {
    guard (1...256).contains(threads) else { throw ToolError.usage("--threads must be between 1 and 256") }
}

extension Routers {
    /// The selector to install for `router` at `budget`, or nil when the full model runs
    /// (budget 1 needs no router, and runs bit for bit the same computation). An automatic
    /// budget is not a selector: `autoBudgetPredictor` chooses it before the prompt runs.
    /// With `steering`, the router spends the budget unevenly along the reply (`BudgetSteering`).
    public static func selector(router spec: String, budget b: Double, rerouteEvery: Int, steering: Bool = false, model: LanguageModel) throws -> BudgetedLayerSelector? {
        if b >= 1 && spec == "buddy" { return nil }
        do {
            let s = try Routers.make(spec, model: model, budget: b)
            (s as? DecisionModule)?.rerouteEvery = rerouteEvery
            return steering ? BudgetSteering.forProduct(s) : s
        } catch RoutingError.unknownRouter(let name) where name == "buddy" {
            throw ToolError("no trained router found for this model (routers/buddy-router.json); train one with `buddy train`, or pass --router shortgpt|sleb|last|random|even")
        }
    }

    /// The Budget Predictor `--budget auto` needs (`path` nil: the one shipped for the model);
    /// loading it already refuses one whose features do not fit the model.
    public static func autoBudgetPredictor(model: LanguageModel, path: String? = nil) throws -> BudgetPredictor {
        do {
            return try Routers.predictor(model: model, path: path)
        } catch {
            throw ToolError("--budget auto needs a budget predictor: \(error); train one with `buddy train predictor` (see docs/TRAINING.md)")
        }
    }
}

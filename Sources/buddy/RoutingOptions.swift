import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

extension KVPolicy: ExpressibleByArgument {}

/// A budget as typed: a number in (0, 1] or `auto` (the Budget Predictor chooses).
enum BudgetArgument: ExpressibleByArgument, Equatable {
    case fixed(Double)
    case auto

    init?(argument: String) {
        if argument.lowercased() == "auto" { self = .auto; return }
        guard let v = Double(argument), v > 0, v <= 1 else { return nil }
        self = .fixed(v)
    }
    /// The fixed budget, nil for auto.
    var value: Double? { if case let .fixed(v) = self { return v } else { return nil } }
    var defaultValueDescription: String { value.map { "\($0)" } ?? "auto" }
}

/// --budget, --router, --kv-policy: how deep the model runs for each token.
struct RoutingOptions: ParsableArguments {
    @Option(name: .long, help: "Compute budget in (0, 1]: the fraction of the routable layers (all but the first and last) run for every token; 1 runs the full model. auto: the Budget Predictor picks one per prompt (see --quality-tolerance).")
    var budget: BudgetArgument = .fixed(1)

    @Option(name: .long, help: "For --budget auto: the largest predicted drift from the full model (mean KL, nats per token) accepted.")
    var qualityTolerance: Double = BudgetPredictor.defaultTolerance

    @Option(name: .long, help: "Which layers run under the budget: buddy (the trained Decision Module), shortgpt, sleb, last, random, even, or a router/ranking file.")
    var router: String = "buddy"

    @Option(name: .long, help: "What a skipped layer leaves in the KV cache: fill (compute only its K/V: about 6 % of a layer; the default, since the router mixes layer sets token by token), mask (later tokens ignore it), zero (zero-filled entries, the paper's choice).")
    var kvPolicy: KVPolicy = .fill

    @Option(name: .long, help: "What a skipped layer adds instead of nothing: on (the model's stand-ins, routers/stand-ins.bin), off (plain skip), or a stand-in file. Default: on when the model has stand-ins.")
    var standIns: StandInChoice = .auto

    @Option(name: .long, help: "Re-decide the layer set every N decode steps (Decision Module only).")
    var rerouteEvery: Int = 1

    func validate() throws {
        guard qualityTolerance > 0 else { throw ValidationError("--quality-tolerance must be positive") }
        guard rerouteEvery >= 1 else { throw ValidationError("--reroute-every must be at least 1") }
    }

    /// The selector to install, or nil when the full model runs (budget 1 needs no router,
    /// and runs bit for bit the same computation).
    func makeSelector(model: LanguageModel, budget: Double? = nil, router: String? = nil) throws -> BudgetedLayerSelector? {
        let b = budget ?? self.budget.value ?? 1
        let spec = router ?? self.router
        let auto = budget == nil && self.budget == .auto
        if b >= 1 && spec == "buddy" && !auto { return nil }
        do {
            let s = try Routers.make(spec, model: model, budget: b)
            (s as? DecisionModule)?.rerouteEvery = rerouteEvery
            if auto {
                let predictor: BudgetPredictor
                do { predictor = try Routers.predictor(model: model) } catch {
                    throw CLIError("--budget auto needs a budget predictor: \(error); train one with `buddy train predictor` (see docs/TRAINING.md)")
                }
                return try AutoBudgetSelector(inner: s, predictor: predictor, tolerance: qualityTolerance, config: model.config)
            }
            return s
        } catch RoutingError.unknownRouter(let name) where name == "buddy" {
            throw CLIError("no trained router found for this model (routers/buddy-router.json); train one with `buddy train`, or pass --router shortgpt|sleb|last|random|even")
        }
    }
}

func parseBudgets(_ text: String) throws -> [Double] {
    let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    let values = parts.compactMap(Double.init)
    guard values.count == parts.count, !values.isEmpty, values.allSatisfy({ $0 > 0 && $0 <= 1 }) else {
        throw ValidationError("budgets must be a comma-separated list of numbers in (0, 1], e.g. 1,0.9,0.8")
    }
    return values
}

/// --stand-ins: what a skipped layer adds to the residual stream.
/// auto (default): the model's shipped stand-ins (`routers/stand-ins.bin`) when it has them;
/// on: those, and an error when there are none; off: nothing (the layer vanishes); a path:
/// that stand-in file.
enum StandInChoice: ExpressibleByArgument, Equatable {
    case auto, on, off
    case file(String)

    init?(argument: String) {
        switch argument.lowercased() {
        case "auto": self = .auto
        case "on": self = .on
        case "off": self = .off
        case "": return nil
        default: self = .file(argument)
        }
    }
    var defaultValueDescription: String { "auto" }

    /// The stand-ins to install (nil: plain skipping), checked against the model.
    func resolve(model: LanguageModel) throws -> StandIns? {
        do {
            switch self {
            case .off: return nil
            case .auto:
                let (s, mismatch) = try Routers.autoStandIns(model: model)
                if let mismatch { FileHandle.standardError.write(Data("note: running without stand-ins: \(mismatch)\n".utf8)) }
                return s
            case .on:
                guard let s = try Routers.standIns(model: model) else {
                    throw CLIError("--stand-ins on: this model has no stand-in file (routers/\(StandInFile.defaultFileName)); make one with `buddy calibrate stand-ins`")
                }
                return s
            case let .file(path): return try Routers.standIns(model: model, path: path)
            }
        } catch let e as StandInError { throw CLIError("\(e)") }
    }

    /// The label eval tables and JSON records use.
    func label(_ resolved: StandIns?) -> String { resolved == nil ? "off" : "on" }
}

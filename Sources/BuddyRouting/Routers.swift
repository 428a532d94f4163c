import BuddyCore
import Foundation

/// Builds a router from what a user typed: a name or a file path.
public enum Routers {
    /// Names accepted besides file paths.
    public static let names = ["buddy", "shortgpt", "sleb", "last", "random", "even"]

    /// - spec: "last", "random", "even", "shortgpt", "sleb", "buddy" or a path to a ranking
    ///   or router file. Named rankings and the default router are looked up in `routers/`
    ///   next to the model file, then in the checkout's `routers/`.
    public static func make(_ spec: String, model: LanguageModel, budget: Double = 1) throws -> BudgetedLayerSelector {
        let layers = model.config.layers
        let selector: BudgetedLayerSelector
        switch spec {
        case "last": selector = StaticRanking.dropLast(layers: layers)
        case "random": selector = StaticRanking.random(layers: layers, seed: 0)
        case "even": selector = StaticRanking.evenlySpread(layers: layers)
        default:
            guard let path = locate(spec, model: model) else { throw RoutingError.unknownRouter(spec) }
            selector = try RouterFile.load(path: path, model: model)
        }
        selector.budget = budget
        return selector
    }

    /// What a router spec stands for, for caches of measurements made with it: the spec and a
    /// digest (FNV-64) of the file it loads, or the spec alone for the built-in rankings.
    public static func identity(_ spec: String, model: LanguageModel) -> String {
        guard let path = locate(spec, model: model), let data = FileManager.default.contents(atPath: path) else { return spec }
        return spec + " " + String(format: "%016llx", data.withUnsafeBytes { StandInFile.fnv64($0) })
    }

    /// The layers a selector runs at `budget` when that choice is the same for every token
    /// (static rankings, and Decision Modules whose learned part is zero); nil for a router
    /// that decides per token. Evaluations use it to run sequences as one batch, which gives
    /// the same logits as token-by-token routing.
    public static func fixedMask(_ selector: BudgetedLayerSelector?, budget: Double) -> [Bool]? {
        if let r = selector as? StaticRanking { return r.mask(budget: budget) }
        if let m = selector as? DecisionModule { return m.fixedMask(budget: budget) }
        return nil
    }

    /// Whether an evaluation may teacher-force a sequence through `selector` as one batch and
    /// get token-by-token routing's numbers: no router, a fixed set, or one that decides per row.
    public static func canBatch(_ selector: BudgetedLayerSelector?, budget: Double) -> Bool {
        selector == nil || fixedMask(selector, budget: budget) != nil || selector is RowwiseLayerSelector
    }

    /// The shipped budget predictor for this model, if one is found.
    public static func predictor(model: LanguageModel, path: String? = nil) throws -> BudgetPredictor {
        guard let p = path ?? locate("budget-predictor", model: model) else { throw RoutingError.noBudgetPredictor }
        return try RouterFile.loadPredictor(path: p, model: model)
    }

    /// The shipped stand-ins for this model (`routers/stand-ins.bin`), nil when there are none;
    /// a file that exists but does not fit the model is an error, not silently ignored.
    public static func standIns(model: LanguageModel, path: String? = nil) throws -> StandIns? {
        guard let p = path ?? locate("stand-ins", model: model) else { return nil }
        return try StandInFile.load(path: p, config: model.config, fingerprint: model.fingerprint)
    }

    /// What `--stand-ins auto` installs: the stand-ins found for this model, or nil when there
    /// are none or the file found was made for another model (the fingerprint ties it to one
    /// file, so the same weights requantised, or any other GGUF, is "another model"). Without
    /// this, the default `auto` made every command refuse such a model even at full depth,
    /// where stand-ins are never used. A damaged file, or one of the wrong shape, is still an
    /// error; `on` and an explicit file still refuse a mismatch.
    public static func autoStandIns(model: LanguageModel, path: String? = nil) throws -> (standIns: StandIns?, mismatch: String?) {
        do { return (try standIns(model: model, path: path), nil) } catch let e as StandInError {
            guard case .wrongModel = e else { throw e }
            return (nil, "\(e)")
        }
    }

    /// Where a named router lives, if anywhere. In each routers/ directory, a subdirectory
    /// named after the model file (routers/gemma-3-270m-q4_k_m/ for
    /// models/gemma-3-270m-q4_k_m.gguf) comes first, so several models' files can ship side by
    /// side; files directly in routers/ belong to the default model, so a model that has its own
    /// subdirectory never falls back to them (Gemma would otherwise be told on every command
    /// that SmolLM2's stand-ins do not fit it).
    public static func locate(_ spec: String, model: LanguageModel) -> String? {
        let fm = FileManager.default
        if spec.contains("/") || spec.hasSuffix(".json") { return spec }
        let file = spec == "buddy" ? "buddy-router.json" : spec == "budget-predictor" ? "budget-predictor.json"
            : spec == "stand-ins" ? StandInFile.defaultFileName : "\(spec)-ranking.json"
        var dirs = [URL(fileURLWithPath: model.path).deletingLastPathComponent().appendingPathComponent("../routers").standardized.path,
                    fm.currentDirectoryPath + "/routers"]
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        for _ in 0..<4 { dirs.append(dir.appendingPathComponent("routers").path); dir = dir.deletingLastPathComponent() }
        let stem = URL(fileURLWithPath: model.path).deletingPathExtension().lastPathComponent
        for d in dirs where fm.fileExists(atPath: d + "/" + stem + "/" + file) { return d + "/" + stem + "/" + file }
        let hasOwnDirectory = dirs.contains { d in
            var isDirectory: ObjCBool = false
            return fm.fileExists(atPath: d + "/" + stem, isDirectory: &isDirectory) && isDirectory.boolValue
        }
        if hasOwnDirectory { return nil }
        return dirs.map { $0 + "/" + file }.first { fm.fileExists(atPath: $0) }
    }
}

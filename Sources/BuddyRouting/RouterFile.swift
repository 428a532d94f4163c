import BuddyCore
import Foundation

/// Router files (JSON), versioned and tied to the model they were made for.
///
///     {"format": "buddy-router", "version": 7, "kind": "ranking" | "decision-module" | "budget-predictor",
///      "method": "shortgpt", "model_fingerprint": "…", "layers": 30,
///      "ranking": [routable layers, most important first],          // kind "ranking"
///      "dim": 576, "kv_dim": 192,                                    // kind "decision-module"
///      "input_mean": [...], "input_scale": [...],
///      "choices": [{"kept": k, "sets": [[layers]], "names": ["search", ...],
///                   "weights": [...], "bias": [...]}, ...],         // one per k = 1...routable
///      "prompt_sets": [{"kept": k, "set": [layers]}, ...],         // optional, either kind (version 6)
///      "router": "buddy+steer", "feature_dim": 960, "budgets": [grid], // kind "budget-predictor"
///      "choices": [budgets auto may choose],                         // (version 7; older: the grid)
///      "full_depth_share": 0.5, "recent_predictions": [...],         // optional: the share rule (AutoBudget)
///      "mean": [...], "scale": [...], "weights": [...], "bias": [...],
///      "notes": "how it was made"}
///
/// Decision modules of versions 1–4 (an MLP over a prior table, a context gate, token
/// switches) are a retired format: loading one fails with an error that says so.
/// Writing goes through a temporary file and a rename, so an existing file is never lost.
public enum RouterFile {
    public static let format = "buddy-router"
    /// Version 5 replaced the decision module's form (candidate sets and scorers per k); version
    /// 6 added prompt sets (an older build would run a version-6 file without them, so it must
    /// refuse it); version 7 added the budget predictor's `choices` (older predictors choose
    /// from every grid budget). Rankings and budget predictors of versions 1–6 and decision
    /// modules of versions 5–6 are still read.
    public static let version = 7
    /// The first version whose decision modules this build reads.
    public static let decisionModuleVersion = 5

    /// Reads a router-format file and checks what every kind shares: JSON object, format,
    /// version and the model fingerprint.
    static func header(path: String, model: LanguageModel) throws -> [String: Any] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RoutingError.badRouterFile(path: path, reason: "cannot read the file")
        }
        guard let obj = try? JSONSerialization.jsonObject(with: data), let j = obj as? [String: Any] else {
            throw RoutingError.badRouterFile(path: path, reason: "not a JSON object")
        }
        guard j["format"] as? String == format else { throw RoutingError.badRouterFile(path: path, reason: "not a buddy router file (format field)") }
        guard let v = j["version"] as? Int else { throw RoutingError.badRouterFile(path: path, reason: "missing version") }
        guard (1...version).contains(v) else { throw RoutingError.unsupportedVersion(path: path, found: v, supported: version) }
        guard let fp = j["model_fingerprint"] as? String else { throw RoutingError.badRouterFile(path: path, reason: "missing model_fingerprint") }
        guard fp == model.fingerprint else { throw RoutingError.wrongModel(path: path, fileFingerprint: fp, modelFingerprint: model.fingerprint) }
        return j
    }

    /// A numeric array field, each element checked to be a number.
    static func numbers(_ j: [String: Any], _ key: String, path: String) throws -> [Double] {
        guard let a = j[key] as? [Any] else { throw RoutingError.badRouterFile(path: path, reason: "missing \(key)") }
        return try a.map {
            guard let n = $0 as? NSNumber else { throw RoutingError.badRouterFile(path: path, reason: "\(key) holds a non-number") }
            return n.doubleValue
        }
    }

    public static func load(path: String, model: LanguageModel) throws -> BudgetedLayerSelector {
        let j = try header(path: path, model: model)
        let layers = model.config.layers
        guard j["layers"] as? Int == layers else { throw RoutingError.badRouterFile(path: path, reason: "layer count differs from the model's \(layers)") }
        let method = j["method"] as? String ?? "router"
        switch j["kind"] as? String {
        case "ranking":
            guard let ranking = j["ranking"] as? [Int] else { throw RoutingError.badRouterFile(path: path, reason: "missing ranking") }
            let r: StaticRanking
            do { r = try StaticRanking(name: method, layers: layers, ranking: ranking) } catch {
                throw RoutingError.badRouterFile(path: path, reason: "\(error)")
            }
            r.promptSets = try PromptSets.read(j, routable: layers - 2, path: path)
            return r
        case "decision-module":
            guard let v = j["version"] as? Int, v >= decisionModuleVersion else {
                throw RoutingError.retiredFormat(path: path, found: j["version"] as? Int ?? 0,
                    what: "a Decision Module of the retired form (an MLP over tables of layer sets, a context gate, token switches)",
                    remedy: "train a new one with `buddy train router`")
            }
            guard let dim = j["dim"] as? Int, let kvDim = j["kv_dim"] as? Int else {
                throw RoutingError.badRouterFile(path: path, reason: "missing dim or kv_dim")
            }
            guard dim == model.config.dim, kvDim == model.config.kvDim else {
                throw RoutingError.badRouterFile(path: path, reason: "dimensions \(dim)/\(kvDim) differ from the model's \(model.config.dim)/\(model.config.kvDim)")
            }
            let w = DecisionModule.Weights(inputMean: try numbers(j, "input_mean", path: path).map(Float.init),
                                           inputScale: try numbers(j, "input_scale", path: path).map(Float.init),
                                           choices: try choices(j, path: path))
            let m: DecisionModule
            do {
                m = try DecisionModule(name: method, layers: layers, dim: dim, kvDim: kvDim, weights: w)
            } catch let RoutingError.badRouterFile(_, reason) {
                throw RoutingError.badRouterFile(path: path, reason: reason)
            }
            m.promptSets = try PromptSets.read(j, routable: layers - 2, path: path)
            return m
        default:
            throw RoutingError.badRouterFile(path: path, reason: "unknown kind \(String(describing: j["kind"]))")
        }
    }

    static func choices(_ j: [String: Any], path: String) throws -> [DecisionModule.Choice] {
        guard let list = j["choices"] as? [Any] else { throw RoutingError.badRouterFile(path: path, reason: "missing choices (a list)") }
        guard list.count <= 1024 else { throw RoutingError.badRouterFile(path: path, reason: "choices has \(list.count) entries") }
        return try list.enumerated().map { i, item in
            let field = "choices[\(i)]"
            guard let c = item as? [String: Any] else { throw RoutingError.badRouterFile(path: path, reason: "\(field) is not an object") }
            guard let kept = c["kept"] as? Int else { throw RoutingError.badRouterFile(path: path, reason: "missing \(field).kept") }
            guard let sets = c["sets"] as? [[Int]] else { throw RoutingError.badRouterFile(path: path, reason: "missing \(field).sets (lists of layers)") }
            guard let names = c["names"] as? [String] else { throw RoutingError.badRouterFile(path: path, reason: "missing \(field).names") }
            func floats(_ key: String) throws -> [Float] {
                guard c[key] != nil else { return [] }
                do { return try numbers(c, key, path: path).map(Float.init) } catch let RoutingError.badRouterFile(_, reason) {
                    throw RoutingError.badRouterFile(path: path, reason: "\(field): " + reason)
                }
            }
            return DecisionModule.Choice(kept: kept, sets: sets, names: names, weights: try floats("weights"), bias: try floats("bias"))
        }
    }

    /// Loads a budget predictor ("kind": "budget-predictor"), checked against the model.
    public static func loadPredictor(path: String, model: LanguageModel) throws -> BudgetPredictor {
        let j = try header(path: path, model: model)
        guard j["kind"] as? String == "budget-predictor" else { throw RoutingError.badRouterFile(path: path, reason: "not a budget predictor (kind field)") }
        func numbers(_ key: String) throws -> [Double] { try RouterFile.numbers(j, key, path: path) }
        guard let d = j["feature_dim"] as? Int else { throw RoutingError.badRouterFile(path: path, reason: "missing feature_dim") }
        guard d == 2 * model.config.kvDim + model.config.dim else {
            throw RoutingError.badRouterFile(path: path, reason: "feature_dim \(d) does not fit this model")
        }
        func share() throws -> Double? {
            guard let v = j["full_depth_share"] else { return nil }
            guard let x = (v as? NSNumber)?.doubleValue, !(v is Bool) else { throw RoutingError.badRouterFile(path: path, reason: "full_depth_share must be a number") }
            return x
        }
        do {
            return try BudgetPredictor(
                budgets: try numbers("budgets"), choices: j["choices"] == nil ? nil : try numbers("choices"), featureDim: d, mean: try numbers("mean").map(Float.init),
                scale: try numbers("scale").map(Float.init), weights: try numbers("weights").map(Float.init),
                bias: try numbers("bias").map(Float.init), router: j["router"] as? String ?? "buddy",
                fullDepthShare: try share(), recentSeed: j["recent_predictions"] == nil ? [] : try numbers("recent_predictions"))
        } catch let RoutingError.badRouterFile(_, reason) {
            throw RoutingError.badRouterFile(path: path, reason: reason)
        }
    }

    public static func save(_ p: BudgetPredictor, model: LanguageModel, notes: String, to path: String) throws {
        var o: [String: Any] = [
            "format": format, "version": version, "kind": "budget-predictor", "router": p.router,
            "model_fingerprint": model.fingerprint, "layers": model.config.layers, "feature_dim": p.featureDim,
            "budgets": p.budgets, "choices": p.choices, "mean": p.mean, "scale": p.scale, "weights": p.weights, "bias": p.bias, "notes": notes,
        ]
        if let share = p.fullDepthShare { o["full_depth_share"] = share; o["recent_predictions"] = p.recentSeed }
        try write(o, to: path)
    }

    public static func save(_ ranking: StaticRanking, model: LanguageModel, notes: String, to path: String) throws {
        var o: [String: Any] = [
            "format": format, "version": version, "kind": "ranking", "method": ranking.name,
            "model_fingerprint": model.fingerprint, "layers": ranking.layers, "ranking": ranking.ranking, "notes": notes,
        ]
        if !ranking.promptSets.isEmpty { o["prompt_sets"] = ranking.promptSets.json }
        try write(o, to: path)
    }

    public static func save(_ m: DecisionModule, model: LanguageModel, notes: String, to path: String) throws {
        let w = m.weights
        let choices: [[String: Any]] = w.choices.map { c in
            var o: [String: Any] = ["kept": c.kept, "sets": c.sets, "names": c.names]
            if c.candidates > 1 { o["weights"] = c.weights; o["bias"] = c.bias }
            return o
        }
        var o: [String: Any] = [
            "format": format, "version": version, "kind": "decision-module", "method": m.name,
            "model_fingerprint": model.fingerprint, "layers": m.layers, "dim": m.dim, "kv_dim": m.kvDim,
            "input_mean": w.inputMean, "input_scale": w.inputScale, "choices": choices, "notes": notes,
        ]
        if !m.promptSets.isEmpty { o["prompt_sets"] = m.promptSets.json }
        try write(o, to: path)
    }

    /// Atomic write: temporary file in the same directory, fsync, rename.
    public static func write(_ object: [String: Any], to path: String) throws {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        try AtomicFile.write(data, to: path)
    }
}

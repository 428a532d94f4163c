import BuddyCore
import Foundation

/// Router files (JSON), versioned and tied to the model they were made for.
///
///     {"format": "buddy-router", "version": 1, "kind": "ranking" | "decision-module",
///      "method": "shortgpt", "model_fingerprint": "…", "layers": 30,
///      "ranking": [routable layers, most important first],          // kind "ranking"
///      "dim": 576, "kv_dim": 192, "hidden": 64,                      // kind "decision-module"
///      "input_mean": [...], "input_scale": [...], "w1": [...], "b1": [...],
///      "w2": [...], "b2": [...], "prior": [...], "prior_weight": 1.0,
///      "prior_by_count": [...],                                      // optional, version 2
///      "context_gate": {"weights": [...], "bias": b, "prior_by_count": [...]},  // optional, version 3
///      "token_switches": [{"kept": k, "table": "prose" | "conversation",          // optional, version 4
///                          "alternative": [layers], "weights": [...], "bias": b}, ...],
///      "notes": "how it was made"}
///
/// Writing goes through a temporary file and a rename, so an existing file is never lost.
public enum RouterFile {
    public static let format = "buddy-router"
    /// Version 2 added the optional "prior_by_count" table of decision modules, version 3 the
    /// optional "context_gate" ({"weights", "bias", "prior_by_count"}), version 4 the optional
    /// "token_switches"; older files are still read.
    public static let version = 4

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
            do { return try StaticRanking(name: method, layers: layers, ranking: ranking) } catch {
                throw RoutingError.badRouterFile(path: path, reason: "\(error)")
            }
        case "decision-module":
            func floats(_ key: String) throws -> [Float] { try numbers(j, key, path: path).map(Float.init) }
            guard let dim = j["dim"] as? Int, let kvDim = j["kv_dim"] as? Int, let hidden = j["hidden"] as? Int else {
                throw RoutingError.badRouterFile(path: path, reason: "missing dim, kv_dim or hidden")
            }
            guard dim == model.config.dim, kvDim == model.config.kvDim else {
                throw RoutingError.badRouterFile(path: path, reason: "dimensions \(dim)/\(kvDim) differ from the model's \(model.config.dim)/\(model.config.kvDim)")
            }
            guard (1...4096).contains(hidden) else { throw RoutingError.badRouterFile(path: path, reason: "absurd hidden size \(hidden)") }
            let w = DecisionModule.Weights(
                inputMean: try floats("input_mean"), inputScale: try floats("input_scale"),
                w1: try floats("w1"), b1: try floats("b1"), w2: try floats("w2"), b2: try floats("b2"),
                prior: try floats("prior"), priorWeight: (j["prior_weight"] as? NSNumber)?.floatValue ?? 1,
                priorByCount: j["prior_by_count"] == nil ? nil : try floats("prior_by_count"),
                gate: try contextGate(j, path: path), tokenSwitches: try tokenSwitches(j, path: path))
            do {
                return try DecisionModule(name: method, layers: layers, dim: dim, kvDim: kvDim, hidden: hidden, weights: w)
            } catch let RoutingError.badRouterFile(_, reason) {
                throw RoutingError.badRouterFile(path: path, reason: reason)
            }
        default:
            throw RoutingError.badRouterFile(path: path, reason: "unknown kind \(String(describing: j["kind"]))")
        }
    }

    static func contextGate(_ j: [String: Any], path: String) throws -> DecisionModule.ContextGate? {
        guard let raw = j["context_gate"] else { return nil }
        guard let g = raw as? [String: Any] else { throw RoutingError.badRouterFile(path: path, reason: "context_gate is not an object") }
        guard let bias = g["bias"] as? NSNumber else { throw RoutingError.badRouterFile(path: path, reason: "missing context_gate.bias") }
        func floats(_ key: String) throws -> [Float] {
            do { return try numbers(g, key, path: path).map(Float.init) } catch let RoutingError.badRouterFile(_, reason) {
                throw RoutingError.badRouterFile(path: path, reason: "context_gate: " + reason)
            }
        }
        return DecisionModule.ContextGate(weights: try floats("weights"), bias: bias.floatValue, priorByCount: try floats("prior_by_count"))
    }

    static func tokenSwitches(_ j: [String: Any], path: String) throws -> [DecisionModule.TokenSwitch] {
        guard let raw = j["token_switches"] else { return [] }
        guard let list = raw as? [Any] else { throw RoutingError.badRouterFile(path: path, reason: "token_switches is not a list") }
        return try list.enumerated().map { i, item in
            let field = "token_switches[\(i)]"
            guard let t = item as? [String: Any] else { throw RoutingError.badRouterFile(path: path, reason: "\(field) is not an object") }
            guard let kept = t["kept"] as? Int else { throw RoutingError.badRouterFile(path: path, reason: "missing \(field).kept") }
            guard let table = t["table"] as? String, table == "prose" || table == "conversation" else {
                throw RoutingError.badRouterFile(path: path, reason: "\(field).table must be \"prose\" or \"conversation\"")
            }
            guard let alternative = t["alternative"] as? [Int] else { throw RoutingError.badRouterFile(path: path, reason: "missing \(field).alternative (a list of layers)") }
            guard let bias = t["bias"] as? NSNumber else { throw RoutingError.badRouterFile(path: path, reason: "missing \(field).bias") }
            let weights: [Float]
            do { weights = try numbers(t, "weights", path: path).map(Float.init) } catch let RoutingError.badRouterFile(_, reason) {
                throw RoutingError.badRouterFile(path: path, reason: "\(field): " + reason)
            }
            return DecisionModule.TokenSwitch(kept: kept, conversation: table == "conversation", alternative: alternative, weights: weights, bias: bias.floatValue)
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
        do {
            return try BudgetPredictor(
                budgets: try numbers("budgets"), featureDim: d, mean: try numbers("mean").map(Float.init),
                scale: try numbers("scale").map(Float.init), weights: try numbers("weights").map(Float.init),
                bias: try numbers("bias").map(Float.init), router: j["router"] as? String ?? "buddy")
        } catch let RoutingError.badRouterFile(_, reason) {
            throw RoutingError.badRouterFile(path: path, reason: reason)
        }
    }

    public static func save(_ p: BudgetPredictor, model: LanguageModel, notes: String, to path: String) throws {
        try write([
            "format": format, "version": version, "kind": "budget-predictor", "router": p.router,
            "model_fingerprint": model.fingerprint, "layers": model.config.layers, "feature_dim": p.featureDim,
            "budgets": p.budgets, "mean": p.mean, "scale": p.scale, "weights": p.weights, "bias": p.bias, "notes": notes,
        ], to: path)
    }

    public static func save(_ ranking: StaticRanking, model: LanguageModel, notes: String, to path: String) throws {
        try write([
            "format": format, "version": version, "kind": "ranking", "method": ranking.name,
            "model_fingerprint": model.fingerprint, "layers": ranking.layers, "ranking": ranking.ranking, "notes": notes,
        ], to: path)
    }

    public static func save(_ m: DecisionModule, model: LanguageModel, notes: String, to path: String) throws {
        let w = m.weights
        var object: [String: Any] = [
            "format": format, "version": version, "kind": "decision-module", "method": m.name,
            "model_fingerprint": model.fingerprint, "layers": m.layers, "dim": m.dim, "kv_dim": m.kvDim, "hidden": m.hidden,
            "input_mean": w.inputMean, "input_scale": w.inputScale, "w1": w.w1, "b1": w.b1, "w2": w.w2, "b2": w.b2,
            "prior": w.prior, "prior_weight": w.priorWeight, "notes": notes,
        ]
        if let t = w.priorByCount { object["prior_by_count"] = t }
        if let g = w.gate { object["context_gate"] = ["weights": g.weights, "bias": g.bias, "prior_by_count": g.priorByCount] as [String: Any] }
        if !w.tokenSwitches.isEmpty {
            object["token_switches"] = w.tokenSwitches.map {
                ["kept": $0.kept, "table": $0.conversation ? "conversation" : "prose", "alternative": $0.alternative,
                 "weights": $0.weights, "bias": $0.bias] as [String: Any]
            }
        }
        try write(object, to: path)
    }

    /// Atomic write: temporary file in the same directory, fsync, rename.
    public static func write(_ object: [String: Any], to path: String) throws {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        try AtomicFile.write(data, to: path)
    }
}

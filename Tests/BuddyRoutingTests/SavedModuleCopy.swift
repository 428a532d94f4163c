import BuddyCore
import BuddyRouting
import BuddyTestSupport
import Foundation
import XCTest

/// A decision module saved in a temporary directory, and edited copies of its JSON for
/// checking what the loader refuses. The directory goes away with the value's `remove()`.
struct SavedModuleCopy {
    let dir: URL
    let path: String

    init(_ module: DecisionModule, model: LanguageModel, tag: String) throws {
        dir = try TestSupport.scratchDirectory(tag)
        path = dir.appendingPathComponent("r.json").path
        try RouterFile.save(module, model: model, notes: "test", to: path)
    }

    /// A copy written at the current format version, with `edit` applied to its JSON object.
    func edited(_ edit: (inout [String: Any]) -> Void) throws -> String {
        var j = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        XCTAssertEqual(j["version"] as? Int, RouterFile.version)
        edit(&j)
        let p = dir.appendingPathComponent("edit-\(UUID().uuidString).json").path
        try JSONSerialization.data(withJSONObject: j).write(to: URL(fileURLWithPath: p))
        return p
    }

    func remove() { try? FileManager.default.removeItem(at: dir) }
}

/// Decision Modules for tests, made without training.
enum TestModules {
    /// At every k in `scored` (default: every k from 2 to routable − 1) `candidates` sets — the
    /// prefixes of random rankings — and a random scorer of weights in ±`scale`, so that
    /// decisions vary from token to token; other ks run one set. Inputs are not normalised.
    static func withScorers(model: LanguageModel, seed: UInt64, scored: Set<Int>? = nil, candidates: Int = 3, scale: Float = 0.05) throws -> DecisionModule {
        let L = model.config.layers, routable = L - 2, inDim = 2 * model.config.kvDim + model.config.dim
        let rankings = (0..<candidates).map { StaticRanking.random(layers: L, seed: seed + UInt64($0)) }
        var rng = SeededRNG(seed: seed ^ 0x5eed)
        let choices = (1...routable).map { k -> DecisionModule.Choice in
            let sets = rankings.map { Array($0.ranking.prefix(k)).sorted() }
            guard (scored ?? Set(2..<routable)).contains(k) else { return .init(kept: k, sets: [sets[0]], names: ["random"]) }
            return .init(kept: k, sets: sets, names: (0..<candidates).map { "random \($0)" },
                         weights: (0..<candidates * inDim).map { _ in (rng.nextUnitFloat() * 2 - 1) * scale },
                         bias: (0..<candidates).map { _ in rng.nextUnitFloat() - 0.5 })
        }
        return try DecisionModule(layers: L, dim: model.config.dim, kvDim: model.config.kvDim, weights: .init(
            inputMean: [Float](repeating: 0, count: inDim), inputScale: [Float](repeating: 1, count: inDim), choices: choices))
    }
}

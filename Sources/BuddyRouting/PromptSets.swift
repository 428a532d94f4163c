import BuddyCore
import Foundation

/// The layer sets a router runs for a prompt at the budget, one per number k of routable
/// layers that has one; at any other k the prompt is decided as any chunk is.
///
/// Why a prompt gets its own set: every reply token reads the prompt's KV cache, so a layer
/// the prompt skips costs the whole reply, while a decode step's set costs one token. At 0.8
/// the Decision Module's prompt decision skips layer 17, and running 17 instead of 27 for
/// the prompt alone cut chat KL by 7 % on the training questions (docs/TRAINING.md, "The
/// prompt's own set"). `PromptSetSearch` finds a set per budget on training chat; routers
/// of every kind hold one (`DecisionModule`, `StaticRanking`), so the static baselines can be
/// given the same capability.
public struct PromptSets: Sendable, Equatable {
    /// k → the routable layers (ascending, exactly k of 1...layers-2) a prompt runs.
    public private(set) var sets: [Int: [Int]]
    /// Routable layers of the model the sets belong to.
    public let routable: Int
    /// k → the set as a mask over every layer (first and last run), built once.
    private var masks: [Int: [Bool]]

    /// No prompt sets: every prompt is decided as any chunk is (`set(_:kept:)` adds them).
    public static func none(routable: Int) -> PromptSets { PromptSets(routable: routable) }

    private init(routable: Int) {
        self.routable = routable
        sets = [:]
        masks = [:]
    }

    public var isEmpty: Bool { sets.isEmpty }

    /// Installs (or with nil removes) the set for k, refusing one that does not run exactly k
    /// distinct routable layers.
    public mutating func set(_ layers: [Int]?, kept k: Int) throws {
        guard (1...max(routable, 1)).contains(k) else { throw PromptSetError.badSet("k = \(k) is outside 1...\(routable)") }
        guard let layers else { sets[k] = nil; masks[k] = nil; return }
        let sorted = layers.sorted()
        guard sorted.count == k, Set(sorted).count == k, sorted.allSatisfy({ (1...routable).contains($0) }) else {
            throw PromptSetError.badSet("the set for k = \(k) must hold \(k) distinct routable layers (1...\(routable)), found \(layers)")
        }
        sets[k] = sorted
        masks[k] = LayerBudget.mask(layers: routable + 2, chosen: Set(sorted))
    }

    /// The mask a prompt runs at `budget`, or nil when that budget's k has no set of its own.
    public func mask(budget: Double) -> [Bool]? {
        masks[LayerBudget.routableCount(budget: budget, layers: routable + 2)]
    }

    /// As stored in router files: [{"kept": k, "set": [layers]}, ...] by ascending k.
    public var json: [[String: Any]] {
        sets.keys.sorted().map { ["kept": $0, "set": sets[$0]!] }
    }

    /// Reads the "prompt_sets" field of a router file (absent: none), checked like the rest.
    static func read(_ j: [String: Any], routable: Int, path: String) throws -> PromptSets {
        guard let field = j["prompt_sets"] else { return .none(routable: routable) }
        guard let list = field as? [Any], list.count <= 1024 else {
            throw RoutingError.badRouterFile(path: path, reason: "prompt_sets is not a list of at most 1024 entries")
        }
        var sets = PromptSets.none(routable: routable)
        for (i, item) in list.enumerated() {
            guard let o = item as? [String: Any], let k = o["kept"] as? Int, let set = o["set"] as? [Int] else {
                throw RoutingError.badRouterFile(path: path, reason: "prompt_sets[\(i)] needs \"kept\" (a number) and \"set\" (a list of layers)")
            }
            guard sets.sets[k] == nil else { throw RoutingError.badRouterFile(path: path, reason: "prompt_sets lists k = \(k) twice") }
            do { try sets.set(set, kept: k) } catch { throw RoutingError.badRouterFile(path: path, reason: "prompt_sets[\(i)]: \(error)") }
        }
        return sets
    }
}

public enum PromptSetError: Error, CustomStringConvertible {
    case badSet(String)
    public var description: String {
        switch self { case let .badSet(reason): return reason }
    }
}

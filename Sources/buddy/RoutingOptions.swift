import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

extension KVPolicy: ExpressibleByArgument {}

/// --budget, --router, --kv-policy: how deep the model runs for each token.
struct RoutingOptions: ParsableArguments {
    @Option(name: .long, help: "Compute budget in (0, 1]: the fraction of the routable layers (all but the first and last) run for every token. 1 runs the full model.")
    var budget: Double = 1.0

    @Option(name: .long, help: "Which layers run under the budget: buddy (the trained Decision Module), shortgpt, sleb, last, random, even, or a router/ranking file.")
    var router: String = "buddy"

    @Option(name: .long, help: "What a skipped layer leaves in the KV cache: mask (later tokens ignore it), zero (zero-filled entries, the paper's choice), fill (compute only K/V for it).")
    var kvPolicy: KVPolicy = .mask

    @Option(name: .long, help: "Re-decide the layer set every N decode steps (Decision Module only).")
    var rerouteEvery: Int = 1

    func validate() throws {
        guard budget > 0, budget <= 1 else { throw ValidationError("--budget must be in (0, 1], e.g. 0.85") }
        guard rerouteEvery >= 1 else { throw ValidationError("--reroute-every must be at least 1") }
    }

    /// The selector to install, or nil when the full model runs (budget 1 needs no router,
    /// and runs bit for bit the same computation).
    func makeSelector(model: LanguageModel, budget: Double? = nil, router: String? = nil) throws -> BudgetedLayerSelector? {
        let b = budget ?? self.budget
        let spec = router ?? self.router
        if b >= 1 && spec == "buddy" { return nil }
        do {
            let s = try Routers.make(spec, model: model, budget: b)
            (s as? DecisionModule)?.rerouteEvery = rerouteEvery
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

import BuddyCore
import Foundation

/// A token sequence the layer-set search scores: at every position in `scored` the routed
/// model's next-token distribution is compared with the full model's.
public struct SearchSequence: Sendable {
    public let tokens: [Int32]
    public let scored: Range<Int>
    /// How many leading tokens are a chat prompt (0: plain text); the chat runs them at full depth.
    public let prompt: Int
    public init(tokens: [Int32], scored: Range<Int>, prompt: Int = 0) {
        precondition(scored.lowerBound >= 0 && scored.upperBound <= tokens.count, "scored positions outside the sequence")
        precondition(prompt >= 0 && prompt <= tokens.count, "prompt longer than the sequence")
        self.tokens = tokens
        self.scored = scored
        self.prompt = prompt
    }
}

/// Budget-specific layer sets: for each number k of routable layers kept, the set whose
/// routed next-token distributions stay closest to the full model's (mean KL from full depth
/// over the scored positions of the training sequences), found by sequential floating
/// backward selection (Pudil et al., 1994):
///
///  * exclusion: from the current set, drop the layer whose removal raises the KL least
///    (a SLEB step, but on KL and on the training mix of text and chat);
///  * conditional inclusion: then, while putting back one of the dropped layers gives a set of
///    that size better than the best one seen so far, take it and go on from there.
///
/// Unlike a ranking, the sets need not be nested: the best 25 layers need not contain the
/// best 22. The search therefore can only match or improve on greedy removal at every k it
/// visits (on the training data).
///
/// Candidates share the work below their first changed layer: per sequence the current set
/// runs once, keeping the residual stream before every layer, and a candidate restarts from
/// the stream before the first layer where it differs (the KV cache of the layers below holds
/// the same values for both).
public final class LayerSetSearch {
    public let model: LanguageModel
    public let sequences: [SearchSequence]
    let scorer: PerplexityEvaluator
    /// Per sequence: [scored × vocab] full-depth probabilities.
    var fullProbs: [UnsafeMutablePointer<Float>] = []
    /// Per sequence and scored position: Σ p log p of the full distribution.
    var fullNegEntropy: [[Double]] = []
    /// [maxLength × vocab] logits of one candidate's scored rows
    let logits: UnsafeMutablePointer<Float>
    /// [layers × maxLength × dim] residual stream before each layer, for one sequence
    var before: [Float]
    public let scoredCount: Int
    public private(set) var evaluations = 0
    /// Put-back steps taken by the last search (resumed ones included).
    public private(set) var inclusions = 0
    /// Told the evaluations done so far, fractions included, after every sequence of a batch of
    /// candidates: a batch of a hundred sets takes many minutes on long sequences.
    public var onProgress: ((Double) -> Void)?
    /// What skipped layers leave behind in every candidate run: nothing (nil) or their stand-ins.
    /// Full depth, and so the reference distributions, is the same either way.
    public var standIns: StandIns? {
        get { scorer.standIns }
        set { scorer.standIns = newValue }
    }

    /// Runs every sequence at full depth once (the reference distributions); `progress` is told
    /// (sequences done, total) after each, as this takes minutes for a few dozen chunks.
    public init(model: LanguageModel, sequences: [SearchSequence], threads: Int = 2,
                progress: ((Int, Int) -> Void)? = nil) {
        let c = model.config
        let maxLength = sequences.map(\.tokens.count).max() ?? 1
        self.model = model
        self.sequences = sequences
        scorer = PerplexityEvaluator(model: model, contextSize: maxLength, threads: threads)
        logits = .allocate(capacity: maxLength * c.vocabSize)
        before = [Float](repeating: 0, count: c.layers * maxLength * c.dim)
        scoredCount = sequences.reduce(0) { $0 + $1.scored.count }
        let vocab = c.vocabSize
        let all = [Bool](repeating: true, count: c.layers)
        for s in sequences {
            let probs = UnsafeMutablePointer<Float>.allocate(capacity: max(1, s.scored.count) * vocab)
            run(s, from: 0, runs: all)
            var negEntropy: [Double] = []
            for (r, _) in s.scored.enumerated() {
                negEntropy.append(LogProbabilities.probabilities(logits + r * vocab, into: probs + r * vocab, count: vocab))
            }
            fullProbs.append(probs)
            fullNegEntropy.append(negEntropy)
            progress?(fullProbs.count, sequences.count)
        }
    }
    deinit { logits.deallocate(); fullProbs.forEach { $0.deallocate() } }

    /// Runs sequence s from layer `from` (the residual stream before it must be in the batch,
    /// or from = 0) with `runs`, leaving the scored rows' logits in `logits`.
    func run(_ s: SearchSequence, from: Int, runs: [Bool], keepStreams: Bool = false) {
        let t = model.transformer, b = scorer.batch, cache = scorer.cache
        let n = s.tokens.count, dim = model.config.dim
        if from == 0 { cache.truncate(to: 0) }
        t.routedForward(s.tokens[...], start: 0, b, cache, routing: .fixed(runs), fromLayer: from) { l in
            if keepStreams { self.before.withUnsafeMutableBufferPointer { $0.baseAddress!.advanced(by: l * n * dim).update(from: b.x, count: n * dim) } }
        }
        t.batchLogits(rows: s.scored, b, logits)
    }

    /// Σ over the scored rows in `logits` of KL(full ‖ routed) for sequence i.
    func klSum(sequence i: Int) -> Double { rowKL(sequence: i).reduce(0, +) }

    /// KL(full ‖ routed) of each scored row in `logits`, for sequence i.
    func rowKL(sequence i: Int) -> [Double] {
        let vocab = model.config.vocabSize, rows = sequences[i].scored.count
        let pool = scorer.batch.pool
        let tasks = min(rows, 4 * pool.threads)
        var kl = [Double](repeating: 0, count: rows)
        kl.withUnsafeMutableBufferPointer { out in
            let out = out.baseAddress!
            pool.parallelFor(tasks) { task in
                for r in stride(from: task, to: rows, by: tasks) {
                    out[r] = LogProbabilities.divergence(referenceProbabilities: self.fullProbs[i] + r * vocab, negativeEntropy: self.fullNegEntropy[i][r],
                                                         logits: self.logits + r * vocab, count: vocab)
                }
            }
        }
        return kl
    }

    /// KL from full depth at every scored position (sequences in order) when `runs` run for
    /// every token: the per-token costs a Decision Module scorer is trained on.
    public func positionKL(_ runs: [Bool]) -> [Double] {
        var out: [Double] = []
        out.reserveCapacity(scoredCount)
        for (i, s) in sequences.enumerated() { run(s, from: 0, runs: runs); out += rowKL(sequence: i) }
        evaluations += 1
        return out
    }

    /// Mean KL from full depth when `selector` decides every token's layers from the context so
    /// far (one decision per row of each teacher-forced sequence, as `buddy eval` routes) and
    /// skipped layers leave the cache as `policy` says. Unlike `objective`, tokens may run
    /// different sets, so this measures what mixing them costs.
    public func routedKL(_ selector: DecisionModule, policy: KVPolicy) -> Double {
        routedPositionKL(selector, policy: policy).reduce(0, +) / Double(max(scoredCount, 1))
    }

    /// KL from full depth at every scored position (sequences in order) under `selector`'s
    /// per-token decisions, as `routedKL` runs them.
    public func routedPositionKL(_ selector: DecisionModule, policy: KVPolicy) -> [Double] {
        let t = model.transformer, b = scorer.batch, cache = scorer.cache
        var out: [Double] = []
        out.reserveCapacity(scoredCount)
        for (i, s) in sequences.enumerated() {
            selector.resetContext()
            cache.truncate(to: 0)
            t.routedForward(s.tokens[...], start: 0, b, cache, routing: .perRow(selector), policy: policy)
            t.batchLogits(rows: s.scored, b, logits)
            out += rowKL(sequence: i)
        }
        evaluations += 1
        return out
    }

    /// The Decision Module's raw inputs ([2·kvDim + dim], `RoutingInput`) at every scored
    /// position (sequences in order, as `positionKL` orders its costs). Layer 0 is all it runs.
    public func routingInputs() -> [[Float]] {
        let t = model.transformer, b = scorer.batch, cache = scorer.cache
        var out: [[Float]] = []
        out.reserveCapacity(scoredCount)
        for s in sequences {
            cache.truncate(to: 0)
            t.routedForward(s.tokens[...], start: 0, b, cache, endLayer: 1)
            out += RoutingInput.rows(cache: cache, batch: b, positions: s.scored, withHiddenState: true, dim: model.config.dim)
        }
        return out
    }

    /// Mean KL from full depth when `runs` (all layers, first and last included) run for every token.
    public func objective(_ runs: [Bool]) -> Double {
        var total = 0.0
        for (i, s) in sequences.enumerated() {
            run(s, from: 0, runs: runs)
            total += klSum(sequence: i)
            onProgress?(Double(evaluations) + Double(i + 1) / Double(sequences.count))
        }
        evaluations += 1
        return total / Double(max(scoredCount, 1))
    }

    /// Mean KL of every candidate, sharing the layers below each candidate's first difference
    /// from `base`.
    public func objectives(base: [Bool], candidates: [[Bool]]) -> [Double] {
        let L = model.config.layers, dim = model.config.dim
        var totals = [Double](repeating: 0, count: candidates.count)
        let firsts = candidates.map { LayerBudget.firstDifference($0, base) ?? L }
        for (i, s) in sequences.enumerated() {
            let n = s.tokens.count
            run(s, from: 0, runs: base, keepStreams: true)
            for (ci, c) in candidates.enumerated() {
                let f = firsts[ci]
                if f < L {
                    before.withUnsafeBufferPointer { scorer.batch.x.update(from: $0.baseAddress! + f * n * dim, count: n * dim) }
                    run(s, from: f, runs: c)
                } else {
                    run(s, from: 0, runs: c)
                }
                totals[ci] += klSum(sequence: i)
            }
            onProgress?(Double(evaluations) + Double(candidates.count) * Double(i + 1) / Double(sequences.count))
        }
        evaluations += candidates.count
        return totals.map { $0 / Double(max(scoredCount, 1)) }
    }

    public struct Found: Sendable, Codable, Equatable {
        public var kept: [Int]      // routable layers kept, ascending
        public var kl: Double
        public init(kept: [Int], kl: Double) { self.kept = kept; self.kl = kl }
    }

    /// Everything the search needs to go on after an interruption.
    public struct State: Sendable, Codable, Equatable {
        public var best: [Int: Found]
        public var current: [Int]
        public var inclusions: Int
        public var evaluations: Int
        public init(best: [Int: Found], current: [Int], inclusions: Int, evaluations: Int) {
            self.best = best; self.current = current; self.inclusions = inclusions; self.evaluations = evaluations
        }
        public init(routable: Int) {
            best = [routable: Found(kept: Array(1...routable), kl: 0)]
            current = Array(1...routable)
            inclusions = 0
            evaluations = 0
        }
    }

    /// Best sets for every k from `routable` down to `minKept`, by floating backward selection,
    /// starting from `state` (a fresh one, or one saved by `checkpoint` after any step).
    /// `maxInclusions` bounds the backtracking. progress(evaluations so far, current k, message).
    public func search(minKept: Int, maxInclusions: Int = 40, from state: State? = nil,
                       checkpoint: ((State) throws -> Void)? = nil,
                       progress: ((Int, Int, String) -> Void)? = nil) throws -> [Int: Found] {
        let L = model.config.layers, routable = L - 2
        func mask(_ kept: Set<Int>) -> [Bool] { LayerBudget.mask(layers: L, chosen: kept) }
        let start = state ?? State(routable: routable)
        var best = start.best
        var current = Set(start.current)
        inclusions = start.inclusions
        evaluations = start.evaluations
        func save() throws { try checkpoint?(State(best: best, current: current.sorted(), inclusions: inclusions, evaluations: evaluations)) }
        while current.count > minKept {
            // Exclusion.
            let drops = current.sorted()
            let scores = objectives(base: mask(current), candidates: drops.map { mask(current.subtracting([$0])) })
            let i = scores.indices.min { scores[$0] < scores[$1] }!
            current.remove(drops[i])
            let k = current.count
            if let b = best[k], b.kl <= scores[i] {
                current = Set(b.kept)   // an earlier path reached a better set of this size
            } else {
                best[k] = Found(kept: current.sorted(), kl: scores[i])
            }
            progress?(evaluations, k, String(format: "k %d: drop %d, KL %.4f", k, drops[i], best[k]!.kl))
            try save()
            // Conditional inclusion.
            while current.count + 1 < routable && inclusions < maxInclusions {
                let adds = Set(1...routable).subtracting(current).sorted()
                let s = objectives(base: mask(current), candidates: adds.map { mask(current.union([$0])) })
                let j = s.indices.min { s[$0] < s[$1] }!
                let k1 = current.count + 1
                guard let b = best[k1], s[j] < b.kl - 1e-9 else { break }
                inclusions += 1
                current.insert(adds[j])
                best[k1] = Found(kept: current.sorted(), kl: s[j])
                progress?(evaluations, k1, String(format: "k %d: put back %d, KL %.4f (was %.4f)", k1, adds[j], s[j], b.kl))
                try save()
            }
        }
        return best
    }
}

extension LayerSetSearch {
    /// One-swap local search from `kept` (routable layers, ascending) on this search's data:
    /// each round measures every set that trades one kept layer for one skipped layer and moves
    /// to the best if it lowers the mean KL; stops after `rounds` or when no swap helps. The
    /// floating search chooses among near-ties on its small mix; this settles them on more data.
    /// Returns the final set (ascending) and its mean KL; `step` sees every move.
    public func refine(kept: [Int], rounds: Int, step: (([Int], Double) throws -> Void)? = nil) rethrows -> (kept: [Int], kl: Double) {
        let routable = model.config.layers - 2
        var current = kept.sorted()
        var cost = objective(mask(current))
        for _ in 0..<rounds {
            let neighbours = Self.oneSwapNeighbours(of: current, routable: routable)
            guard !neighbours.isEmpty else { break }
            let costs = objectives(base: mask(current), candidates: neighbours.map(mask))
            let best = costs.indices.min { costs[$0] < costs[$1] }!
            guard costs[best] < cost - 1e-9 else { break }
            current = neighbours[best]
            cost = costs[best]
            try step?(current, cost)
        }
        return (current, cost)
    }

    /// Which of all layers run when the routable layers `set` are kept (first and last always run).
    private func mask(_ set: [Int]) -> [Bool] { LayerBudget.mask(layers: model.config.layers, chosen: Set(set)) }

    /// Every set that trades one layer of `kept` for one routable layer outside it (ascending sets).
    public static func oneSwapNeighbours(of kept: [Int], routable: Int) -> [[Int]] {
        let skipped = (1...routable).filter { !kept.contains($0) }
        return kept.flatMap { out in skipped.map { into in (kept.filter { $0 != out } + [into]).sorted() } }
    }

    /// The `count` one-swap neighbours of `kept` with the lowest mean KL on this search's data,
    /// best first. Near-ties of the searched set that differ from it in one layer are good at
    /// different tokens, which is what a per-token scorer needs to gain (docs/TRAINING.md).
    public func bestNeighbours(of kept: [Int], count: Int) -> [Found] {
        let neighbours = Self.oneSwapNeighbours(of: kept.sorted(), routable: model.config.layers - 2)
        let costs = objectives(base: mask(kept), candidates: neighbours.map(mask))
        return neighbours.indices.sorted { costs[$0] < costs[$1] }.prefix(count).map { Found(kept: neighbours[$0], kl: costs[$0]) }
    }

    /// Sets for every k in 1...routable: the searched ones where the search went, and below
    /// its smallest k the smallest searched set thinned in the order of `ranking` (least
    /// important first), so every budget of the slider has a set.
    public static func completeSets(_ found: [Int: Found], ranking: [Int]) -> [Int: [Int]] {
        var sets = found.mapValues(\.kept)
        guard let smallest = found.keys.min() else { return sets }
        var set = found[smallest]!.kept
        for layer in ranking.reversed() where set.count > 1 {
            guard let i = set.firstIndex(of: layer) else { continue }
            set.remove(at: i)
            sets[set.count] = set
        }
        return sets
    }
}

import BuddyCore
import Foundation
import Synchronization

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
///
/// Sequences run in parallel, one per thread, each on a single-threaded lane of its own
/// (evaluator, logits, streams); sums are then taken in sequence order. A sequence's numbers do
/// not depend on the thread count (every kernel computes a row whole), so the results equal a
/// one-thread run's bit for bit. On 2 cores this does the same work in about three quarters of
/// the time of splitting each product across both threads.
public final class LayerSetSearch {
    public let model: LanguageModel
    public let sequences: [SearchSequence]
    /// One per thread; a lane evaluates one sequence at a time.
    let lanes: [SearchLane]
    /// Per sequence: [scored × vocab] full-depth probabilities.
    var fullProbs: [UnsafeMutablePointer<Float>] = []
    /// Per sequence and scored position: Σ p log p of the full distribution.
    var fullNegEntropy: [[Double]] = []
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
        get { lanes[0].scorer.standIns }
        set { for lane in lanes { lane.scorer.standIns = newValue } }
    }

    /// Runs every sequence at full depth once (the reference distributions); `progress` is told
    /// (sequences done, total) after each, as this takes minutes for a few dozen chunks.
    public init(model: LanguageModel, sequences: [SearchSequence], threads: Int = 2,
                progress: ((Int, Int) -> Void)? = nil) {
        let c = model.config
        let maxLength = sequences.map(\.tokens.count).max() ?? 1
        self.model = model
        self.sequences = sequences
        lanes = (0..<max(1, threads)).map { SearchLane(index: $0, model: model, maxLength: maxLength) }
        scoredCount = sequences.reduce(0) { $0 + $1.scored.count }
        let vocab = c.vocabSize
        let all = [Bool](repeating: true, count: c.layers)
        let references = perSequence(progress: progress) { i, lane -> (UnsafeMutablePointer<Float>, [Double]) in
            let s = self.sequences[i]
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(1, s.scored.count) * vocab)
            self.run(s, from: 0, runs: all, on: lane)
            let negEntropy = (0..<s.scored.count).map { r in
                LogProbabilities.probabilities(lane.logits + r * vocab, into: p + r * vocab, count: vocab)
            }
            return (p, negEntropy)
        }
        fullProbs = references.map(\.0)
        fullNegEntropy = references.map(\.1)
    }
    deinit { fullProbs.forEach { $0.deallocate() } }

    /// body(i, lane) for every sequence i, the sequences taken in order by whichever lane is
    /// free, the lanes on threads of their own. body must only write what belongs to sequence i.
    func forEachSequence(_ body: (Int, SearchLane) -> Void) {
        ThreadPool.forEachItem(sequences.count, lanes: lanes.count) { i, lane in body(i, lanes[lane]) }
    }

    /// Runs sequence s on `lane` with `runs`, leaving the scored rows' logits in lane.logits. From
    /// a layer `from` > 0 it restarts from the residual streams before that layer which an earlier
    /// run of s with `keepStreams` left in lane.before (its masks must agree with `runs` below
    /// `from`, so the KV cache there holds the same values); `keepStreams` keeps this run's.
    func run(_ s: SearchSequence, from: Int, runs: [Bool], keepStreams: Bool = false, on lane: SearchLane) {
        let t = model.transformer, b = lane.scorer.batch, cache = lane.scorer.cache
        let n = s.tokens.count, dim = model.config.dim
        if from == 0 {
            cache.truncate(to: 0)
        } else {
            lane.before.withUnsafeBufferPointer { b.x.update(from: $0.baseAddress! + from * n * dim, count: n * dim) }
        }
        t.routedForward(s.tokens[...], start: 0, b, cache, routing: .fixed(runs), fromLayer: from) { l in
            if keepStreams { lane.before.withUnsafeMutableBufferPointer { $0.baseAddress!.advanced(by: l * n * dim).update(from: b.x, count: n * dim) } }
        }
        t.batchLogits(rows: s.scored, b, lane.logits)
    }

    /// Σ over the scored rows in lane.logits of KL(full ‖ routed) for sequence i.
    func klSum(sequence i: Int, on lane: SearchLane) -> Double { rowKL(sequence: i, on: lane).reduce(0, +) }

    /// KL(full ‖ routed) of each scored row in lane.logits, for sequence i.
    func rowKL(sequence i: Int, on lane: SearchLane) -> [Double] {
        let vocab = model.config.vocabSize, rows = sequences[i].scored.count
        return (0..<rows).map { r in
            LogProbabilities.divergence(referenceProbabilities: fullProbs[i] + r * vocab, negativeEntropy: fullNegEntropy[i][r],
                                        logits: lane.logits + r * vocab, count: vocab)
        }
    }

    /// One value per sequence, computed by the lanes in parallel, in sequence order;
    /// `progress` is told (sequences done, total) as each finishes.
    func perSequence<T>(progress: ((Int, Int) -> Void)? = nil, _ body: (Int, SearchLane) -> T) -> [T] {
        let n = sequences.count
        // body does not throw, so neither does the map.
        return try! ThreadPool.mapItems(n, lanes: lanes.count, done: progress.map { p in { p($0, n) } }) { i, lane in body(i, lanes[lane]) }
    }

    /// KL from full depth at every scored position (sequences in order) when `runs` run for
    /// every token: the per-token costs a Decision Module scorer is trained on.
    public func positionKL(_ runs: [Bool]) -> [Double] { positionKLs([runs])[0] }

    /// Mean KL from full depth when `selector` decides every token's layers from the context so
    /// far (one decision per row of each teacher-forced sequence, as `buddy eval` routes) and
    /// skipped layers leave the cache as `policy` says. Unlike `objective`, tokens may run
    /// different sets, so this measures what mixing them costs.
    public func routedKL(_ selector: DecisionModule, policy: KVPolicy) -> Double {
        routedPositionKL(selector, policy: policy).reduce(0, +) / Double(max(scoredCount, 1))
    }

    /// `positionKL` of several masks, in the order given, with the work neighbours in that order
    /// share done once per sequence: each mask restarts from the residual stream before its first
    /// layer that differs from the mask before it (the streams and the KV cache below that layer
    /// hold the same values for both, as in `objectives`). The same numbers as `positionKL` mask
    /// by mask; the saving is largest when the masks are in lexicographic order.
    public func positionKLs(_ masks: [[Bool]], progress: ((Int, Int) -> Void)? = nil) -> [[Double]] {
        guard !masks.isEmpty else { return [] }
        // rows[i][m]: mask m's KL at each scored row of sequence i.
        let rows = perSequence(progress: progress) { i, lane -> [[Double]] in
            var out: [[Double]] = []
            for (m, mask) in masks.enumerated() {
                // The first mask runs in full; a repeated mask is not run again.
                let from = m == 0 ? 0 : LayerBudget.firstDifference(mask, masks[m - 1])
                guard let from else { out.append(out[m - 1]); continue }
                self.run(self.sequences[i], from: from, runs: mask, keepStreams: masks.count > 1, on: lane)
                out.append(self.rowKL(sequence: i, on: lane))
            }
            return out
        }
        evaluations += masks.count
        return masks.indices.map { m in rows.flatMap { $0[m] } }
    }

    /// KL from full depth at every scored position (sequences in order) under `selector`'s
    /// per-token decisions, as `routedKL` runs them.
    public func routedPositionKL(_ selector: DecisionModule, policy: KVPolicy) -> [Double] {
        // Each lane routes with its own copy of the module (its pooled context is per sequence).
        let selectors = lanes.map { $0.index == 0 ? selector : selector.copy() }
        let rows = perSequence { i, lane in
            let s = self.sequences[i], t = self.model.transformer, b = lane.scorer.batch, cache = lane.scorer.cache
            let module = selectors[lane.index]
            module.resetContext()
            cache.truncate(to: 0)
            t.routedForward(s.tokens[...], start: 0, b, cache, routing: .perRow(module), policy: policy)
            t.batchLogits(rows: s.scored, b, lane.logits)
            return self.rowKL(sequence: i, on: lane)
        }
        evaluations += 1
        return rows.flatMap { $0 }
    }

    /// The Decision Module's raw inputs ([2·kvDim + dim], `RoutingInput`) at every scored
    /// position (sequences in order, as `positionKL` orders its costs). Layer 0 is all it runs.
    public func routingInputs() -> [[Float]] {
        let t = model.transformer, lane = lanes[0], b = lane.scorer.batch, cache = lane.scorer.cache
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
        let base = Double(evaluations)
        let sums = perSequence(progress: { self.onProgress?(base + Double($0) / Double($1)) }) { i, lane in
            self.run(self.sequences[i], from: 0, runs: runs, on: lane)
            return self.klSum(sequence: i, on: lane)
        }
        evaluations += 1
        return sums.reduce(0, +) / Double(max(scoredCount, 1))
    }

    /// Mean KL of every candidate, sharing the layers below each candidate's first difference
    /// from `base`.
    public func objectives(base: [Bool], candidates: [[Bool]]) -> [Double] {
        let L = model.config.layers
        let firsts = candidates.map { LayerBudget.firstDifference($0, base) ?? L }
        let start = Double(evaluations), batch = Double(candidates.count)
        // sums[i][c]: candidate c's KL sum over sequence i.
        let sums = perSequence(progress: { self.onProgress?(start + batch * Double($0) / Double($1)) }) { i, lane -> [Double] in
            let s = self.sequences[i]
            self.run(s, from: 0, runs: base, keepStreams: true, on: lane)
            return candidates.indices.map { ci -> Double in
                self.run(s, from: firsts[ci] < L ? firsts[ci] : 0, runs: candidates[ci], on: lane)
                return self.klSum(sequence: i, on: lane)
            }
        }
        evaluations += candidates.count
        // Summed in sequence order, as one thread running the sequences in turn would.
        var totals = [Double](repeating: 0, count: candidates.count)
        for row in sums { for ci in totals.indices { totals[ci] += row[ci] } }
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

/// One thread's share of a search: a single-threaded evaluator (batch and cache), the logits of
/// one sequence's scored rows and the residual stream before every layer.
final class SearchLane {
    /// Its place in the search's lanes.
    let index: Int
    let scorer: PerplexityEvaluator
    /// [maxLength × vocab] logits of one candidate's scored rows
    let logits: UnsafeMutablePointer<Float>
    /// [layers × maxLength × dim] residual stream before each layer, for one sequence
    var before: [Float]

    init(index: Int, model: LanguageModel, maxLength: Int) {
        self.index = index
        let c = model.config
        scorer = PerplexityEvaluator(model: model, contextSize: maxLength, threads: 1)
        logits = .allocate(capacity: maxLength * c.vocabSize)
        before = [Float](repeating: 0, count: c.layers * maxLength * c.dim)
    }
    deinit { logits.deallocate() }
}

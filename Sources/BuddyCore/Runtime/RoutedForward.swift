/// How the routed forward pass chooses the layers after layer 0 (the first and last layer
/// always run; a mask is [layers] with both set).
public enum LayerRouting {
    /// Every layer: full depth.
    case allLayers
    /// One mask for every token (the static methods, layer-set searches).
    case fixed([Bool])
    /// One decision for the whole chunk, from its last row and everything pooled so far
    /// (a prompt under generation, so it runs as one batch).
    case perChunk(LayerSelector)
    /// One decision per row, each as a decode step at that position would make it (teacher
    /// forcing with exactly the decisions of token-by-token routing), still as one batch.
    case perRow(RowwiseLayerSelector)
    /// Decisions already made, one mask per row (a `.perRow` pass run again from a later
    /// layer, as searches do to share the layers below a candidate's first difference).
    case rows([[Bool]])
}

/// The routed forward pass: embed, run layer 0, decide, then run or skip each later layer,
/// with the KV policy for skipped layers and whatever a skipped layer applies (the run
/// state's stand-ins). Generation, every evaluator, calibration and training call one of
/// these two functions; the kernels below them are `prefillLayers` and `runLayer`/`skipLayer`.
extension Transformer {
    /// A chunk of `tokens` at positions start ..< start+n, as one batch; b.x ends holding each
    /// row's residual stream after the last layer run. Returns the mask each row ran.
    ///
    /// - fromLayer: 0 embeds the tokens. A later layer restarts there from the residual
    ///   streams already in b.x (kept by `beforeLayer` on an earlier pass whose masks agree
    ///   below it), which searches use to share the layers under a candidate's first
    ///   difference; only `.allLayers`, `.fixed` and `.rows` can restart (no decision is remade).
    /// - endLayer: stop before this layer (nil: run to the end). With endLayer 1 only layer 0
    ///   runs and no decision is made (the routing context alone).
    /// - beforeLayer: called with l before layer l runs or is skipped, when b.x holds the
    ///   streams entering it (l == 1: the hidden states the router saw).
    @discardableResult
    public func routedForward(_ tokens: ArraySlice<Int32>, start: Int, _ b: BatchState, _ cache: KVCache,
                              routing: LayerRouting = .allLayers, policy: KVPolicy = .mask,
                              fromLayer: Int = 0, endLayer: Int? = nil,
                              beforeLayer: ((Int) -> Void)? = nil) -> [[Bool]] {
        let n = tokens.count, L = config.layers, end = endLayer ?? L
        precondition(fromLayer >= 0 && fromLayer < end && end <= L, "layer range \(fromLayer)..<\(end) outside 0..<\(L)")
        if fromLayer == 0 {
            prefillEmbed(tokens, start: start, b, cache)
            beforeLayer?(0)
            // The routing context needs layer 0's output and K/V for the chunk first.
            prefillLayers(0..<1, n: n, start: start, b, cache)
        }
        let rows: [[Bool]]
        switch routing {
        case .allLayers:
            rows = [[Bool]](repeating: fullDepthMask, count: n)
        case .fixed(let mask):
            precondition(mask.count == L && mask[0] && mask[L - 1], "a layer mask has \(L) entries with the first and last layer set")
            rows = [[Bool]](repeating: mask, count: n)
        case .rows(let stored):
            precondition(stored.count == n && stored.allSatisfy { $0.count == L && $0[0] && $0[L - 1] }, "one mask of \(L) layers per row")
            rows = stored
        case .perChunk(let selector):
            precondition(fromLayer == 0, "a routed chunk cannot restart above layer 0")
            rows = end > 1 ? [[Bool]](repeating: selector.selectLayers(chunkStart: start, count: n, batch: b, cache: cache), count: n)
                           : [[Bool]](repeating: fullDepthMask, count: n)
        case .perRow(let selector):
            precondition(fromLayer == 0, "a routed chunk cannot restart above layer 0")
            rows = end > 1 ? selector.selectLayers(rowsFrom: start, count: n, batch: b, cache: cache)
                           : [[Bool]](repeating: fullDepthMask, count: n)
        }
        for l in max(1, fromLayer)..<end {
            beforeLayer?(l)
            prefillLayers(l..<l + 1, n: n, start: start, b, cache, rowRuns: rows, policy: policy)
        }
        for i in 0..<n { b.rowLayers[i] = Int32(rows[i].reduce(0) { $0 + ($1 ? 1 : 0) }) }
        return rows
    }

    /// One token at `pos`, decoded: fills s.logits and returns the mask it ran (the
    /// selector's own array or a stored one: nothing is allocated here).
    @discardableResult
    public func routedForward(token: Int32, pos: Int, _ s: DecodeState, _ cache: KVCache,
                              routing: LayerRouting = .allLayers, policy: KVPolicy = .mask) -> [Bool] {
        embed(token, s)
        runLayer(0, pos: pos, s, cache)
        let runs: [Bool]
        switch routing {
        case .allLayers: runs = fullDepthMask
        case .fixed(let mask): runs = mask
        case .perChunk(let selector): runs = selector.selectLayers(position: pos, state: s, cache: cache)
        case .perRow(let selector): runs = selector.selectLayers(position: pos, state: s, cache: cache)
        case .rows(let stored):
            precondition(stored.count == 1, "a decode step runs one stored mask")
            runs = stored[0]
        }
        var layersRun = 1
        for l in 1..<config.layers {
            if runs[l] { runLayer(l, pos: pos, s, cache); layersRun += 1 } else { skipLayer(l, pos: pos, policy: policy, s, cache) }
        }
        cache.count = pos + 1
        computeLogits(s, layersRun: layersRun)
        return runs
    }
}

extension LayerRouting {
    /// The routing a generation session uses: its selector per chunk (or per row when
    /// teacher-forcing with token-by-token decisions), full depth without one.
    public static func session(_ selector: LayerSelector?, perRow: Bool) -> LayerRouting {
        guard let selector else { return .allLayers }
        if perRow {
            guard let rowwise = selector as? RowwiseLayerSelector else { preconditionFailure("per-row decisions need a RowwiseLayerSelector") }
            return .perRow(rowwise)
        }
        return .perChunk(selector)
    }

    /// `.fixed` from a predicate over layers (all when nil).
    public static func fixed(layers: Int, runs: ((Int) -> Bool)?) -> LayerRouting {
        guard let runs else { return .allLayers }
        return .fixed((0..<layers).map(runs))
    }
}

/// Keys and values of every layer for every position so far, sized to the context.
///
/// Layout (fp32, values rounded to half precision as llama.cpp's default f16 cache holds them):
///   keys, values: [layers × capacity × kvDim]
///   present:      [layers × capacity], 1 where the layer really computed that position.
/// `present` exists for routing: a token that skipped a layer leaves no real K/V there, and
/// the KV policy decides what later tokens see in its place.
///
/// Deferred `fill` (when the cache is made with `deferDim`): a token that skips layer l under
/// `fill` leaves only its input to the layer here, and the layer's K/V for that position are
/// computed the first time a later token attends over layer l (`Transformer.computeDeferredKV`),
/// with the same kernels, so the numbers equal computing them at once. A layer that no later
/// token runs (a budget that keeps skipping it) then costs nothing but the copy.
///   deferredInputs: [layers × capacity × dim]  pages are touched only where tokens skip
///   deferred:       [layers × capacity], 1 where the K/V slot still waits for its input
public final class KVCache: @unchecked Sendable {
    public let layers: Int
    public let capacity: Int
    public let kvDim: Int
    public let keys: UnsafeMutablePointer<Float>
    public let values: UnsafeMutablePointer<Float>
    public let present: UnsafeMutablePointer<UInt8>
    /// Number of positions filled (the next token's position).
    public var count = 0
    /// Width of a deferred input (the model's dim), 0 when `fill` computes K/V at once.
    public let deferDim: Int
    let deferredInputs: UnsafeMutablePointer<Float>?
    let deferred: UnsafeMutablePointer<UInt8>
    /// [layers] no position of the layer below this one is deferred (capacity: none at all).
    let firstDeferred: UnsafeMutablePointer<Int>

    /// - deferDim: the model's width to defer `fill`'s K/V of skipped layers (see above); 0
    ///   computes them when the token skips the layer.
    public init(layers: Int, capacity: Int, kvDim: Int, deferDim: Int = 0) {
        precondition(deferDim >= 0)
        self.layers = layers
        self.capacity = capacity
        self.kvDim = kvDim
        self.deferDim = deferDim
        keys = .allocate(capacity: layers * capacity * kvDim)
        values = .allocate(capacity: layers * capacity * kvDim)
        present = .allocate(capacity: layers * capacity)
        present.initialize(repeating: 0, count: layers * capacity)
        // Left uninitialised: a large allocation is mapped lazily, so only the rows that tokens
        // really defer take memory.
        deferredInputs = deferDim > 0 ? .allocate(capacity: layers * capacity * deferDim) : nil
        deferred = .allocate(capacity: layers * capacity)
        deferred.initialize(repeating: 0, count: layers * capacity)
        firstDeferred = .allocate(capacity: layers)
        firstDeferred.initialize(repeating: capacity, count: layers)
    }

    deinit {
        keys.deallocate(); values.deallocate(); present.deallocate()
        deferredInputs?.deallocate(); deferred.deallocate(); firstDeferred.deallocate()
    }

    @inline(__always) public func key(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<Float> {
        keys + (layer * capacity + pos) * kvDim
    }
    @inline(__always) public func value(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<Float> {
        values + (layer * capacity + pos) * kvDim
    }
    @inline(__always) public func isPresent(_ layer: Int, _ pos: Int) -> Bool { present[layer * capacity + pos] != 0 }
    /// Marks the slot computed (or not) and, as every write of a slot goes through here, no longer deferred.
    @inline(__always) public func setPresent(_ layer: Int, _ pos: Int, _ on: Bool) {
        present[layer * capacity + pos] = on ? 1 : 0
        deferred[layer * capacity + pos] = 0
    }

    /// Whether `fill` defers the K/V of skipped layers in this cache.
    @inline(__always) public var defersFill: Bool { deferredInputs != nil }

    /// Keeps `input` ([deferDim], the layer's input) as what layer l's K/V at `pos` come from.
    @inline(__always) func deferKV(_ layer: Int, _ pos: Int, input: UnsafePointer<Float>) {
        (deferredInputs! + (layer * capacity + pos) * deferDim).update(from: input, count: deferDim)
        present[layer * capacity + pos] = 1
        deferred[layer * capacity + pos] = 1
        if pos < firstDeferred[layer] { firstDeferred[layer] = pos }
    }

    @inline(__always) func isDeferred(_ layer: Int, _ pos: Int) -> Bool { deferred[layer * capacity + pos] != 0 }
    @inline(__always) func deferredInput(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<Float> {
        deferredInputs! + (layer * capacity + pos) * deferDim
    }

    /// Forget everything from `pos` on (used when a conversation is rewound or reset).
    public func truncate(to pos: Int) {
        precondition(pos >= 0 && pos <= capacity)
        count = pos
        for l in 0..<layers where pos < capacity {
            (present + l * capacity + pos).update(repeating: 0, count: capacity - pos)
            (deferred + l * capacity + pos).update(repeating: 0, count: capacity - pos)
        }
    }

    /// Bytes held by the cache (deferred inputs count only as far as positions were filled,
    /// an upper bound on the pages they touch).
    public var byteCount: Int { 2 * layers * capacity * kvDim * 4 + 2 * layers * capacity + layers * count * deferDim * 4 }
}

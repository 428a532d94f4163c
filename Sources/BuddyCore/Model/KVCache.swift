/// Keys and values of every layer for every position so far, sized to the context.
///
/// Layout (fp32, values rounded to half precision as llama.cpp's default f16 cache holds them):
///   keys, values: [layers × capacity × kvDim]
///   present:      [layers × capacity], 1 where the layer really computed that position.
/// `present` exists for routing: a token that skipped a layer leaves no real K/V there, and
/// the KV policy decides what later tokens see in its place.
public final class KVCache: @unchecked Sendable {
    public let layers: Int
    public let capacity: Int
    public let kvDim: Int
    public let keys: UnsafeMutablePointer<Float>
    public let values: UnsafeMutablePointer<Float>
    public let present: UnsafeMutablePointer<UInt8>
    /// Number of positions filled (the next token's position).
    public var count = 0

    public init(layers: Int, capacity: Int, kvDim: Int) {
        self.layers = layers
        self.capacity = capacity
        self.kvDim = kvDim
        keys = .allocate(capacity: layers * capacity * kvDim)
        values = .allocate(capacity: layers * capacity * kvDim)
        present = .allocate(capacity: layers * capacity)
        present.initialize(repeating: 0, count: layers * capacity)
    }

    deinit { keys.deallocate(); values.deallocate(); present.deallocate() }

    @inline(__always) public func key(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<Float> {
        keys + (layer * capacity + pos) * kvDim
    }
    @inline(__always) public func value(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<Float> {
        values + (layer * capacity + pos) * kvDim
    }
    @inline(__always) public func isPresent(_ layer: Int, _ pos: Int) -> Bool { present[layer * capacity + pos] != 0 }
    @inline(__always) public func setPresent(_ layer: Int, _ pos: Int, _ on: Bool) { present[layer * capacity + pos] = on ? 1 : 0 }

    /// Forget everything from `pos` on (used when a conversation is rewound or reset).
    public func truncate(to pos: Int) {
        precondition(pos >= 0 && pos <= capacity)
        count = pos
        for l in 0..<layers where pos < capacity {
            (present + l * capacity + pos).update(repeating: 0, count: capacity - pos)
        }
    }

    /// Bytes held by the cache.
    public var byteCount: Int { 2 * layers * capacity * kvDim * 4 + layers * capacity }
}

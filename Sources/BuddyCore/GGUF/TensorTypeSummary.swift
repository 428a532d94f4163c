/// How much of a GGUF file each tensor type takes (what `buddy inspect` lists).
public struct TensorTypeShare: Sendable, Equatable {
    public let type: GGMLType
    public let tensors: Int
    public let bytes: Int
    /// bytes / the whole file's size (header and metadata included)
    public let fileShare: Double
}

extension GGUFFile {
    /// One entry per tensor type in the file, largest share first (ties by type number).
    public func tensorTypeShares() -> [TensorTypeShare] {
        var count: [GGMLType: Int] = [:], bytes: [GGMLType: Int] = [:]
        for t in tensors {
            count[t.type, default: 0] += 1
            bytes[t.type, default: 0] += t.byteCount
        }
        let size = Double(max(mapping.size, 1))
        return count.keys
            .map { TensorTypeShare(type: $0, tensors: count[$0]!, bytes: bytes[$0]!, fileShare: Double(bytes[$0]!) / size) }
            .sorted { ($0.bytes, $1.type.rawValue) > ($1.bytes, $0.type.rawValue) }
    }
}

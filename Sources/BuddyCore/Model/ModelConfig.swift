/// Hyper-parameters of a decoder-only transformer, read from GGUF metadata
/// (`<arch>.block_count`, `<arch>.embedding_length`, ...).
public struct ModelConfig: Sendable, Equatable {
    public enum Architecture: String, Sendable { case llama, qwen2 }

    public var architecture: Architecture
    public var layers: Int
    public var dim: Int
    public var ffnDim: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var vocabSize: Int
    public var contextLength: Int
    public var ropeBase: Float
    public var ropeDim: Int
    public var rmsNormEps: Float
    /// qwen2 adds biases to the Q, K and V projections.
    public var hasQKVBias: Bool
    /// llama.cpp rotates adjacent pairs for `llama` (whose GGUF Q/K weights were permuted at
    /// conversion) and halves (NeoX style) for `qwen2`.
    public var ropeNeoX: Bool

    public var qDim: Int { heads * headDim }
    public var kvDim: Int { kvHeads * headDim }
    public var groupSize: Int { heads / kvHeads }

    public init(gguf: GGUFFile) throws {
        let archName = try gguf.string("general.architecture")
        guard let arch = Architecture(rawValue: archName) else { throw GGUFError.unsupportedArchitecture(archName) }
        let p = archName + "."
        architecture = arch
        layers = try gguf.int(p + "block_count")
        dim = try gguf.int(p + "embedding_length")
        ffnDim = try gguf.int(p + "feed_forward_length")
        heads = try gguf.int(p + "attention.head_count")
        kvHeads = (try? gguf.int(p + "attention.head_count_kv")) ?? heads
        contextLength = (try? gguf.int(p + "context_length")) ?? 2048
        ropeBase = Float((try? gguf.float(p + "rope.freq_base")) ?? 10000)
        rmsNormEps = Float(try gguf.float(p + "attention.layer_norm_rms_epsilon"))
        let tokens = try gguf.tensor("token_embd.weight")
        vocabSize = tokens.dims.count == 2 ? tokens.dims[1] : 0
        if let v = gguf.metadata[p + "vocab_size"]?.intValue, v != vocabSize {
            throw GGUFError.invalidValue(key: p + "vocab_size", reason: "\(v) disagrees with token_embd.weight (\(vocabSize) rows)")
        }
        hasQKVBias = arch == .qwen2
        ropeNeoX = arch == .qwen2
        func positive(_ key: String, _ v: Int, max: Int = 1 << 20) throws {
            guard v > 0 && v <= max else { throw GGUFError.invalidValue(key: p + key, reason: "\(v) is out of range") }
        }
        try positive("block_count", layers, max: 1024)
        try positive("embedding_length", dim)
        try positive("feed_forward_length", ffnDim)
        try positive("attention.head_count", heads, max: 4096)
        try positive("attention.head_count_kv", kvHeads, max: 4096)
        try positive("context_length", contextLength, max: 1 << 24)
        guard dim % heads == 0 else {
            throw GGUFError.invalidValue(key: p + "attention.head_count", reason: "\(heads) does not divide embedding_length \(dim)")
        }
        guard heads % kvHeads == 0 else {
            throw GGUFError.invalidValue(key: p + "attention.head_count_kv", reason: "\(kvHeads) does not divide head_count \(heads)")
        }
        headDim = (try? gguf.int(p + "attention.key_length")) ?? dim / heads
        ropeDim = (try? gguf.int(p + "rope.dimension_count")) ?? headDim
        guard headDim > 0, headDim % 2 == 0, ropeDim <= headDim, ropeDim % 2 == 0 else {
            throw GGUFError.invalidValue(key: p + "rope.dimension_count", reason: "head size \(headDim) / rope dims \(ropeDim) are inconsistent")
        }
        guard rmsNormEps > 0, rmsNormEps < 1 else {
            throw GGUFError.invalidValue(key: p + "attention.layer_norm_rms_epsilon", reason: "\(rmsNormEps) is out of range")
        }
        guard ropeBase > 1, ropeBase.isFinite else {
            throw GGUFError.invalidValue(key: p + "rope.freq_base", reason: "\(ropeBase) is out of range")
        }
    }
}

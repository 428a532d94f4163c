/// Hyper-parameters of a decoder-only transformer, read from GGUF metadata
/// (`<arch>.block_count`, `<arch>.embedding_length`, ...).
public struct ModelConfig: Sendable, Equatable {
    public enum Architecture: String, Sendable { case llama, qwen2, gemma3 }

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

    // Gemma 3 (defaults leave llama/qwen2 unchanged)
    /// The embedding row is multiplied by this (Gemma: √dim; 1 elsewhere).
    public var embeddingScale: Float = 1
    /// Local attention: a position on a sliding-window layer attends to at most the last
    /// `slidingWindow` positions, itself included (0: every layer is global).
    public var slidingWindow = 0
    /// Layer l is a sliding-window layer when l % pattern < pattern - 1 (llama.cpp's
    /// `set_swa_pattern`; Gemma 3: 5 local layers, then 1 global).
    public var slidingWindowPattern = 0
    /// RoPE base of the sliding-window layers (global layers use `ropeBase`).
    public var localRopeBase: Float = 10000
    /// Global layers' RoPE position scale (1 / linear scaling factor; 1 when unscaled).
    public var ropeFreqScale: Float = 1
    /// Softmax scale of q·k (Gemma multiplies Q by it before attention; llama/qwen2 use 1/√headDim).
    public var attentionScale: Float = 0

    /// Gemma 3's block: per-head Q/K RMS norms, post-attention and post-FFN norms, GELU-gated FFN.
    public var isGemma3: Bool { architecture == .gemma3 }
    /// Whether layer l attends through the sliding window.
    public func isSlidingWindowLayer(_ l: Int) -> Bool {
        slidingWindow > 0 && slidingWindowPattern > 0 && l % slidingWindowPattern < slidingWindowPattern - 1
    }
    /// Layer l's RoPE base.
    public func ropeBase(layer l: Int) -> Float { isSlidingWindowLayer(l) ? localRopeBase : ropeBase }

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
        ropeNeoX = arch == .qwen2 || arch == .gemma3
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
        attentionScale = 1 / Float(headDim).squareRoot()
        if arch == .gemma3 { try readGemma3(gguf, prefix: p) }
    }

    /// Gemma 3's hyper-parameters, with llama.cpp's rules (`llama_model::load_hparams`,
    /// LLM_ARCH_GEMMA3) where the file is silent: sliding window from
    /// `gemma3.attention.sliding_window` on 5 of every 6 layers, local RoPE base 10,000,
    /// global base `gemma3.rope.freq_base` (linear scaling from `rope.scaling.factor` on the
    /// global layers only), Q scaled by 1/√headDim (1/√(dim/heads) for the 62-layer 27B, whose
    /// query_pre_attn_scalar differs), embeddings scaled by √dim. The norm weights are used as
    /// stored: the converter already added Gemma's +1 to them, and llama.cpp multiplies by them
    /// directly. No final logit soft-capping (llama.cpp applies none to sliding-window Gemma 3).
    private mutating func readGemma3(_ gguf: GGUFFile, prefix p: String) throws {
        embeddingScale = Float(dim).squareRoot()
        slidingWindow = try gguf.int(p + "attention.sliding_window")
        slidingWindowPattern = (try? gguf.int(p + "attention.sliding_window_pattern")) ?? 6
        localRopeBase = Float((try? gguf.float(p + "rope.freq_base_swa")) ?? 10000)
        if let type = gguf.metadata[p + "rope.scaling.type"]?.stringValue, type != "none" {
            guard type == "linear", let factor = try? gguf.float(p + "rope.scaling.factor"), factor >= 1 else {
                throw GGUFError.invalidValue(key: p + "rope.scaling.type", reason: "only linear RoPE scaling is supported for gemma3")
            }
            ropeFreqScale = Float(1 / factor)
        }
        attentionScale = layers == 62 ? 1 / Float(dim / heads).squareRoot() : 1 / Float(headDim).squareRoot()
        guard slidingWindow > 0, slidingWindow <= 1 << 24 else {
            throw GGUFError.invalidValue(key: p + "attention.sliding_window", reason: "\(slidingWindow) is out of range")
        }
        guard slidingWindowPattern > 0, slidingWindowPattern <= layers else {
            throw GGUFError.invalidValue(key: p + "attention.sliding_window_pattern", reason: "\(slidingWindowPattern) is out of range")
        }
        guard localRopeBase > 1, localRopeBase.isFinite else {
            throw GGUFError.invalidValue(key: p + "rope.freq_base_swa", reason: "\(localRopeBase) is out of range")
        }
        if let cap = try? gguf.float(p + "final_logit_softcapping"), cap > 0 {
            throw GGUFError.invalidValue(key: p + "final_logit_softcapping", reason: "gemma3 with a sliding window has no logit soft-capping in llama.cpp")
        }
    }
}

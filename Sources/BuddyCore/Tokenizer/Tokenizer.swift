// What the rest of Buddy needs from a tokenizer. Two implementations match llama.cpp:
// BPETokenizer (GGUF `tokenizer.ggml.model = gpt2`, byte-level BPE: SmolLM2, Qwen2) and
// SPMTokenizer (`llama`, SentencePiece with scores and byte fallback: Gemma 3).

public protocol Tokenizer: AnyObject, Sendable {
    /// BOS and EOS ids when the vocabulary has them.
    var bosID: Int32? { get }
    var eosID: Int32? { get }
    /// Whether the model expects BOS in front of a prompt (`tokenizer.ggml.add_bos_token`).
    /// `encode` never adds it: callers insert `bosID` themselves.
    var addBOS: Bool { get }
    var vocabularySize: Int { get }

    /// Tokenizes like llama.cpp's `llama_tokenize(..., add_special = false, parse_special)`.
    /// With `parseSpecial`, the literal text of control tokens becomes those tokens;
    /// user-defined tokens are always matched.
    func encode(_ text: String, parseSpecial: Bool) -> [Int32]

    /// Appends the bytes of one token, like llama.cpp's `token_to_piece`: control and unknown
    /// tokens produce their text only when `includeSpecial`; user-defined tokens always
    /// produce their text; undefined/unused and out-of-range ids produce nothing.
    func appendBytes(_ id: Int32, includeSpecial: Bool, to out: inout [UInt8])

    /// Whether `llama_detokenize` drops one leading space of the first token (SentencePiece
    /// vocabularies that add a space prefix when encoding).
    var removesLeadingSpace: Bool { get }

    /// Exact vocabulary lookup of a token's text as stored in the GGUF file.
    func tokenID(_ piece: String) -> Int32?
    /// Token type of `id`, or nil when out of range.
    func tokenType(_ id: Int32) -> TokenType?
    /// The vocabulary text of `id` as stored in the file, or nil when out of range.
    func tokenText(_ id: Int32) -> String?
    /// Whether a lone byte can be encoded. Bytes without a token are dropped by encoding,
    /// exactly as llama.cpp drops them.
    func hasByteToken(_ b: UInt8) -> Bool
}

extension Tokenizer {
    public func isControl(_ id: Int32) -> Bool { tokenType(id) == .control }

    /// EOS and the tokens whose text llama.cpp takes for end of generation (<|im_end|>,
    /// <|endoftext|>, Gemma's <end_of_turn>, …): what ends an assistant turn.
    public var endOfGenerationIDs: Set<Int32> {
        var ids = Set<Int32>()
        if let e = eosID { ids.insert(e) }
        for s in GGUFVocabulary.endOfGenerationTexts { if let id = tokenID(s) { ids.insert(id) } }
        return ids
    }

    public func decodeBytes(_ id: Int32) -> [UInt8] { decodeBytes(id, includeSpecial: false) }

    public func decodeBytes(_ id: Int32, includeSpecial: Bool) -> [UInt8] {
        var out: [UInt8] = []
        appendBytes(id, includeSpecial: includeSpecial, to: &out)
        return out
    }

    /// llama.cpp's `llama_detokenize(remove_special: false, unparse_special: includeSpecial)`:
    /// the bytes of all tokens, converted to a String once at the end (invalid UTF-8 becomes
    /// U+FFFD).
    public func decode(_ ids: [Int32], includeSpecial: Bool = false) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        for (i, id) in ids.enumerated() {
            appendBytes(id, includeSpecial: includeSpecial, to: &bytes)
            if i == 0 && removesLeadingSpace && bytes.first == 0x20 { bytes.removeFirst() }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.*`): SentencePiece for model
/// `llama`, byte-level BPE for `gpt2`.
public func makeTokenizer(gguf: GGUFFile) throws -> any Tokenizer {
    let vocabulary = try GGUFVocabulary(gguf: gguf)
    switch vocabulary.model {
    case "llama": return try SPMTokenizer(vocabulary)
    case "gpt2": return try BPETokenizer(vocabulary)
    default:
        throw TokenizerError(description: "unsupported tokenizer model '\(vocabulary.model)' (supported: SentencePiece 'llama', byte-level BPE 'gpt2')")
    }
}

/// The `tokenizer.ggml.*` metadata both tokenizers are built from.
public struct GGUFVocabulary: Sendable {
    public var model: String
    public var tokens: [String]
    public var tokenTypes: [TokenType]
    /// SentencePiece piece scores (empty when the file has none).
    public var scores: [Float]
    public var merges: [String]
    public var pre: String
    public var bosID: Int32?
    public var eosID: Int32?
    public var addBOS: Bool?
    public var addSpacePrefix: Bool?

    public init(model: String, tokens: [String], tokenTypes: [TokenType] = [], scores: [Float] = [], merges: [String] = [],
                pre: String = "default", bosID: Int32? = nil, eosID: Int32? = nil, addBOS: Bool? = nil, addSpacePrefix: Bool? = nil) {
        self.model = model
        self.tokens = tokens
        self.tokenTypes = tokenTypes
        self.scores = scores
        self.merges = merges
        self.pre = pre
        self.bosID = bosID
        self.eosID = eosID
        self.addBOS = addBOS
        self.addSpacePrefix = addSpacePrefix
    }

    /// Texts llama.cpp (llama-vocab.cpp) marks as end of generation and therefore as control.
    static let endOfGenerationTexts: Set<String> = [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
        "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
        "<end_of_utterance>", "<eos>", "<｜end▁of▁sentence｜>",
    ]

    public init(gguf: GGUFFile) throws {
        model = try gguf.string("tokenizer.ggml.model")
        tokens = try gguf.stringArray("tokenizer.ggml.tokens")
        if gguf.metadata["tokenizer.ggml.token_type"] != nil {
            let raw = try gguf.intArray("tokenizer.ggml.token_type")
            guard raw.count == tokens.count else {
                throw GGUFError.invalidValue(key: "tokenizer.ggml.token_type", reason: "\(raw.count) entries for \(tokens.count) tokens")
            }
            tokenTypes = raw.map { TokenType(rawValue: Int32(truncatingIfNeeded: $0)) ?? .normal }
        } else {
            tokenTypes = Array(repeating: .normal, count: tokens.count)
        }
        // llama.cpp treats end-of-generation tokens, found by their text, as control tokens
        // whatever their type (Gemma's user-defined "</s>" among them): they are then special
        // only when parsing specials, and silent when decoding without specials.
        for i in tokens.indices where tokenTypes[i] != .control && tokenTypes[i] != .unknown {
            let t = tokens[i]
            if let first = t.utf8.first, first == UInt8(ascii: "<") || first == UInt8(ascii: "[") || first == UInt8(ascii: "_"),
               t.utf8.count <= 32, Self.endOfGenerationTexts.contains(t) {
                tokenTypes[i] = .control
            }
        }
        // Only SentencePiece uses scores (BPE files are read exactly as before scores mattered).
        if model == "llama", gguf.metadata["tokenizer.ggml.scores"] != nil {
            let raw = try gguf.floatArray("tokenizer.ggml.scores")
            guard raw.count >= tokens.count else {
                throw GGUFError.invalidValue(key: "tokenizer.ggml.scores", reason: "\(raw.count) entries for \(tokens.count) tokens")
            }
            scores = raw.prefix(tokens.count).map { Float($0) }
        } else {
            scores = []
        }
        merges = gguf.metadata["tokenizer.ggml.merges"] != nil ? try gguf.stringArray("tokenizer.ggml.merges") : []
        pre = gguf.metadata["tokenizer.ggml.pre"]?.stringValue ?? "default"
        let count = tokens.count
        func id(_ key: String) throws -> Int32? {
            guard let v = gguf.metadata[key] else { return nil }
            guard let i = v.intValue, i >= 0, i < count else {
                throw GGUFError.invalidValue(key: key, reason: "token id is not in the vocabulary of \(count)")
            }
            return Int32(i)
        }
        bosID = try id("tokenizer.ggml.bos_token_id")
        eosID = try id("tokenizer.ggml.eos_token_id")
        addBOS = gguf.metadata["tokenizer.ggml.add_bos_token"]?.boolValue
        addSpacePrefix = gguf.metadata["tokenizer.ggml.add_space_prefix"]?.boolValue
    }
}

extension BPETokenizer {
    /// Builds the byte-level BPE tokenizer a GGUF file describes (`tokenizer.ggml.*`).
    public convenience init(gguf: GGUFFile) throws {
        try self.init(GGUFVocabulary(gguf: gguf))
    }

    convenience init(_ v: GGUFVocabulary) throws {
        try self.init(tokens: v.tokens, tokenTypes: v.tokenTypes, merges: v.merges, model: v.model, pre: v.pre,
                      bosID: v.bosID, eosID: v.eosID, addBOS: v.addBOS ?? false)
    }
}

/// The vocabulary as both tokenizers keep it: texts as stored in the file (empty ones renamed
/// "[EMPTY_<id>]" as llama.cpp does), types, and the decoded bytes of every token flattened
/// (control, unknown and user-defined tokens: their raw text; normal tokens: `decodeNormal` of
/// their text; byte tokens <0xNN>: that byte; undefined and unused tokens: nothing).
struct TokenPieces: Sendable {
    let texts: [String]
    let types: [TokenType]
    let bytes: [UInt8]
    let offsets: [Int]

    var count: Int { texts.count }

    /// Checks the vocabulary (not empty, one type per token, BOS/EOS in range) and decodes it.
    init(tokens: [String], types tokenTypes: [TokenType], bosID: Int32?, eosID: Int32?,
         decodeNormal: (String, inout [UInt8]) -> Void) throws {
        let n = tokens.count
        guard n > 0 else { throw TokenizerError(description: "empty vocabulary") }
        guard n < Int(Int32.max) / 2 else { throw TokenizerError(description: "vocabulary too large") }
        guard tokenTypes.isEmpty || tokenTypes.count == n else {
            throw TokenizerError(description: "token type count \(tokenTypes.count) does not match token count \(n)")
        }
        for (label, id) in [("BOS", bosID), ("EOS", eosID)] {
            if let id, id < 0 || Int(id) >= n {
                throw TokenizerError(description: "\(label) id \(id) out of range 0..<\(n)")
            }
        }
        var texts = tokens
        for i in 0..<n where texts[i].isEmpty { texts[i] = "[EMPTY_\(i)]" }
        let types = tokenTypes.isEmpty ? [TokenType](repeating: .normal, count: n) : tokenTypes

        var bytes: [UInt8] = []
        bytes.reserveCapacity(n * 6)
        var offsets = [Int]()
        offsets.reserveCapacity(n + 1)
        offsets.append(0)
        for i in 0..<n {
            let text = texts[i]
            switch types[i] {
            case .control, .unknown, .userDefined:
                bytes.append(contentsOf: text.utf8)
            case .normal:
                decodeNormal(text, &bytes)
            case .byte:
                if let b = ByteLevel.parseByteToken(text) { bytes.append(b) } else { decodeNormal(text, &bytes) }
            case .undefined, .unused:
                break
            }
            offsets.append(bytes.count)
        }
        self.texts = texts
        self.types = types
        self.bytes = bytes
        self.offsets = offsets
    }

    func type(_ id: Int32) -> TokenType? { id >= 0 && Int(id) < types.count ? types[Int(id)] : nil }

    func text(_ id: Int32) -> String? { id >= 0 && Int(id) < texts.count ? texts[Int(id)] : nil }

    /// Appends the decoded bytes of `id`; control and unknown tokens only when `includeSpecial`.
    func append(_ id: Int32, includeSpecial: Bool, to out: inout [UInt8]) {
        guard id >= 0, Int(id) < texts.count else { return }
        let i = Int(id)
        if !includeSpecial {
            let t = types[i]
            if t == .control || t == .unknown { return }
        }
        out.append(contentsOf: bytes[offsets[i]..<offsets[i + 1]])
    }
}

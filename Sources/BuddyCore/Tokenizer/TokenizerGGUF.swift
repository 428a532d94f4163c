extension BPETokenizer {
    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.*`).
    public convenience init(gguf: GGUFFile) throws {
        let model = try gguf.string("tokenizer.ggml.model")
        let tokens = try gguf.stringArray("tokenizer.ggml.tokens")
        let types: [TokenType]
        if gguf.metadata["tokenizer.ggml.token_type"] != nil {
            let raw = try gguf.intArray("tokenizer.ggml.token_type")
            guard raw.count == tokens.count else {
                throw GGUFError.invalidValue(key: "tokenizer.ggml.token_type", reason: "\(raw.count) entries for \(tokens.count) tokens")
            }
            types = raw.map { TokenType(rawValue: Int32(truncatingIfNeeded: $0)) ?? .normal }
        } else {
            types = Array(repeating: .normal, count: tokens.count)
        }
        let merges = gguf.metadata["tokenizer.ggml.merges"] != nil ? try gguf.stringArray("tokenizer.ggml.merges") : []
        let pre = gguf.metadata["tokenizer.ggml.pre"]?.stringValue ?? "default"
        func id(_ key: String) throws -> Int32? {
            guard let v = gguf.metadata[key] else { return nil }
            guard let i = v.intValue, i >= 0, i < tokens.count else {
                throw GGUFError.invalidValue(key: key, reason: "token id is not in the vocabulary of \(tokens.count)")
            }
            return Int32(i)
        }
        let addBOS = gguf.metadata["tokenizer.ggml.add_bos_token"]?.boolValue ?? false
        do {
            try self.init(tokens: tokens, tokenTypes: types, merges: merges, model: model, pre: pre,
                          bosID: try id("tokenizer.ggml.bos_token_id"), eosID: try id("tokenizer.ggml.eos_token_id"),
                          addBOS: addBOS)
        }
    }
}

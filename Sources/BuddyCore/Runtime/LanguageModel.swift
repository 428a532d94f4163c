import Foundation

/// Everything loaded from one GGUF file: weights, tokenizer and chat format.
public final class LanguageModel: @unchecked Sendable {
    public let path: String
    public let file: GGUFFile
    public let transformer: Transformer
    public let tokenizer: any Tokenizer
    public let template: ChatTemplate
    /// Tokens that end an assistant turn: EOS and the vocabulary's end-of-generation tokens as
    /// llama.cpp finds them by their text (<|im_end|>, <|endoftext|>, Gemma's <end_of_turn>, …).
    public let stopTokens: Set<Int32>
    /// The vocabulary's control tokens (the chat template's markers, BOS, EOS): the sampler's
    /// DRY penalty never matches across them nor penalises them.
    public let controlTokens: Set<Int32>
    /// Tokens whose text ends a sentence or a line (`endsSentence`), control tokens never:
    /// where a reply decides whether to end or what to say next.
    public let sentenceEndTokens: Set<Int32>

    public var config: ModelConfig { transformer.config }

    public init(path: String) throws {
        self.path = path
        file = try GGUFFile(path: path)
        transformer = try Transformer(file: file)
        tokenizer = try makeTokenizer(gguf: file)
        guard tokenizer.vocabularySize == transformer.config.vocabSize else {
            throw GGUFError.invalidValue(key: "tokenizer.ggml.tokens",
                reason: "\(tokenizer.vocabularySize) tokens but the embedding has \(transformer.config.vocabSize) rows")
        }
        template = ChatTemplate(ggufTemplate: file.metadata["tokenizer.chat_template"]?.stringValue)
        stopTokens = tokenizer.endOfGenerationIDs
        controlTokens = Set((0..<Int32(tokenizer.vocabularySize)).filter { [tokenizer] in tokenizer.isControl($0) }).union(stopTokens)
        sentenceEndTokens = Set((0..<Int32(tokenizer.vocabularySize)).filter { [tokenizer, controlTokens] id in
            !controlTokens.contains(id) && LanguageModel.endsSentence(tokenizer.decodeBytes(id))
        })
    }

    /// Whether a token's bytes end a sentence or a line: a newline anywhere, or ".", "!" or "?"
    /// as the last character but for trailing spaces, quotes and closing brackets.
    public static func endsSentence(_ bytes: [UInt8]) -> Bool {
        if bytes.contains(UInt8(ascii: "\n")) { return true }
        for b in bytes.reversed() {
            switch b {
            case UInt8(ascii: "."), UInt8(ascii: "!"), UInt8(ascii: "?"): return true
            case UInt8(ascii: " "), UInt8(ascii: "\""), UInt8(ascii: "'"), UInt8(ascii: ")"), UInt8(ascii: "]"): continue
            default: return false
            }
        }
        return false
    }

    /// A short stable identity of the weights: size plus a hash of the tensor table and a
    /// sample of the data. Router and ranking files carry it so they refuse other models.
    public lazy var fingerprint: String = {
        var fnv = FNV1a64()
        func mix(_ b: UInt8) { fnv.mix(b) }
        for t in file.tensors {
            for b in t.name.utf8 { mix(b) }
            for d in t.dims { for i in 0..<8 { mix(UInt8(truncatingIfNeeded: d >> (8 * i))) } }
            mix(UInt8(truncatingIfNeeded: t.type.rawValue))
            // 64 bytes from the start of each tensor's data
            let p = file.data(t)
            for i in 0..<min(64, t.byteCount) { mix(p.load(fromByteOffset: i, as: UInt8.self)) }
        }
        return String(format: "%016llx-%d", fnv.value, file.mapping.size)
    }()
}

/// Finds the model file: an explicit path, then $BUDDY_MODEL, then the default model in
/// `models/` of the working directory or of the checkout the binary was built in.
public enum ModelLocator {
    public static let defaultFileName = "SmolLM2-135M-Instruct.Q4_1.gguf"

    public struct NotFound: Error, CustomStringConvertible {
        public let searched: [String]
        public var description: String {
            "model not found (looked in: \(searched.joined(separator: ", ")))\n"
                + "fetch the default model with: scripts/fetch-model.sh   (or pass --model PATH, or set BUDDY_MODEL)"
        }
    }

    public static func resolve(_ explicit: String?) throws -> String {
        if let p = explicit { return p }   // an explicit path's own errors are clearer than "not found"
        if let env = ProcessInfo.processInfo.environment["BUDDY_MODEL"], !env.isEmpty { return env }
        var candidates = [FileManager.default.currentDirectoryPath + "/models/" + defaultFileName]
        // .build/<config>/buddy -> checkout root
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        for _ in 0..<4 {
            candidates.append(dir.appendingPathComponent("models/" + defaultFileName).path)
            dir = dir.deletingLastPathComponent()
        }
        for c in candidates where FileManager.default.fileExists(atPath: c) { return c }
        throw NotFound(searched: candidates)
    }
}

/// 64-bit FNV-1a: the hash behind the model fingerprint and the stand-in files' checksums.
public struct FNV1a64 {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    public init() {}
    @inline(__always) public mutating func mix(_ byte: UInt8) { value = (value ^ UInt64(byte)) &* 0x100_0000_01b3 }
}

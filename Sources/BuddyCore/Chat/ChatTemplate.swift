/// One message of a conversation.
public struct ChatMessage: Sendable, Equatable, Codable {
    public enum Role: String, Sendable, Codable { case system, user, assistant }
    public var role: Role
    public var content: String
    public init(role: Role, content: String) { self.role = role; self.content = content }
}

/// ChatML, the format of SmolLM2 and Qwen2:
///   <|im_start|>ROLE\nCONTENT<|im_end|>\n ... <|im_start|>assistant\n
/// When the conversation has no system message the model's own default system prompt is
/// inserted, as its Jinja template does.
public struct ChatTemplate: Sendable {
    public let defaultSystemPrompt: String?
    public let endOfTurn = "<|im_end|>"

    public init(defaultSystemPrompt: String?) { self.defaultSystemPrompt = defaultSystemPrompt }

    /// Reads the default system prompt out of a GGUF `tokenizer.chat_template` of the ChatML
    /// shape: the text between "<|im_start|>system\n" and the following "<|im_end|>".
    public init(ggufTemplate: String?) {
        guard let t = ggufTemplate, let start = t.range(of: "<|im_start|>system\n"),
              let end = t.range(of: "<|im_end|>", range: start.upperBound..<t.endIndex) else {
            self.init(defaultSystemPrompt: nil)
            return
        }
        self.init(defaultSystemPrompt: String(t[start.upperBound..<end.lowerBound]))
    }

    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> String {
        var out = ""
        if messages.first?.role != .system, let sys = defaultSystemPrompt {
            out += "<|im_start|>system\n\(sys)<|im_end|>\n"
        }
        for m in messages { out += renderTurn(m) }
        if addGenerationPrompt { out += "<|im_start|>assistant\n" }
        return out
    }

    public func renderTurn(_ m: ChatMessage) -> String { "<|im_start|>\(m.role.rawValue)\n\(m.content)<|im_end|>\n" }
}

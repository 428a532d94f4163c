/// One message of a conversation.
public struct ChatMessage: Sendable, Equatable, Codable {
    public enum Role: String, Sendable, Codable { case system, user, assistant }
    public var role: Role
    public var content: String
    public init(role: Role, content: String) { self.role = role; self.content = content }

    /// A conversation's opening: the system prompt when one is given (without one the template
    /// inserts the model's own), then the user's first turn.
    public static func opening(system: String?, user: String) -> [ChatMessage] {
        (system.map { [ChatMessage(role: .system, content: $0)] } ?? []) + [ChatMessage(role: .user, content: user)]
    }
}

/// ChatML, the format of SmolLM2 and Qwen2:
///   <|im_start|>ROLE\nCONTENT<|im_end|>\n ... <|im_start|>assistant\n
/// When the conversation has no system message the model's own default system prompt is
/// inserted, as its Jinja template does.
///
/// A model whose GGUF has no ChatML template (a base model such as Gemma 3 270M, or a format
/// this engine does not render) gets `plainContinuation`: no template is invented, the
/// conversation is the text typed and the text generated, one after the other, and the model
/// continues it. The chat says so when it opens.
public struct ChatTemplate: Sendable {
    public enum Format: Sendable, Equatable { case chatML, plainContinuation }
    public let format: Format
    public let defaultSystemPrompt: String?
    public var endOfTurn: String { format == .chatML ? "<|im_end|>" : "" }

    public init(defaultSystemPrompt: String?, format: Format = .chatML) {
        self.defaultSystemPrompt = format == .chatML ? defaultSystemPrompt : nil
        self.format = format
    }

    /// From a GGUF `tokenizer.chat_template`: ChatML when the template is ChatML (its default
    /// system prompt is the text between "<|im_start|>system\n" and the following
    /// "<|im_end|>"), plain continuation when the file has no template or another format.
    public init(ggufTemplate: String?) {
        guard let t = ggufTemplate, t.contains("<|im_start|>") else {
            self.init(defaultSystemPrompt: nil, format: .plainContinuation)
            return
        }
        guard let start = t.range(of: "<|im_start|>system\n"),
              let end = t.range(of: "<|im_end|>", range: start.upperBound..<t.endIndex) else {
            self.init(defaultSystemPrompt: nil)
            return
        }
        self.init(defaultSystemPrompt: String(t[start.upperBound..<end.lowerBound]))
    }

    /// What the chat tells the user when the model has no chat template (nil for ChatML).
    public var notice: String? {
        format == .plainContinuation ? "this model has no chat template (a base model): replies continue your text instead of answering it" : nil
    }

    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> String {
        if format == .plainContinuation { return messages.filter { $0.role != .system }.map(\.content).joined() }
        var out = ""
        if messages.first?.role != .system, let sys = defaultSystemPrompt {
            out += "<|im_start|>system\n\(sys)<|im_end|>\n"
        }
        for m in messages { out += renderTurn(m) }
        if addGenerationPrompt { out += "<|im_start|>assistant\n" }
        return out
    }

    public func renderTurn(_ m: ChatMessage) -> String {
        format == .plainContinuation ? (m.role == .system ? "" : m.content) : "<|im_start|>\(m.role.rawValue)\n\(m.content)<|im_end|>\n"
    }
}

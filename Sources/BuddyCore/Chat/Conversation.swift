/// A conversation and its context policy: when the rendered conversation would not leave
/// `reserve` tokens for the reply, the oldest user/assistant turns are dropped (in pairs),
/// while the system prompt and the newest user turn are always kept.
public struct Conversation: Sendable {
    public let template: ChatTemplate
    public var system: String?
    public private(set) var messages: [ChatMessage] = []
    /// How many of the oldest messages the last prompt left out.
    public private(set) var droppedMessages = 0

    public init(template: ChatTemplate, system: String? = nil) {
        self.template = template
        self.system = system
    }

    public mutating func append(_ role: ChatMessage.Role, _ content: String) {
        messages.append(ChatMessage(role: role, content: content))
    }
    public mutating func reset() { messages.removeAll(); droppedMessages = 0 }

    func render(from start: Int) -> String {
        var ms: [ChatMessage] = []
        if let system { ms.append(ChatMessage(role: .system, content: system)) }
        ms.append(contentsOf: messages[start...])
        return template.render(ms)
    }

    /// Tokens of the prompt for the next reply, trimmed to fit.
    public mutating func promptTokens(tokenizer: any Tokenizer, capacity: Int, reserve: Int) throws -> [Int32] {
        var start = 0
        while true {
            var ids = tokenizer.encode(render(from: start), parseSpecial: true)
            if tokenizer.addBOS, let bos = tokenizer.bosID { ids.insert(bos, at: 0) }
            if ids.count + reserve <= capacity || start >= messages.count - 1 {
                droppedMessages = start
                if ids.count >= capacity { throw SessionError.contextFull(needed: ids.count, capacity: capacity) }
                return ids
            }
            start += min(2, messages.count - 1 - start)
        }
    }
}

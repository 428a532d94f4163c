import BuddyCore
import BuddyRouting
import Foundation

/// A saved conversation (JSON):
///
///     {"format": "buddy-chat", "version": 1, "model": "SmolLM2-…", "model_fingerprint": "…",
///      "system": "…" | null,
///      "messages": [{"role": "user", "content": "…"},
///                   {"role": "assistant", "content": "…", "router": "even", "budgets": [1, 0.9],
///                    "mean_layers": 27.4, "total_layers": 30, "layer_usage": [...], "steps": 42,
///                    "stop_reason": "end_of_turn"}]}
///
/// Written atomically (temporary file and rename) so an existing file is never lost.
public struct ChatFile: Sendable, Equatable {
    public struct Message: Sendable, Equatable {
        public var role: ChatMessage.Role
        public var content: String
        public var record: ReplyRecord?
    }
    public static let format = "buddy-chat"
    public static let version = 1

    public var model: String
    public var fingerprint: String
    public var system: String?
    public var messages: [Message]

    public init(model: LanguageModel, system: String?, messages: [ChatMessage], records: [ReplyRecord?]) {
        self.model = URL(fileURLWithPath: model.path).lastPathComponent
        fingerprint = model.fingerprint
        self.system = system
        self.messages = messages.enumerated().map { i, m in
            Message(role: m.role, content: m.content, record: m.role == .assistant && i < records.count ? records[i] : nil)
        }
    }

    public init(model: String, fingerprint: String, system: String?, messages: [Message]) {
        self.model = model
        self.fingerprint = fingerprint
        self.system = system
        self.messages = messages
    }

    public struct FormatError: Error, CustomStringConvertible {
        public let description: String
    }

    public func jsonObject() -> [String: Any] {
        let ms: [[String: Any]] = messages.map { m in
            var o: [String: Any] = ["role": m.role.rawValue, "content": m.content]
            if let r = m.record {
                o["router"] = r.router
                o["budgets"] = r.budgets
                o["mean_layers"] = (r.meanLayers * 1000).rounded() / 1000
                o["total_layers"] = r.totalLayers
                o["layer_usage"] = r.layerUsage
                o["steps"] = r.steps
                o["stop_reason"] = r.stopReason.rawValue
            }
            return o
        }
        return ["format": ChatFile.format, "version": ChatFile.version, "model": model,
                "model_fingerprint": fingerprint, "system": system ?? NSNull(), "messages": ms]
    }

    public static func write(_ f: ChatFile, to path: String) throws {
        let data = try JSONSerialization.data(withJSONObject: f.jsonObject(), options: [.sortedKeys, .prettyPrinted])
        try AtomicFile.write(data, to: path)
    }

    public static func read(_ path: String) throws -> ChatFile {
        guard let data = FileManager.default.contents(atPath: path) else { throw FormatError(description: "cannot read the file") }
        return try parse(data)
    }

    public static func parse(_ data: Data) throws -> ChatFile {
        guard let j = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw FormatError(description: "not a JSON object")
        }
        guard j["format"] as? String == format else { throw FormatError(description: "not a buddy chat file (format field)") }
        guard j["version"] as? Int == version else { throw FormatError(description: "unsupported version \(j["version"] ?? "none")") }
        guard let ms = j["messages"] as? [[String: Any]] else { throw FormatError(description: "missing messages") }
        var out: [Message] = []
        for (i, m) in ms.enumerated() {
            guard let rs = m["role"] as? String, let role = ChatMessage.Role(rawValue: rs), role != .system,
                  let content = m["content"] as? String else {
                throw FormatError(description: "message \(i) needs a role (user or assistant) and content")
            }
            var record: ReplyRecord?
            if role == .assistant, let budgets = m["budgets"] as? [Double] {
                record = ReplyRecord(text: content, router: m["router"] as? String ?? "?", budgets: budgets,
                                     meanLayers: m["mean_layers"] as? Double ?? 0, totalLayers: m["total_layers"] as? Int ?? 0,
                                     layerUsage: m["layer_usage"] as? [Int] ?? [], steps: m["steps"] as? Int ?? 0,
                                     stopReason: StopReason(rawValue: m["stop_reason"] as? String ?? "") ?? .endOfTurn)
            }
            out.append(Message(role: role, content: content, record: record))
        }
        return ChatFile(model: j["model"] as? String ?? "", fingerprint: j["model_fingerprint"] as? String ?? "",
                        system: j["system"] as? String, messages: out)
    }
}

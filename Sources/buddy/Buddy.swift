import ArgumentParser
import BuddyCore
import Foundation

@main
struct Buddy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "buddy",
        abstract: "A terminal chat with a small LLM whose depth you can turn down while you talk.",
        discussion: """
            With no subcommand, opens the chat. Every command finds the model the same way:
            --model PATH, else $BUDDY_MODEL, else models/SmolLM2-135M-Instruct.Q4_1.gguf
            (fetch it with scripts/fetch-model.sh).
            """,
        subcommands: [Chat.self, Generate.self, Tokenize.self, Inspect.self, Eval.self, Calibrate.self, Train.self, Bench.self, Soak.self],
        defaultSubcommand: Chat.self)
}

/// Options every model-using command shares.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "Path to a GGUF model (default: $BUDDY_MODEL, then models/SmolLM2-135M-Instruct.Q4_1.gguf).")
    var model: String?

    @Option(name: .long, help: "Worker threads for the compute kernels.")
    var threads: Int = 2

    func load() throws -> LanguageModel {
        let path = try ModelLocator.resolve(model)
        do { return try LanguageModel(path: path) } catch { throw CLIError("\(path): \(error)") }
    }

    func validateThreads() throws {
        guard (1...256).contains(threads) else { throw ValidationError("--threads must be between 1 and 256") }
    }
}

struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Writes to stdout without buffering surprises: tokens must appear as they are made.
enum Out {
    static func write(_ s: String) {
        FileHandle.standardOutput.write(s.data(using: .utf8)!)
    }
    static func err(_ s: String) {
        FileHandle.standardError.write((s + "\n").data(using: .utf8)!)
    }
}

/// Minimal JSON string escaping (RFC 8259).
func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}

func jsonNumber(_ x: Double) -> String { x.isFinite ? String(format: "%.3f", x) : "null" }

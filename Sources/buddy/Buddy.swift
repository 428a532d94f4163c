import ArgumentParser
import BuddyCore
import BuddyRouting
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

    /// As ArgumentParser's own, but a library's complaint about the command line reads as the
    /// parser's (with the usage line).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let e as ToolError where e.isUsage {
            exit(withError: ValidationError(e.description))
        } catch {
            exit(withError: error)
        }
    }
}

/// Runs a library's validation, its complaints about the command line shown as the parser's.
func validating(_ check: () throws -> Void) throws {
    do { try check() } catch let e as ToolError where e.isUsage { throw ValidationError(e.description) }
}

extension Reporter {
    /// Results to stdout, notes to stderr, progress as bars on stderr.
    static var terminal: Reporter { Reporter(line: { print($0) }, note: Out.err, progress: { ProgressBar($0, total: $1) }) }
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

    func validateThreads() throws { try validating { try BuddyRouting.validateThreads(threads) } }
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

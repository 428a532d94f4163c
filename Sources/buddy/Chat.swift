import ArgumentParser
import BuddyCore
import Foundation

struct Chat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Chat with the model (the default command).",
        discussion: """
            `buddy "question"` answers once; `cat file | buddy "summarise"` puts stdin before the question.
            With no question, starts a line-mode conversation (type /quit to leave).
            """)
    @Argument(help: "A question to answer once, then exit.")
    var question: String?
    @Option(name: .long, help: "System prompt (default: the model's own).")
    var system: String?
    @Option(name: .long, help: "Maximum tokens per reply.")
    var maxTokens: Int = 512
    @Option(name: .long, help: "Context size in tokens.")
    var context: Int = 2048
    @Flag(name: .long, help: "Line-mode interface even on a terminal.")
    var plain = false
    @OptionGroup var sampling: SamplingOptions
    @OptionGroup var modelOptions: ModelOptions

    func run() throws {
        let model = try modelOptions.load()
        let session = Session(model: model, capacity: context, threads: modelOptions.threads)
        var conversation = Conversation(template: model.template, system: system)
        var sampler = Sampler(sampling.parameters)

        func reply(to text: String) throws {
            conversation.append(.user, text)
            let prompt = try conversation.promptTokens(tokenizer: model.tokenizer, capacity: session.capacity, reserve: min(maxTokens, session.capacity / 4))
            var answer = ""
            let stats = try session.generate(prompt: prompt, maxTokens: maxTokens, sampler: &sampler) { tok in
                answer += tok.text
                Out.write(tok.text)
                return true
            }
            answer += stats.trailingText
            Out.write(stats.trailingText + "\n")
            conversation.append(.assistant, answer)
        }

        if var q = question {
            if isatty(0) == 0, let piped = String(data: FileHandle.standardInput.readDataToEndOfFile(), encoding: .utf8), !piped.isEmpty {
                q = piped + "\n\n" + q
            }
            try reply(to: q)
            return
        }
        let interactive = isatty(0) != 0
        while true {
            if interactive { FileHandle.standardError.write("> ".data(using: .utf8)!) }
            guard let line = readLine() else { break }
            let text = line.trimmingCharacters(in: .whitespaces)
            if text.isEmpty { continue }
            if text == "/quit" || text == "/exit" { break }
            if text == "/reset" { conversation.reset(); continue }
            try reply(to: text)
        }
    }
}

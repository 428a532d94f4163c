import ArgumentParser
import BuddyCore
import BuddyEngine
import BuddyRouting
import BuddyTUI
import Foundation

struct Chat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Chat with the model (the default command).",
        discussion: """
            On a terminal, opens the full-screen chat: conversation, a live layer-routing panel,
            a depth-budget slider (- / + in 5% steps, [ / ] one layer) and a status bar; F1 or ?
            for help. When stdin or stdout is not a terminal, with --plain, or with TERM=dumb,
            a line-mode conversation instead (type /help). `buddy "question"` answers once;
            `cat file | buddy "summarise"` puts stdin before the question.
            Exit status: 0, 1 on error, 130 when interrupted.
            """)
    @Argument(help: "A question to answer once, then exit.")
    var question: String?
    @Option(name: .long, help: "System prompt (default: the model's own).")
    var system: String?
    @Option(name: .long, help: "Depth budget in (0, 1] (the fraction of routable layers run per token), or auto: the Budget Predictor picks one per message.")
    var budget: BudgetArgument = .fixed(1)
    @Option(name: .long, help: AutoBudgetHelp.tolerance)
    var qualityTolerance: Double?
    @Option(name: .long, help: AutoBudgetHelp.share)
    var fullDepthShare: Double?
    @Option(name: .long, help: "Router: buddy (default; falls back to even until trained), shortgpt, sleb, last, random, even, or a router file.")
    var router: String?
    @Option(name: .long, help: "What a skipped layer leaves in the KV cache: fill (default), mask or zero (see `buddy generate --help`).")
    var kvPolicy: KVPolicy = .fill
    @Option(name: .long, help: "What a skipped layer adds: on (the model's stand-ins), off (plain skip), or a stand-in file. Default: on when the model has stand-ins.")
    var standIns: StandInChoice = .auto
    @Option(name: .long, help: PromptDepth.help)
    var promptDepth: PromptDepth = .full
    @Option(name: .long, help: Steering.help)
    var steering: Steering = .standard
    @Option(name: .long, help: HeadChoice.help)
    var head: HeadChoice = .standard
    @Option(name: .long, help: "Colour theme: default, light, mono, ansi16, or a path to a .theme file.")
    var theme: String = "default"
    @Option(name: .long, help: "Maximum tokens per reply.")
    var maxTokens: Int = 512
    @Option(name: .long, help: "Context size in tokens.")
    var context: Int = 2048
    @Flag(name: .long, help: "Line-mode interface even on a terminal.")
    var plain = false
    @OptionGroup var sampling: SamplingOptions
    @OptionGroup var modelOptions: ModelOptions

    func validate() throws {
        try AutoBudgetHelp.validate(tolerance: qualityTolerance, share: fullDepthShare)
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1") }
        guard context >= 16 else { throw ValidationError("--context must be at least 16") }
        try modelOptions.validateThreads()
    }

    var fullScreen: Bool {
        let term = ProcessInfo.processInfo.environment["TERM"] ?? ""
        return question == nil && !plain && isatty(0) != 0 && isatty(1) != 0 && !term.isEmpty && term != "dumb"
    }

    func run() throws {
        let model = try modelOptions.load()
        var opts = EngineOptions()
        opts.router = router ?? "buddy"
        opts.fallBackToEven = router == nil
        opts.budget = budget.value ?? 1
        opts.auto = budget.value == nil
        opts.qualityTolerance = qualityTolerance
        opts.fullDepthShare = fullDepthShare
        opts.kvPolicy = kvPolicy
        opts.promptDepth = promptDepth
        opts.steering = steering == .on
        opts.standIns = try standIns.resolve(model: model)
        opts.head = head
        opts.system = system
        opts.maxTokens = maxTokens
        opts.context = context
        opts.threads = modelOptions.threads
        opts.sampling = sampling.chatParameters

        if fullScreen {
            do {
                try TUI.check()
                let mailbox = EventMailbox()
                let engine: ChatEngine
                do { engine = try ChatEngine(model: model, options: opts, sink: { mailbox.post($0) }) } catch { throw CLIError("\(error)") }
                var tui = TUI.Options()
                tui.theme = theme
                let code = try TUI.run(engine: engine, mailbox: mailbox, options: tui)
                if code != 0 { throw ExitCode(code) }
                return
            } catch let e as TUI.Unavailable {
                Out.err("buddy: \(e); using line mode")
            }
        }
        try LineChat(options: opts, model: model).run(question: question)
    }
}

/// The line-mode conversation (no terminal, --plain, TERM=dumb) and one-shot answers, on
/// the same engine as the full-screen chat.
final class LineChat: @unchecked Sendable {
    let options: EngineOptions
    let model: LanguageModel
    private let lock = NSLock()
    private var busy = false
    private var interrupted = false
    private var failed = false
    private var autoOn = false
    private let interactive = isatty(0) != 0
    /// Notices (router fallback, /auto) are shown in conversations, not in one-shot answers.
    private var conversational = true

    init(options: EngineOptions, model: LanguageModel) {
        self.options = options
        self.model = model
    }

    private func withLock<T>(_ f: () -> T) -> T { lock.lock(); defer { lock.unlock() }; return f() }

    func handle(_ e: EngineEvent) {
        switch e {
        case let .token(text, _): Out.write(text)
        case .done: Out.write("\n")
        case let .error(s): withLock { failed = true }; Out.err("error: \(s)")
        case let .notice(s): if conversational { Out.err("· \(s)") }
        case let .budget(b, k, r): if interactive { Out.err("· budget \(Budget.percent(b))% (\(k)/\(r) layers)") }
        case let .router(n): if interactive { Out.err("· router: \(n)") }
        case let .auto(on): withLock { autoOn = on }; if interactive { Out.err("· auto budget \(on ? "on" : "off")") }
        case let .saved(p): Out.err("· saved to \(p)")
        case let .loaded(p, m, _): Out.err("· loaded \(p) (\(m.count) messages)")
        case .conversationReset: if interactive { Out.err("· conversation reset") }
        case let .systemPrompt(s): if interactive { Out.err("· system prompt: \(s ?? "the model's default")") }
        case .ready, .replyStarted, .stats: break
        }
    }

    func run(question: String?) throws {
        conversational = question == nil
        let engine: ChatEngine
        do { engine = try ChatEngine(model: model, options: options, sink: { [self] in handle($0) }) } catch { throw CLIError("\(error)") }
        // Ctrl-C stops a reply; when idle (or answering once) it ends with status 130.
        signal(SIGINT, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        source.setEventHandler { [self] in
            let wasBusy = withLock { interrupted = true; return busy }
            if wasBusy && question == nil {
                engine.send(.stop)
            } else {
                engine.send(.stop)
                Out.write("\n")
                exit(130)
            }
        }
        source.resume()

        func perform(_ cmd: EngineCommand) {
            withLock { busy = true }
            engine.send(cmd)
            engine.drain()
            withLock { busy = false }
        }

        if var q = question {
            if isatty(0) == 0, let piped = String(data: FileHandle.standardInput.readDataToEndOfFile(), encoding: .utf8), !piped.isEmpty {
                q = piped + "\n\n" + q
            }
            perform(.send(q))
            if withLock({ interrupted }) { throw ExitCode(130) }
            if withLock({ failed }) { throw ExitCode(1) }
            return
        }
        while true {
            if interactive { FileHandle.standardError.write("> ".data(using: .utf8)!) }
            guard let line = readLine() else { break }
            // The same reading of a line, and the same commands, as the full-screen chat.
            switch ChatInput.interpret(line, autoBudgetOn: withLock { autoOn }) {
            case .empty: continue
            case let .invalid(e): Out.err("error: \(e)")
            case let .message(text):
                withLock { interrupted = false }
                perform(.send(text))
            case let .action(action):
                switch action {
                case let .engine(command): perform(command)
                case .quit: return
                case .showHelp: Out.err(SlashCommand.usage)
                case .setTheme: Out.err("· themes apply to the full-screen chat")
                case .redraw: break
                }
            }
        }
    }
}


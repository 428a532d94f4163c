import ArgumentParser
import BuddyCore
import BuddyEvaluation
import BuddyRouting
import Foundation

struct SamplingOptions: ParsableArguments {
    @Option(name: .long, help: "Sampling temperature; 0 is greedy (default: 0 for generate, 0.3 for the chat).") var temperature: Float?
    @Option(name: .long, help: "Keep the K most likely tokens (0 = off).") var topK: Int = 40
    @Option(name: .long, help: "Nucleus sampling threshold (1 = off).") var topP: Float = 0.95
    @Option(name: .long, help: "Drop tokens below this fraction of the top probability (0 = off).") var minP: Float = 0.05
    @Option(name: .long, help: "Repetition penalty, 1 = off (default: 1 for generate, 1.1 for the chat).") var repeatPenalty: Float?
    @Option(name: .long, help: "How many recent tokens the repetition penalty looks at.") var repeatLastN: Int = 64
    @Option(name: .long, help: "DRY penalty for extending a run the context already holds, 0 = off (default: 0 for generate, \(SamplingOptions.chatDRYMultiplier) for the chat).") var dryMultiplier: Float?
    @Option(name: .long, help: "DRY: how fast the penalty grows with the length of the repeated run.") var dryBase: Float = 1.75
    @Option(name: .long, help: "DRY: runs shorter than this repeat without penalty (llama.cpp's default is 2).") var dryAllowedLength: Int = SamplingParameters().dryAllowedLength
    @Option(name: .long, help: "Random seed.") var seed: UInt64 = 0

    /// The chat's DRY multiplier, chosen on training prompts with the allowed length 8 (eval/NOTES.md,
    /// "A repetition guard"): a copy of 8 tokens costs 0.8 nats, of 12 about 7.5, so a reply
    /// stops repeating itself within a sentence while ordinary phrases are free.
    static let chatDRYMultiplier: Float = 0.8

    /// Greedy and unpenalised unless asked: `generate` is for reproducible runs.
    var parameters: SamplingParameters { parameters(temperature: 0, repeatPenalty: 1, dryMultiplier: 0) }

    /// The chat's: it samples, lightly penalising repeats, because a greedy 135M model loops.
    var chatParameters: SamplingParameters { parameters(temperature: 0.3, repeatPenalty: 1.1, dryMultiplier: SamplingOptions.chatDRYMultiplier) }

    /// With other defaults for what the user did not set.
    func parameters(temperature defaultTemperature: Float, repeatPenalty defaultPenalty: Float, dryMultiplier defaultDRY: Float) -> SamplingParameters {
        var p = SamplingParameters()
        p.temperature = temperature ?? defaultTemperature
        p.topK = topK
        p.topP = topP
        p.minP = minP
        p.repetitionPenalty = repeatPenalty ?? defaultPenalty
        p.repetitionWindow = repeatLastN
        p.dryMultiplier = dryMultiplier ?? defaultDRY
        p.dryBase = dryBase
        p.dryAllowedLength = dryAllowedLength
        p.seed = seed
        return p
    }

    func validate() throws {
        if let temperature { guard temperature >= 0, temperature.isFinite else { throw ValidationError("--temperature must be >= 0") } }
        guard topK >= 0 else { throw ValidationError("--top-k must be >= 0") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be in (0, 1]") }
        guard minP >= 0, minP < 1 else { throw ValidationError("--min-p must be in [0, 1)") }
        if let repeatPenalty { guard repeatPenalty > 0 else { throw ValidationError("--repeat-penalty must be > 0") } }
        guard repeatLastN >= 0 else { throw ValidationError("--repeat-last-n must be >= 0") }
        if let dryMultiplier { guard dryMultiplier >= 0, dryMultiplier.isFinite else { throw ValidationError("--dry-multiplier must be >= 0") } }
        guard dryBase >= 1, dryBase <= 8 else { throw ValidationError("--dry-base must be in [1, 8]") }
        guard dryAllowedLength >= 1 else { throw ValidationError("--dry-allowed-length must be >= 1") }
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream a continuation of a prompt to stdout.",
        discussion: """
            Greedy by default (--temperature 0). With --chat the prompt becomes one user turn in
            the model's chat template. With --json each token is a JSON line:
              {"type":"token","step":i,"id":N,"text":"...","layers":[...]}
            followed by {"type":"done","prompt_tokens":N,"generated_tokens":N,"prefill_tok_s":X,
              "decode_tok_s":Y,"mean_layers_per_token":Z}.
            """)

    @Option(name: .long, help: "The prompt text.") var prompt: String
    @Flag(name: .long, help: "Wrap the prompt in the chat template as one user turn.") var chat = false
    @Option(name: .long, help: "System prompt for --chat (default: the model's own).") var system: String?
    @Option(name: .long, help: "Maximum number of tokens to generate.") var maxTokens: Int = 128
    @Option(name: .long, help: "Context size in tokens.") var context: Int = 2048
    @Flag(name: .long, help: "Write JSON lines instead of text.") var json = false
    @OptionGroup var sampling: SamplingOptions
    @OptionGroup var routing: RoutingOptions
    @OptionGroup var modelOptions: ModelOptions

    func validate() throws {
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be >= 0") }
        guard context >= 16 else { throw ValidationError("--context must be at least 16") }
        try modelOptions.validateThreads()
    }

    func run() throws {
        let model = try modelOptions.load()
        let session = Session(model: model, capacity: context, threads: modelOptions.threads)
        session.policy = routing.kvPolicy
        session.promptDepth = routing.promptDepth
        session.standIns = try routing.standIns.resolve(model: model)
        session.head = routing.head
        let text: String
        if chat {
            text = model.template.render(ChatMessage.opening(system: system, user: prompt))
        } else {
            text = prompt
        }
        var ids = model.tokenizer.encode(text, parseSpecial: chat)
        if model.tokenizer.addBOS, let bos = model.tokenizer.bosID { ids.insert(bos, at: 0) }
        guard !ids.isEmpty else { throw CLIError("the prompt is empty") }
        let budget = try routing.resolveBudget(for: ids, in: session)
        session.selector = try routing.makeSelector(budget: budget, model: model)
        var sampler = Sampler(sampling.parameters)
        let stats = try session.generate(prompt: ids, maxTokens: maxTokens, sampler: &sampler) { tok in
            if json {
                Out.write("{\"type\":\"token\",\"step\":\(tok.step),\"id\":\(tok.id),\"text\":\(jsonString(tok.text)),\"layers\":[\(tok.layers.map(String.init).joined(separator: ","))]}\n")
            } else {
                Out.write(tok.text)
            }
            return true
        }
        if json {
            Out.write("{\"type\":\"done\",\"prompt_tokens\":\(stats.promptTokens),\"generated_tokens\":\(stats.generatedTokens),"
                + "\"prefill_tok_s\":\(jsonNumber(stats.prefillTokensPerSecond)),\"decode_tok_s\":\(jsonNumber(stats.decodeTokensPerSecond)),"
                + "\"mean_layers_per_token\":\(jsonNumber(stats.meanLayersPerToken)),\"budget\":\(jsonNumber(budget)),\"budget_mode\":\(jsonString(routing.budget == .auto ? "auto" : "fixed")),"
                + "\"router\":\(jsonString(session.selector.map { ($0 as? BudgetedLayerSelector)?.name ?? "router" } ?? "full")),"
                + "\"kv_policy\":\(jsonString(routing.kvPolicy.rawValue)),\"prompt_depth\":\(jsonString(routing.promptDepth.rawValue)),\"stand_ins\":\(jsonString(session.standIns == nil ? "off" : "on")),\"head\":\(jsonString(session.head.rawValue)),\"stop_reason\":\(jsonString(stats.stopReason.rawValue))}\n")
        } else {
            Out.write(stats.trailingText + "\n")
        }
    }
}

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the token ids of a text.")
    @Flag(name: .long, help: "Recognise special tokens such as <|im_start|> in the text.") var special = false
    @Flag(name: .long, help: "Print a JSON array.") var json = false
    @Argument(help: "The text to tokenize.") var text: String
    @OptionGroup var modelOptions: ModelOptions

    func run() throws {
        let path = try ModelLocator.resolve(modelOptions.model)
        let tokenizer: any Tokenizer
        do { tokenizer = try makeTokenizer(gguf: GGUFFile(path: path)) } catch { throw CLIError("\(path): \(error)") }
        let ids = tokenizer.encode(text, parseSpecial: special)
        if json {
            print("[" + ids.map(String.init).joined(separator: ",") + "]")
        } else {
            print(ids.map(String.init).joined(separator: " "))
        }
    }
}

import ArgumentParser
import BuddyCore
import BuddyRouting
import BuddyTraining
import Foundation

extension CalibrationRun.Method: ExpressibleByArgument {}

struct Calibrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rank layers for a static pruning baseline (ranking file), or fit stand-ins for skipped layers.",
        discussion: """
            shortgpt: Block Influence (1 - mean cosine similarity between a layer's input and
            output) on the calibration text; the most influential layers are kept first.
            sleb: greedy removal; repeatedly drops the layer whose removal raises the
            calibration NLL least (slow: about (L-2)^2/2 evaluations).
            Calibration uses the first --tokens tokens of --data; evaluate on text after them
            (buddy eval perplexity --skip-chunks). Example:
              buddy calibrate shortgpt --data ../shared/data/wikitext2_valid.txt --out routers/shortgpt-ranking.json
            stand-ins: fits, for every routable layer, the low-rank affine map of its
            RMS-normalised input that a skipped layer adds instead (stage one: closed-form
            ridge regression, rank and ridge chosen per layer on validation text), then tunes
            the stand-ins of the layers the slider's sets skip on the model's output (stage
            two: KL from full depth, back-propagated through the later layers, --tune-*).
            The options marked "stand-ins" apply. The shipped file's notes hold the command
            that made it (docs/STAND-INS.md), e.g.
              buddy calibrate stand-ins --data ../shared/data/wikitext2_valid.txt --out routers/stand-ins.bin
            """)

    @Argument(help: "shortgpt, sleb or stand-ins.") var method: CalibrationRun.Method
    @Option(name: .long, help: "Calibration text file.") var data: String
    @Option(name: .long, help: "Where to write the ranking (JSON; written atomically).") var out: String
    @Option(name: .long, help: "Calibration tokens taken from the start of --data.") var tokens: Int = 2048
    @Option(name: .long, help: "Tokens per calibration chunk.") var chunk: Int = 256
    @Option(name: .customLong("with-stand-ins"), help: "(sleb) a stand-in file: removed layers apply their stand-ins while SLEB measures.") var withStandIns: String?
    @OptionGroup var standIns: StandInCalibrationOptions
    @OptionGroup var modelOptions: ModelOptions

    var options: CalibrationRun.Options {
        .init(method: method, data: data, out: out, tokens: tokens, chunk: chunk, withStandIns: withStandIns, standIns: standIns.fitting, threads: modelOptions.threads)
    }
    func validate() throws { try validating(options.validate) }

    func run() throws { try CalibrationRun.run(options, model: modelOptions.load, report: .terminal) }
}

/// The options of `buddy calibrate stand-ins`: which text and chat data fit and validate the
/// stand-ins, and which routed scenarios they learn to serve.
struct StandInCalibrationOptions: ParsableArguments {
    @Option(name: .long, help: "(stand-ins) 512-token chunks of --data to fit on, comma-separated FIRST..<END ranges (evaluation scores chunks 20-83).") var trainChunks: String = "0..<14,84..<104"
    @Option(name: .long, help: "(stand-ins) chunks of --data that choose rank and ridge per layer.") var validationChunks: String = "14..<20"
    @Option(name: .long, help: "(stand-ins) JSON-lines chat prompts (MT-Bench layout): the full model's greedy replies to train-split prompts join the fit.") var chatData: String?
    @Option(name: .long, help: "(stand-ins) train-split chat prompts to fit on, FIRST..<END.") var chatPrompts: String = "0..<16"
    @Option(name: .long, help: "(stand-ins) train-split chat prompts for validation, FIRST..<END.") var chatValidationPrompts: String = "16..<24"
    @Option(name: .long, help: "(stand-ins) reply tokens of each chat sequence.") var replyTokens: Int = 96
    @Flag(name: .long, help: "(stand-ins) also use each chat prompt's follow-up turn (after the full model's first reply) as a conversation, for fitting and validation.") var secondTurns = false
    @Option(name: .long, help: "(stand-ins) routers whose layer sets at --scenario-budgets give the routed inputs: static rankings (sleb, shortgpt) or a Decision Module (buddy: every candidate set it may pick), comma-separated; 'none' fits on full-depth inputs only.") var scenarios: String = "sleb,shortgpt"
    @Option(name: .long, help: "(stand-ins) budgets of the routed scenarios.") var scenarioBudgets: String = "0.9,0.8,0.7,0.6,0.5"
    @Option(name: .long, help: "(stand-ins) use every N-th token of each sequence as a regression row.") var rowStride: Int = 2
    @Option(name: .long, help: "(stand-ins) weigh each token by 1/mean square of its residual stream (errors relative to the stream's scale) or not.") var relativeError: Bool = true
    @Option(name: .long, help: "(stand-ins) ranks to choose from per layer.") var ranks: String = "0,16,32,64,128"
    @Option(name: .long, help: "(stand-ins) relative ridge penalties to choose from per layer.") var ridges: String = "0.001,0.01,0.1"

    @Option(name: .long, help: "(stand-ins) epochs of stage two, which tunes the stand-ins on the model's output (KL from full depth, back-propagated through the later layers; 0: closed form only).") var tuneEpochs: Int = 1
    @Option(name: .long, help: "(stand-ins) stage two's Adam learning rate.") var tuneLearningRate: Double = 1e-4
    @Option(name: .long, help: "(stand-ins) text chunks stage two trains on (with the --chat-prompts replies); it validates on --validation-chunks and --chat-validation-prompts.") var tuneChunks: String = "0..<14,84..<116"
    @Option(name: .long, help: "(stand-ins) routers whose layer sets at --tune-budgets stage two trains (buddy: every candidate set the Decision Module may pick).") var tuneSets: String = "sleb,shortgpt,buddy"
    @Option(name: .long, help: "(stand-ins) budgets of those sets.") var tuneBudgets: String = "0.9,0.8"
    @Option(name: .long, help: "(stand-ins) budgets whose sets (of the --tune-sets routers) keep their stand-ins: no layer they skip is tuned (e.g. 0.9,0.8 when tuning the 0.5 sets on top of a file tuned there).") var tuneKeepBudgets: String = ""
    @Option(name: .long, help: "(stand-ins) how stage two runs a chat sequence's prompt: budget (at the set's depth, as `eval chat` measures by default) or full (every layer, as the chat runs a message; only the reply is routed).") var tunePromptDepth: PromptDepth = .budget
    @Option(name: .long, help: "(stand-ins) start stage two from this stand-in file instead of fitting stage one (experiments; the notes name the file).") var initial: String?

    var fitting: StandInFitting {
        var f = StandInFitting(trainChunks: trainChunks, validationChunks: validationChunks, chatData: chatData, chatPrompts: chatPrompts,
                       chatValidationPrompts: chatValidationPrompts, replyTokens: replyTokens, scenarios: scenarios, scenarioBudgets: scenarioBudgets,
                       rowStride: rowStride, relativeError: relativeError, ranks: ranks, ridges: ridges)
        f.tuneEpochs = tuneEpochs; f.tuneLearningRate = tuneLearningRate; f.tuneChunks = tuneChunks
        f.tuneSets = tuneSets; f.tuneBudgets = tuneBudgets; f.tuneKeepBudgets = tuneKeepBudgets; f.initial = initial; f.secondTurns = secondTurns; f.tunePromptDepth = tunePromptDepth
        return f
    }
}

import ArgumentParser
import BuddyCore
import BuddyEvaluation
import BuddyRouting
import Foundation

extension KernelPath: ExpressibleByArgument {}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prefill and decode speed per budget.",
        discussion: """
            A warm-up round, then --runs rounds; each round runs every budget in turn (so machine
            noise hits all budgets alike): a --prompt-tokens prefill and a --gen-tokens greedy
            decode. Reports medians, decode speed-up over full depth (median of the per-round
            ratios, when budget 1 is in the list), peak resident memory and the shares of decode
            time spent routing, in stand-ins and in the output head (final norm and output
            projection). Routing and stand-ins are timed where they run; the head is timed apart
            and scaled by the decode speed.
            Compare against llama.cpp with scripts/bench_vs_llamacpp.py.
            """)

    @Option(name: .long, help: "Prompt length for the prefill measurement.") var promptTokens: Int = 512
    @Option(name: .long, help: "Tokens to decode.") var genTokens: Int = 128
    @Option(name: .long, help: "Comma-separated budgets.") var budgets: String = "1,0.75,0.5"
    @Option(name: .long, help: "Measured runs per budget (median reported).") var runs: Int = 3
    @Option(name: .long, help: "Router for budgets below 1 (default: buddy if trained, else an evenly spread layer subset).") var router: String?
    @Option(name: .long, help: "KV policy for skipped layers (fill, mask, zero).") var kvPolicy: KVPolicy = .fill
    @Option(name: .long, help: "What a skipped layer adds: on (the model's stand-ins), off (plain skip), or a stand-in file. Default: on when the model has stand-ins.") var standIns: StandInChoice = .auto
    @Option(name: .long, help: Steering.help) var steering: Steering = .standard
    @Option(name: .long, help: HeadChoice.help) var head: HeadChoice = .standard
    @Option(name: .long, help: "The kernels' vector instructions: auto (the best this CPU has; the default), avx2 (AVX2 even where AVX-512 VNNI is present: what an AVX2-only x86-64 runs) or portable (plain C). The header and --json name the path used.") var kernels: KernelPath = .auto
    @Flag(name: .long, help: "One JSON object per budget.") var json = false
    @OptionGroup var modelOptions: ModelOptions

    var options: BenchRun.Options {
        .init(promptTokens: promptTokens, genTokens: genTokens, budgets: budgets, runs: runs, router: router, kvPolicy: kvPolicy, standIns: standIns,
              steering: steering == .on, json: json, threads: modelOptions.threads, head: head, kernels: kernels)
    }
    func validate() throws { try validating(options.validate) }

    func run() throws { try BenchRun.run(options, model: try modelOptions.load(), report: .terminal) }
}

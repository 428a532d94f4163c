import ArgumentParser
import BuddyCore
import Foundation

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure model quality.",
        subcommands: [Perplexity.self])
}

extension Eval {
    struct Perplexity: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Perplexity on a text file with llama.cpp's protocol.",
            discussion: """
                The file is tokenized whole and cut into chunks of --ctx tokens; each chunk is
                evaluated from an empty cache and only its second half is scored, as
                llama.cpp's llama-perplexity does. Example:
                  buddy eval perplexity --data ../shared/data/wikitext2_valid.txt --chunks 8
                """)
        @Option(name: .long, help: "Text file to score (e.g. WikiText-2).")
        var data: String
        @Option(name: .long, help: "Score only the first N chunks (default: all).")
        var chunks: Int?
        @Option(name: .long, help: "Chunk size in tokens.")
        var ctx: Int = 512
        @OptionGroup var modelOptions: ModelOptions

        func validate() throws {
            guard ctx >= 16 && ctx <= 8192 else { throw ValidationError("--ctx must be between 16 and 8192") }
            if let chunks, chunks < 1 { throw ValidationError("--chunks must be at least 1") }
            try modelOptions.validateThreads()
        }

        func run() throws {
            guard var text = try? String(contentsOfFile: data, encoding: .utf8) else {
                throw CLIError("cannot read data file '\(data)' as UTF-8 text")
            }
            // llama.cpp's -f drops one trailing newline; do the same so chunks line up.
            if text.hasSuffix("\n") { text.removeLast() }
            let model = try modelOptions.load()
            let evaluator = PerplexityEvaluator(model: model, contextSize: ctx, threads: modelOptions.threads)
            let tokens = evaluator.tokenize(text)
            let available = tokens.count / ctx
            guard available > 0 else { throw CLIError("'\(data)' has \(tokens.count) tokens, fewer than one chunk of \(ctx)") }
            let total = min(available, chunks ?? available)
            let bar = ProgressBar("perplexity", total: total)
            let result = evaluator.evaluate(tokens: tokens, maxChunks: total, progress: { done, _, partial in
                bar.update(done, detail: String(format: "ppl %.4f", partial.perplexity))
            })
            print(String(format: "perplexity %.4f over %d chunks of %d (%d scored tokens; %d tokens in file)",
                         result.perplexity, result.chunks.count, ctx, result.count, tokens.count))
        }
    }
}

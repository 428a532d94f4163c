import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

struct Calibrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rank layers for a static pruning baseline and write a ranking file.",
        discussion: """
            shortgpt: Block Influence (1 - mean cosine similarity between a layer's input and
            output) on the calibration text; the most influential layers are kept first.
            sleb: greedy removal; repeatedly drops the layer whose removal raises the
            calibration NLL least (slow: about (L-2)^2/2 evaluations).
            Calibration uses the first --tokens tokens of --data; evaluate on text after them
            (buddy eval perplexity --skip-chunks). Example:
              buddy calibrate shortgpt --data ../shared/data/wikitext2_valid.txt --out routers/shortgpt-ranking.json
            """)

    enum Method: String, ExpressibleByArgument, CaseIterable { case shortgpt, sleb }

    @Argument(help: "shortgpt or sleb.")
    var method: Method
    @Option(name: .long, help: "Calibration text file.")
    var data: String
    @Option(name: .long, help: "Where to write the ranking (JSON; written atomically).")
    var out: String
    @Option(name: .long, help: "Calibration tokens taken from the start of --data.")
    var tokens: Int = 2048
    @Option(name: .long, help: "Tokens per calibration chunk.")
    var chunk: Int = 256
    @OptionGroup var modelOptions: ModelOptions

    func validate() throws {
        guard chunk >= 16, chunk <= 2048 else { throw ValidationError("--chunk must be between 16 and 2048") }
        guard tokens >= chunk else { throw ValidationError("--tokens must be at least --chunk (\(chunk))") }
    }

    func run() throws {
        guard let text = try? String(contentsOfFile: data, encoding: .utf8) else { throw CLIError("cannot read data file '\(data)' as UTF-8 text") }
        let model = try modelOptions.load()
        let ids = Array(model.tokenizer.encode(text, parseSpecial: false).prefix(tokens))
        guard ids.count >= chunk else { throw CLIError("'\(data)' has only \(ids.count) tokens") }
        let cal = Calibrator(model: model, chunkSize: chunk, threads: modelOptions.threads)
        let ranking: StaticRanking
        switch method {
        case .shortgpt:
            let bar = ProgressBar("shortgpt", total: ids.count / chunk)
            ranking = try cal.shortGPTRanking(tokens: ids) { done, _ in bar.update(done) }
        case .sleb:
            let routable = model.config.layers - 2
            let bar = ProgressBar("sleb", total: routable * (routable + 1) / 2 - 1)
            ranking = try cal.slebRanking(tokens: ids) { done, _, detail in bar.update(done, detail: detail) }
        }
        let notes = "buddy calibrate \(method.rawValue) --data \(URL(fileURLWithPath: data).lastPathComponent) --tokens \(ids.count) --chunk \(chunk)"
        try RouterFile.save(ranking, model: model, notes: notes, to: out)
        print("\(method.rawValue) ranking (most important first): \(ranking.ranking.map(String.init).joined(separator: " "))")
        print("written to \(out)")
    }
}

import ArgumentParser
import BuddyCore
import BuddyRouting
import Foundation

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
            RMS-normalised input that a skipped layer adds instead (closed-form ridge
            regression, rank and ridge chosen per layer on validation text; the options
            marked "stand-ins" apply). docs/STAND-INS.md says how the shipped file was made:
              buddy calibrate stand-ins --data ../shared/data/wikitext2_valid.txt --out routers/stand-ins.bin
            """)

    enum Method: String, ExpressibleByArgument, CaseIterable { case shortgpt, sleb, standIns = "stand-ins" }

    @Argument(help: "shortgpt, sleb or stand-ins.")
    var method: Method
    @Option(name: .long, help: "Calibration text file.")
    var data: String
    @Option(name: .long, help: "Where to write the ranking (JSON; written atomically).")
    var out: String
    @Option(name: .long, help: "Calibration tokens taken from the start of --data.")
    var tokens: Int = 2048
    @Option(name: .long, help: "Tokens per calibration chunk.")
    var chunk: Int = 256
    @Option(name: .customLong("with-stand-ins"), help: "(sleb) a stand-in file: removed layers apply their stand-ins while SLEB measures.")
    var withStandIns: String?
    @OptionGroup var standIns: StandInCalibrationOptions
    @OptionGroup var modelOptions: ModelOptions

    func validate() throws {
        guard chunk >= 16, chunk <= 2048 else { throw ValidationError("--chunk must be between 16 and 2048") }
        guard tokens >= chunk else { throw ValidationError("--tokens must be at least --chunk (\(chunk))") }
    }

    func run() throws {
        guard let text = try? String(contentsOfFile: data, encoding: .utf8) else { throw CLIError("cannot read data file '\(data)' as UTF-8 text") }
        let model = try modelOptions.load()
        if method == .standIns { return try standIns.run(model: model, data: data, out: out, threads: modelOptions.threads) }
        let ids = Array(model.tokenizer.encode(text, parseSpecial: false).prefix(tokens))
        guard ids.count >= chunk else { throw CLIError("'\(data)' has only \(ids.count) tokens") }
        let cal = Calibrator(model: model, chunkSize: chunk, threads: modelOptions.threads)
        if let withStandIns { cal.standIns = try StandInChoice.file(withStandIns).resolve(model: model) }
        let ranking: StaticRanking
        switch method {
        case .shortgpt:
            let bar = ProgressBar("shortgpt", total: ids.count / chunk)
            ranking = try cal.shortGPTRanking(tokens: ids) { done, _ in bar.update(done) }
        case .standIns:
            preconditionFailure("handled above")
        case .sleb:
            let routable = model.config.layers - 2
            let bar = ProgressBar("sleb", total: routable * (routable + 1) / 2 - 1)
            ranking = try cal.slebRanking(tokens: ids) { done, _, detail in bar.update(done, detail: detail) }
        }
        let notes = "buddy calibrate \(method.rawValue) --data \(URL(fileURLWithPath: data).lastPathComponent) --tokens \(ids.count) --chunk \(chunk)"
            + (withStandIns.map { " --with-stand-ins \(URL(fileURLWithPath: $0).lastPathComponent)" } ?? "")
        try RouterFile.save(ranking, model: model, notes: notes, to: out)
        print("\(method.rawValue) ranking (most important first): \(ranking.ranking.map(String.init).joined(separator: " "))")
        print("written to \(out)")
    }
}

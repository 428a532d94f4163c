import ArgumentParser
import BuddyCore
import Foundation

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a model's architecture, hyper-parameters, tokenizer and tensors.")
    @OptionGroup var modelOptions: ModelOptions
    @Flag(name: .long, help: "Also list every metadata key.") var metadata = false

    func run() throws {
        let model = try modelOptions.load()
        let c = model.config, f = model.file
        print("file:            \(model.path)")
        print("GGUF version:    \(f.version), \(f.tensors.count) tensors, \(f.metadata.count) metadata keys, alignment \(f.alignment)")
        if let name = f.metadata["general.name"]?.stringValue { print("name:            \(name)") }
        print("architecture:    \(c.architecture.rawValue)")
        print("layers:          \(c.layers)")
        print("embedding:       \(c.dim)")
        print("feed-forward:    \(c.ffnDim)")
        print("heads:           \(c.heads) (kv heads \(c.kvHeads), head size \(c.headDim))")
        print("context length:  \(c.contextLength)")
        print("rope:            base \(c.ropeBase), \(c.ropeDim) dims, \(c.ropeNeoX ? "NeoX" : "normal") pairs")
        print("rms norm eps:    \(c.rmsNormEps)")
        print("output head:     \(model.transformer.tiedEmbeddings ? "tied to token embedding" : "separate")")
        let tokModel = f.metadata["tokenizer.ggml.model"]?.stringValue ?? "?"
        let pre = f.metadata["tokenizer.ggml.pre"]?.stringValue ?? "default"
        print("tokenizer:       \(tokModel) (pre-tokenizer \(pre)), \(model.tokenizer.vocabularySize) tokens, "
            + "bos \(model.tokenizer.bosID.map(String.init) ?? "-"), eos \(model.tokenizer.eosID.map(String.init) ?? "-"), add bos \(model.tokenizer.addBOS)")
        if let sys = model.template.defaultSystemPrompt { print("system prompt:   \(sys)") }
        print("fingerprint:     \(model.fingerprint)")
        if metadata {
            print("\nmetadata:")
            for k in f.metadataKeys {
                let v = f.metadata[k]!
                var s: String
                if let a = v.arrayValue { s = "[\(a.count) items]" } else if let t = v.stringValue { s = t } else { s = "\(v.floatValue ?? 0)" }
                s = s.replacingOccurrences(of: "\n", with: "\\n")
                if s.count > 80 { s = String(s.prefix(77)) + "..." }
                print("  \(k.padding(toLength: 42, withPad: " ", startingAt: 0)) \(s)")
            }
        }
        print("\ntensor types:")
        for share in f.tensorTypeShares() {
            print("  " + share.type.description.padding(toLength: 8, withPad: " ", startingAt: 0)
                + String(format: "%4d tensors %9.2f MB %6.2f %% of the file", share.tensors, Double(share.bytes) / 1e6, 100 * share.fileShare))
        }
        print("\ntensors:")
        print("  " + "name".padding(toLength: 28, withPad: " ", startingAt: 0) + "type    shape")
        var bytes = 0
        for t in f.tensors {
            bytes += t.byteCount
            print("  " + t.name.padding(toLength: 28, withPad: " ", startingAt: 0)
                + t.type.description.padding(toLength: 8, withPad: " ", startingAt: 0) + t.dims.map(String.init).joined(separator: " x "))
        }
        print(String(format: "\n%d tensors, %.1f MB of weights", f.tensors.count, Double(bytes) / 1e6))
    }
}

import BuddyCore
import Foundation
import XCTest

/// A seeded mutation fuzzer for the GGUF reader, the model loader and the tokenizer loader,
/// started from a small valid file. Every mutated input must either load or fail with a
/// typed error; a crash, hang or unbounded allocation fails the whole test run.
final class FuzzTests: XCTestCase {
    static func seedFile() -> [UInt8] {
        var w = TinyModel.writer(arch: "llama", seed: 3)
        w.set("tokenizer.ggml.model", .string("gpt2"))
        w.set("tokenizer.ggml.pre", .string("smollm"))
        var tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ġa"]
        while tokens.count < TinyModel.vocab { tokens.append("t\(tokens.count)") }
        w.set("tokenizer.ggml.tokens", .strings(tokens))
        w.set("tokenizer.ggml.token_type", .ints([3, 3, 3] + [Int32](repeating: 1, count: tokens.count - 3)))
        w.set("tokenizer.ggml.merges", .strings(["a b", "Ġ a"]))
        w.set("tokenizer.ggml.bos_token_id", .u32(0))
        w.set("tokenizer.ggml.eos_token_id", .u32(2))
        return w.bytes()
    }

    /// Loads everything a model file feeds; returns whether it loaded.
    static func load(_ bytes: [UInt8]) -> Bool {
        do {
            let f = try GGUFFile(mapping: MappedFile(bytes: bytes))
            let tok = try BPETokenizer(gguf: f)
            _ = tok.encode("ab a<|im_end|> 12", parseSpecial: true)
            _ = try Transformer(file: f)
            return true
        } catch is GGUFError {
            return false
        } catch is TokenizerError {
            return false
        } catch {
            XCTFail("untyped error: \(error)")
            return false
        }
    }

    func testSeedLoads() {
        XCTAssertTrue(FuzzTests.load(FuzzTests.seedFile()))
    }

    func testMutatedFilesNeverCrash() {
        let seed = FuzzTests.seedFile()
        // The header, metadata and tensor table live in the first part of the file; mutate
        // there mostly, where the parser makes its decisions.
        let headerEnd = min(seed.count, 6000)
        var rng = SeededRNG(seed: 20261129)
        var loaded = 0, refused = 0
        let iterations = Int(ProcessInfo.processInfo.environment["BUDDY_FUZZ_ITERATIONS"] ?? "") ?? 3000
        for _ in 0..<iterations {
            var b = seed
            let edits = 1 + Int(rng.next() % 4)
            for _ in 0..<edits {
                if b.count < 16 { break }
                let headerEnd = min(b.count, headerEnd)
                switch rng.next() % 6 {
                case 0: b[Int(rng.next() % UInt64(headerEnd))] = UInt8(truncatingIfNeeded: rng.next())
                case 1: // flip a length or count to a huge value
                    let i = Int(rng.next() % UInt64(headerEnd - 8))
                    for k in 0..<8 { b[i + k] = 0xFF }
                case 2: b = Array(b.prefix(Int(rng.next() % UInt64(b.count))))
                case 3: b[Int(rng.next() % UInt64(b.count))] ^= UInt8(1 << (rng.next() % 8))
                case 4: // small integer into a 4-byte field (types, dims)
                    let i = Int(rng.next() % UInt64(headerEnd - 4))
                    b[i] = UInt8(rng.next() % 40); b[i + 1] = 0; b[i + 2] = 0; b[i + 3] = 0
                default: // duplicate a slice (repeated keys, shifted fields)
                    let i = Int(rng.next() % UInt64(headerEnd)), n = Int(rng.next() % 64)
                    b.insert(contentsOf: b[i..<min(b.count, i + n)], at: i)
                }
            }
            if FuzzTests.load(b) { loaded += 1 } else { refused += 1 }
        }
        print("fuzz: \(iterations) mutated files, \(loaded) loaded, \(refused) refused with a typed error")
        XCTAssertEqual(loaded + refused, iterations)
        XCTAssertGreaterThan(refused, iterations / 4)
    }
}

import BuddyCore
import BuddyTestSupport
import BuddyFuzzSupport
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

    /// The same tiny model with a SentencePiece vocabulary (`tokenizer.ggml.model = llama`):
    /// scores, byte tokens <0x00>..<0x3F> (higher bytes have none and are dropped), control and
    /// user-defined tokens.
    static func spmSeedFile() -> [UInt8] {
        var w = TinyModel.writer(arch: "llama", seed: 4)
        w.set("tokenizer.ggml.model", .string("llama"))
        var tokens = ["<unk>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>", "\n\n", "▁", "a", "b", "ab", "▁a", "▁ab"]
        var types: [Int32] = [2, 3, 3, 3, 3, 4, 1, 1, 1, 1, 1, 1]
        for b in 0..<64 { tokens.append(String(format: "<0x%02X>", b)); types.append(6) }
        while tokens.count < TinyModel.vocab { tokens.append("t\(tokens.count)"); types.append(1) }
        w.set("tokenizer.ggml.tokens", .strings(tokens))
        w.set("tokenizer.ggml.token_type", .ints(types))
        w.set("tokenizer.ggml.scores", .floats(tokens.indices.map { -Float($0) / 4 }))
        w.set("tokenizer.ggml.bos_token_id", .u32(1))
        w.set("tokenizer.ggml.eos_token_id", .u32(2))
        w.set("tokenizer.ggml.add_bos_token", .bool(true))
        w.set("tokenizer.ggml.add_space_prefix", .bool(true))
        return w.bytes()
    }

    func testSeedLoads() {
        XCTAssertNil(FuzzTests.refusal(FuzzTests.seedFile()))
        XCTAssertNil(FuzzTests.refusal(FuzzTests.spmSeedFile()))
    }

    /// The refusal's class: the error enum's case name ("truncated", "badMagic", …).
    static func errorClass(_ e: Error) -> String {
        let m = Mirror(reflecting: e)
        return m.children.first?.label ?? "\(e)"
    }

    /// Loads a file; nil when it loaded, else the typed error's class and description.
    static func refusal(_ bytes: [UInt8]) -> (kind: String, text: String)? {
        do {
            let f = try GGUFFile(mapping: MappedFile(bytes: bytes))
            let tok = try makeTokenizer(gguf: f)
            _ = tok.encode("ab a<|im_end|> 12<end_of_turn>\n\n\u{FF}", parseSpecial: true)
            _ = tok.decode(Array(0..<Int32(tok.vocabularySize)), includeSpecial: true)
            _ = try Transformer(file: f)
            return nil
        } catch let e as GGUFError {
            return (errorClass(e), "\(e)")
        } catch let e as TokenizerError {
            return ("tokenizer." + errorClass(e), "\(e)")
        } catch {
            XCTFail("untyped error: \(error)")
            return ("untyped", "\(error)")
        }
    }

    /// A corpus entry: the seed file with bytes prefix ..< prefix+removed replaced by insert.
    struct Patch: Codable {
        var target = "gguf"
        var prefix: Int
        var removed: Int
        var insert: String   // hex
        var expect: String   // refusal class, or "loads"

        init(from seed: [UInt8], to b: [UInt8], expect: String) {
            var p = 0
            while p < min(seed.count, b.count) && seed[p] == b[p] { p += 1 }
            var q = 0
            while q < min(seed.count, b.count) - p && seed[seed.count - 1 - q] == b[b.count - 1 - q] { q += 1 }
            prefix = p
            removed = seed.count - q - p
            // Large differences are not kept (the corpus holds small patches); skip the hex.
            let digits = Array("0123456789abcdef")
            insert = b.count - q - p > 4096 ? String(repeating: "?", count: 2 * (b.count - q - p))
                : String(b[p..<(b.count - q)].flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] })
            self.expect = expect
        }

        func apply(to seed: [UInt8]) -> [UInt8] {
            var bytes: [UInt8] = []
            var i = insert.startIndex
            while i < insert.endIndex {
                let j = insert.index(i, offsetBy: 2)
                bytes.append(UInt8(insert[i..<j], radix: 16)!)
                i = j
            }
            var b = seed
            b.replaceSubrange(prefix..<(prefix + removed), with: bytes)
            return b
        }
    }

    /// Runs for BUDDY_FUZZ_SECONDS (or BUDDY_FUZZ_ITERATIONS; 3,000 in the normal suite).
    /// With BUDDY_FUZZ_SAVE=FILE the smallest input of every refusal class is written there
    /// as a patch of the seed file (how Tests/Fixtures/fuzz/gguf-corpus.json was made).
    func testMutatedFilesNeverCrash() throws {
        try mutationFuzz(seed: FuzzTests.seedFile(), label: "gguf", iterations: 3000,
                         savePath: ProcessInfo.processInfo.environment["BUDDY_FUZZ_SAVE"])
    }

    /// The same with the SentencePiece seed: mutated vocabularies, scores and token types.
    func testMutatedSPMFilesNeverCrash() throws {
        try mutationFuzz(seed: FuzzTests.spmSeedFile(), label: "gguf spm", iterations: 1500, savePath: nil)
    }

    private func mutationFuzz(seed: [UInt8], label: String, iterations: Int, savePath: String?) throws {
        let budget = FuzzBudget(defaultIterations: iterations)
        var mutator = Mutator(seed: budget.seed)
        var loaded = 0, refused = 0
        var classes: [String: Int] = [:]
        var smallest: [String: Patch] = [:]
        // The header, metadata and tensor table live in the first part of the file; mutate there mostly.
        let (n, secs) = budget.run { _ in
            let b = mutator.mutate(seed, focus: 6000)
            guard let r = FuzzTests.refusal(b) else { loaded += 1; return }
            refused += 1
            classes[r.kind, default: 0] += 1
            if savePath != nil && classes[r.kind]! <= 2000 {
                let p = Patch(from: seed, to: b, expect: r.kind)
                if p.insert.count <= 4096, smallest[r.kind].map({ p.insert.count + p.removed < $0.insert.count + $0.removed }) ?? true { smallest[r.kind] = p }
            }
        }
        print(String(format: "fuzz %@: %d executions in %.1f s (%.0f/s), %d loaded, %d refused with a typed error; classes: %@",
                     label, n, secs, Double(n) / max(secs, 1e-9), loaded, refused, classes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")))
        if let savePath {
            let enc = JSONEncoder(); enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            try enc.encode(smallest.keys.sorted().map { smallest[$0]! }).write(to: URL(fileURLWithPath: savePath))
        }
        XCTAssertEqual(loaded + refused, n)
        XCTAssertGreaterThan(refused, n / 4)
    }

    /// Every input of the regression corpus still gets the refusal it got when it was found.
    func testRegressionCorpus() throws {
        let url = TestSupport.fixtures.appendingPathComponent("fuzz/gguf-corpus.json")
        let corpus = try JSONDecoder().decode([Patch].self, from: Data(contentsOf: url))
        XCTAssertGreaterThan(corpus.count, 5)
        let seed = FuzzTests.seedFile()
        for (i, p) in corpus.enumerated() {
            let got = FuzzTests.refusal(p.apply(to: seed))
            if p.expect == "loads" { XCTAssertNil(got, "corpus entry \(i)") } else {
                XCTAssertEqual(got?.kind, p.expect, "corpus entry \(i): \(got?.text ?? "loaded")")
            }
        }
    }

    /// Byte-level BPE must reproduce any text exactly: random Unicode (all planes, controls,
    /// combining marks, invalid surrogates replaced) and text that looks like special tokens.
    /// The exception is a byte the vocabulary has no token for: it is dropped (as llama.cpp
    /// does), so the expected text is the input's UTF-8 with those bytes removed.
    func testTokenizerRoundTripsArbitraryText() throws {
        let tok = try TestSupport.tokenizer()
        roundTripFuzz(tok, label: "tokenizer", seedOffset: 1,
                      pieces: ["<|im_start|>", "<|im_end|>", "<|endoftext|>", " ", "\n", "\t", "  ", "'s", "123", "a", "é",
                               "\u{301}", "😀", "\u{200D}", "\r\n", "\u{0}"]) { s in
            Array(s.utf8).filter { tok.hasByteToken($0) }
        }
    }

    /// Gemma's SentencePiece tokenizer on the same kind of text, and on random bytes (decoded
    /// as UTF-8 with U+FFFD for invalid sequences): every character is a piece or falls back
    /// to byte tokens, so the text comes back except that "▁" (U+2581, SentencePiece's space)
    /// decodes as a space, as in llama.cpp.
    func testSPMTokenizerRoundTripsArbitraryText() throws {
        let tok = try GemmaSupport.tokenizer()
        let pieces = ["<start_of_turn>", "<end_of_turn>", "<eos>", "</s>", "<start_of_image>", "<unused7>", " ", "  ", "\n",
                      "\n\n", "\t", "\t\t", "▁", "'s", "123", "a", "é", "\u{301}", "😀", "\u{200D}", "\r\n", "\u{0}", "𠀀"]
        // Scalar by scalar: "▁" followed by a combining mark is another Character, but still "▁".
        let spaced = { (s: String) in Array(String(String.UnicodeScalarView(s.unicodeScalars.map { $0 == "▁" ? " " : $0 })).utf8) }
        roundTripFuzz(tok, label: "spm tokenizer", seedOffset: 2, pieces: pieces, expected: spaced)
        roundTripFuzz(tok, label: "spm tokenizer (random bytes)", seedOffset: 3, pieces: pieces, randomBytes: true, expected: spaced)
    }

    /// Encodes random texts (with and without special parsing) and checks that decoding the
    /// plain encoding gives `expected(text)`; reports at most three failures.
    private func roundTripFuzz(_ tok: any Tokenizer, label: String, seedOffset: UInt64, pieces: [String],
                               randomBytes: Bool = false, expected: (String) -> [UInt8]) {
        let budget = FuzzBudget(defaultIterations: 400)
        var rng = SeededRNG(seed: budget.seed &+ seedOffset)
        var failures = 0
        let (n, secs) = budget.run { _ in
            var s = ""
            for _ in 0..<(1 + Int(rng.next() % 40)) {
                if rng.next() % 3 == 0 {
                    s += pieces[Int(rng.next() % UInt64(pieces.count))]
                } else if randomBytes {
                    let bytes = (0..<(1 + rng.next() % 4)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                    s += String(decoding: bytes, as: UTF8.self)
                } else {
                    let v = UInt32(rng.next() % 0x110000)
                    s.unicodeScalars.append(Unicode.Scalar(v) ?? "\u{FFFD}")
                }
            }
            let ids = tok.encode(s, parseSpecial: false)
            let back = tok.decode(ids)
            let want = expected(s)
            if Array(back.utf8) != want && back != String(decoding: want, as: UTF8.self) && failures < 3 {
                failures += 1
                XCTFail("\(label): round trip changed \(s.unicodeScalars.map { String($0.value, radix: 16) }) into \(back.unicodeScalars.map { String($0.value, radix: 16) })") }
            let special = tok.encode(s, parseSpecial: true)
            XCTAssertTrue(special.allSatisfy { $0 >= 0 && Int($0) < tok.vocabularySize })
        }
        print(String(format: "fuzz %@: %d random texts in %.1f s, %d failed to round-trip", label, n, secs, failures))
    }
}

import BuddyCore
import BuddyTestSupport
import Foundation
import XCTest

final class TokenizerTests: XCTestCase {

    // MARK: - Ids checked against llama.cpp

    /// Expected ids were produced by llama.cpp (llama-cpp-python 0.3.36,
    /// `Llama(model_path=..., vocab_only=True).tokenize(text.encode(), add_bos=False, special=S)`)
    /// on SmolLM2-135M-Instruct.Q4_1.gguf.
    func testIDsMatchLlamaCpp() throws {
        let tok = try TestSupport.tokenizer()
        let cases: [(String, [Int32])] = [
            ("Hello, world!", [19556, 28, 905, 17]),
            // digits are split one by one; the space before them stays alone
            ("Hello world! 123", [19556, 905, 17, 216, 33, 34, 35]),
            // whitespace runs: all but the last space form a piece, the last one prefixes the word
            ("  multiple   spaces", [216, 2701, 256, 5600]),
            ("x\n\n  y", [104, 8866, 329]),
            // contractions are case-sensitive ('M is not one)
            ("I'm here, aren't you? I'M", [57, 5248, 1535, 28, 4775, 982, 346, 47, 339, 23, 61]),
            ("'s 'S", [506, 637, 67]),
            ("3.14", [35, 30, 33, 36]),
            ("Café déjà vu.", [51, 1939, 2756, 32564, 90, 16739, 386, 101, 30]),
            ("日本語", [23274, 115, 40993, 179, 120, 248]),
            ("👍🏽", [10813, 235, 231, 10813, 233, 138]),
            ("def f(x):\n    return x**2\n", [1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 198]),
            // U+0004's byte-level character is not in this vocabulary: llama.cpp drops it
            ("a\u{04}b", [81, 82]),
        ]
        for (text, want) in cases {
            XCTAssertEqual(tok.encode(text, parseSpecial: false), want, text.debugDescription)
            XCTAssertEqual(tok.encode(text, parseSpecial: true), want, text.debugDescription)
        }
        XCTAssertEqual(tok.encode("", parseSpecial: true), [])
    }

    func testSpecialTokenParsing() throws {
        let tok = try TestSupport.tokenizer()
        let text = "<|im_start|>user\nHi there<|im_end|>\n"
        // From llama.cpp (special=true / special=false).
        XCTAssertEqual(tok.encode(text, parseSpecial: true), [1, 4093, 198, 26843, 665, 2, 198])
        XCTAssertEqual(tok.encode(text, parseSpecial: false),
                       [44, 108, 306, 79, 3738, 108, 46, 4093, 198, 26843, 665, 44, 108, 306, 79, 486, 108, 46, 198])

        XCTAssertEqual(tok.tokenID("<|endoftext|>"), 0)
        XCTAssertEqual(tok.tokenID("<|im_start|>"), 1)
        XCTAssertEqual(tok.tokenID("<|im_end|>"), 2)
        XCTAssertNil(tok.tokenID("<|not a token|>"))
        XCTAssertEqual(tok.vocabularySize, 49152)
        XCTAssertEqual(tok.bosID, 1)
        XCTAssertEqual(tok.eosID, 2)
        XCTAssertFalse(tok.addBOS)
        for id in Int32(0)...16 { XCTAssertTrue(tok.isControl(id), "\(id)") }
        XCTAssertFalse(tok.isControl(17))
        XCTAssertFalse(tok.isControl(-1))
        XCTAssertFalse(tok.isControl(Int32(tok.vocabularySize)))

        // Adjacent, repeated and partial special tokens.
        XCTAssertEqual(tok.encode("<|im_start|><|im_end|><|im_end|>", parseSpecial: true), [1, 2, 2])
        XCTAssertEqual(tok.encode("a<|endoftext|>b", parseSpecial: true),
                       tok.encode("a", parseSpecial: false) + [0] + tok.encode("b", parseSpecial: false))
        XCTAssertFalse(tok.encode("<|im_end", parseSpecial: true).contains(2))
        XCTAssertEqual(tok.encode("<repo_name>x<reponame>", parseSpecial: true).first, 3)
        XCTAssertEqual(tok.encode("<repo_name>x<reponame>", parseSpecial: true).last, 4)

        // Decoding: control tokens are silent unless asked for.
        let ids = tok.encode(text, parseSpecial: true)
        XCTAssertEqual(tok.decode(ids), "user\nHi there\n")
        XCTAssertEqual(tok.decode(ids, includeSpecial: true), text)
        XCTAssertEqual(tok.decodeBytes(2), [])
        XCTAssertEqual(tok.decodeBytes(2, includeSpecial: true), Array("<|im_end|>".utf8))
        XCTAssertEqual(tok.decodeBytes(198), [0x0A])
        XCTAssertEqual(tok.decodeBytes(216), [0x20])
        XCTAssertEqual(tok.decodeBytes(-5), [])
        XCTAssertEqual(tok.decodeBytes(Int32(tok.vocabularySize)), [])
    }

    // MARK: - Round trips

    func testRoundTrips() throws {
        let tok = try TestSupport.tokenizer()
        var strings = [
            "Hello, world!", "The quick brown fox jumps over the lazy dog.",
            "日本語のテキスト", "中文测试，你好！", "한국어 텍스트", "Ελληνικά", "Русский текст", "עברית", "العربية", "हिन्दी",
            "👍🏽👍🏿", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🧑🏽‍💻 coding", "👋 hi 🌍!", "❤️",
            "Café déjà vu", "e\u{301}", "n\u{303}o", "Ångström", "ﬁ ligature", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
            " ", "  ", "   x", "x   ", "\t\t", "\n", "\n\n\n", "\r\n", "a \n b", " \t \n ", "a\u{00A0}b", "a\u{3000}b", "x\u{85}y",
            "def f(x):\n    return x ** 2  # comment\n", "if (a && b) { c++; } else { d--; }",
            "<div class=\"x\">hi</div>", "```swift\nlet x = [1, 2, 3]\n```", "SELECT * FROM t WHERE id = 42;",
            "1234567890", "3.14159", "1,000,000.00", "²³ ½ Ⅻ ٣", "x=1+2*3/4-5", "2024-01-31T12:00:00Z",
            "I'm", "we'll they've you're he'd it's", "'''", "rock'n'roll", "O'NEIL'S",
            "http://example.com/path?q=1&r=2#frag", "@user #tag $100 50% ~tilde `tick` ^caret |pipe|",
            "<|im_start|> as text", "\u{FEFF}bom", "\u{AD}soft", "\u{10000}\u{E0041}\u{10FFFD}",
            String(repeating: "a", count: 500), String(repeating: "ab ", count: 200), String(repeating: " ", count: 64),
            String(repeating: "!", count: 100), String(repeating: "9", count: 50), String(repeating: "😀", count: 30),
        ]
        // Deterministic random mixtures.
        let pool: [String] = ["a", "Z", "q", " ", "  ", "\t", "\n", "0", "7", "!", "?", ".", ",", "'", "'s", "\"", "-", "_",
                              "é", "ß", "ø", "日", "本", "語", "한", "α", "Ж", "👍", "🏽", "\u{200D}", "👩", "🌍", "\u{301}",
                              "\u{A0}", "\u{3000}", "²", "½", "the", " the", "ing", "(", ")", "{", "}", "<", ">", "=", "\\"]
        var rng = SplitMix64(seed: 42)
        for _ in 0..<300 {
            let n = Int(rng.next() % 40) + 1
            strings.append((0..<n).map { _ in pool[Int(rng.next() % UInt64(pool.count))] }.joined())
        }
        for s in strings {
            let ids = tok.encode(s, parseSpecial: false)
            XCTAssertEqual(tok.decode(ids), s, "round trip of \(s.debugDescription) via \(ids)")
            XCTAssertEqual(tok.decode(tok.encode(s, parseSpecial: true), includeSpecial: true), s)
        }
    }

    func testLongTextRoundTrips() throws {
        let tok = try TestSupport.tokenizer()
        let paragraph = "The quick brown fox jumps over the lazy dog; it's 12:45 and 3.14 > 2.71! "
            + "日本語 👍🏽 café — \"quoted\" text, code: for (i = 0; i < n; i++) { sum += a[i]; }\n"
        let text = String(repeating: paragraph, count: 40)  // ~6 KB
        let ids = tok.encode(text, parseSpecial: true)
        XCTAssertEqual(tok.decode(ids), text)
        // Encoding is per pre-token, so a repeated paragraph gives repeated ids.
        XCTAssertEqual(ids.count % 40, 0)
    }

    func testRebuildingFromModelVocabularyAgrees() throws {
        let tok = try TestSupport.tokenizer()
        let gguf = try GGUFFile(path: TestSupport.modelPath)
        let tokens = try gguf.stringArray("tokenizer.ggml.tokens")
        let merges = try gguf.stringArray("tokenizer.ggml.merges")
        let types = try gguf.intArray("tokenizer.ggml.token_type").map { TokenType(rawValue: Int32($0)) ?? .normal }
        let rebuilt = try BPETokenizer(tokens: tokens, tokenTypes: types, merges: merges, model: "gpt2", pre: "smollm",
                                       bosID: 1, eosID: 2, addBOS: false)
        let text = "Rebuilt tokenizers agree: 42 👍🏽 <|im_end|>"
        XCTAssertEqual(rebuilt.encode(text, parseSpecial: true), tok.encode(text, parseSpecial: true))
    }

    // MARK: - Streaming detokenizer

    func testStreamingNeverEmitsPartialUTF8() throws {
        let tok = try TestSupport.tokenizer()
        let text = "Hi 👨‍👩‍👧‍👦 and 👍🏽! 日本語 café"
        let ids = tok.encode(text, parseSpecial: false)
        var det = StreamingDetokenizer(tokenizer: tok)
        var chunks: [String] = []
        var emptyAppends = 0
        for id in ids {
            let chunk = det.append(id)
            if chunk.isEmpty { emptyAppends += 1 }
            chunks.append(chunk)
        }
        chunks.append(det.flush())
        // The emoji span several byte-level tokens, so some tokens end mid-character.
        XCTAssertGreaterThan(emptyAppends, 0)
        for chunk in chunks {
            XCTAssertFalse(chunk.unicodeScalars.contains("\u{FFFD}"), "chunk \(chunk.debugDescription) has a broken sequence")
            XCTAssertEqual(String(decoding: Array(chunk.utf8), as: UTF8.self), chunk)
        }
        XCTAssertEqual(chunks.joined(), text)
        XCTAssertEqual(det.flush(), "")
    }

    func testStreamingMatchesDecodeForArbitraryTokens() throws {
        let tok = try TestSupport.tokenizer()
        var rng = SplitMix64(seed: 7)
        for round in 0..<200 {
            let includeSpecial = round % 2 == 0
            let ids = (0..<Int(rng.next() % 30)).map { _ in Int32(rng.next() % UInt64(tok.vocabularySize)) }
            var det = StreamingDetokenizer(tokenizer: tok, includeSpecial: includeSpecial)
            var out = ""
            for id in ids { out += det.append(id) }
            out += det.flush()
            XCTAssertEqual(out, tok.decode(ids, includeSpecial: includeSpecial), "ids \(ids)")
        }
    }

    func testStreamingFlushReplacesIncompleteSequence() throws {
        let tok = try TestSupport.tokenizer()
        // The first token of "👍" is a prefix of its 4-byte sequence.
        let ids = tok.encode("👍", parseSpecial: false)
        XCTAssertGreaterThan(ids.count, 1)
        var det = StreamingDetokenizer(tokenizer: tok)
        XCTAssertEqual(det.append(ids[0]), "")
        XCTAssertEqual(det.flush(), "\u{FFFD}")
        // Special tokens stream as text only when asked to.
        var plain = StreamingDetokenizer(tokenizer: tok)
        XCTAssertEqual(plain.append(2), "")
        var special = StreamingDetokenizer(tokenizer: tok, includeSpecial: true)
        XCTAssertEqual(special.append(2), "<|im_end|>")
    }

    // MARK: - Synthetic vocabularies

    /// GPT-2's bytes_to_unicode, written out for building test vocabularies.
    private static func byteLevelChar(_ b: Int) -> String {
        var order: [Int] = Array(0x21...0x7E) + Array(0xA1...0xAC) + Array(0xAE...0xFF)
        var chars = order
        var n = 0
        for x in 0..<256 where !order.contains(x) {
            order.append(x)
            chars.append(256 + n)
            n += 1
        }
        return String(Character(Unicode.Scalar(UInt32(chars[order.firstIndex(of: b)!]))!))
    }

    private func syntheticTokenizer(pre: String = "gpt2") throws -> BPETokenizer {
        var tokens = (0..<256).map(Self.byteLevelChar)
        var types = [TokenType](repeating: .normal, count: 256)
        // merges: "h e", "he l", "hel l", "hell o"
        let merges = ["h e", "he l", "hel l", "hell o"]
        tokens += ["he", "hel", "hell", "hello"]
        types += [.normal, .normal, .normal, .normal]
        tokens += ["<|ctl|>", "<|ctl|>!", "<u>", "[[unused]]"]
        types += [.control, .control, .userDefined, .unused]
        return try BPETokenizer(tokens: tokens, tokenTypes: types, merges: merges, model: "gpt2", pre: pre,
                                bosID: 260, eosID: 261, addBOS: true)
    }

    func testSyntheticVocabularyMergesAndSpecials() throws {
        let tok = try syntheticTokenizer()
        let ctl = tok.tokenID("<|ctl|>")!, ctlBang = tok.tokenID("<|ctl|>!")!, user = tok.tokenID("<u>")!
        let hello = tok.tokenID("hello")!
        XCTAssertEqual(tok.encode("hello", parseSpecial: false), [hello])
        XCTAssertEqual(tok.encode("help", parseSpecial: false), [tok.tokenID("hel")!, tok.tokenID("p")!])
        // Longest special token wins.
        XCTAssertEqual(tok.encode("<|ctl|>!hello<|ctl|>", parseSpecial: true), [ctlBang, hello, ctl])
        // Control tokens are plain text without parseSpecial; user-defined tokens are always matched.
        XCTAssertEqual(tok.encode("<u>hello<u>", parseSpecial: false), [user, hello, user])
        XCTAssertFalse(tok.encode("<|ctl|><u>", parseSpecial: false).contains(ctl))
        XCTAssertEqual(tok.encode("<|ctl|><u>", parseSpecial: false).last, user)
        // Decoding: user-defined text always, control only with includeSpecial, unused never.
        XCTAssertEqual(tok.decode([user, hello, ctl]), "<u>hello")
        XCTAssertEqual(tok.decode([user, hello, ctl], includeSpecial: true), "<u>hello<|ctl|>")
        XCTAssertEqual(tok.decodeBytes(tok.tokenID("[[unused]]")!, includeSpecial: true), [])
        XCTAssertTrue(tok.addBOS)
        XCTAssertEqual(tok.vocabularySize, 264)
        // Every byte round-trips through the byte-level alphabet.
        let allBytes = (0..<256).map { UInt8($0) }
        XCTAssertEqual((0..<256).flatMap { tok.decodeBytes(Int32($0)) }, allBytes)
    }

    func testOtherPreTokenizersAreAccepted() throws {
        for pre in ["gpt2", "gpt-2", "default", "smollm", "llama3", "llama-bpe"] {
            let tok = try syntheticTokenizer(pre: pre)
            XCTAssertEqual(tok.decode(tok.encode("hello world 12345 it's", parseSpecial: false)), "hello world 12345 it's", pre)
        }
    }

    func testErrors() throws {
        XCTAssertThrowsError(try syntheticTokenizer(pre: "no-such-pre")) { error in
            XCTAssertTrue(error is TokenizerError)
            XCTAssertTrue("\(error)".contains("no-such-pre"), "\(error)")
        }
        let tokens = (0..<256).map(Self.byteLevelChar)
        let types = [TokenType](repeating: .normal, count: 256)
        XCTAssertThrowsError(try BPETokenizer(tokens: tokens, tokenTypes: types, merges: [], model: "llama", pre: "gpt2",
                                              bosID: nil, eosID: nil, addBOS: false)) { error in
            XCTAssertTrue("\(error)".contains("llama"), "\(error)")
        }
        XCTAssertThrowsError(try BPETokenizer(tokens: tokens, tokenTypes: types, merges: ["nospace"], model: "gpt2",
                                              pre: "gpt2", bosID: nil, eosID: nil, addBOS: false)) { error in
            XCTAssertTrue(error is TokenizerError)
        }
        XCTAssertThrowsError(try BPETokenizer(tokens: tokens, tokenTypes: [.normal], merges: [], model: "gpt2",
                                              pre: "gpt2", bosID: nil, eosID: nil, addBOS: false))
    }
}

/// Small deterministic generator for test data.
private struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

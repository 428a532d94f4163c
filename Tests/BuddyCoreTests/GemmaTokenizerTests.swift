import BuddyCore
import BuddyTestSupport
import Foundation
import XCTest

final class GemmaTokenizerTests: XCTestCase {

    /// Every case of Tests/Fixtures/gemma3-tokenizer.json (scripts/make_gemma_tokenizer_fixtures.py):
    /// llama.cpp's ids with special parsing off and on, the BOS rule, and llama.cpp's
    /// detokenization of those ids.
    func testFixtureMatchesLlamaCpp() throws {
        let tok = try GemmaSupport.tokenizer()
        let fixture = try TestSupport.fixture("gemma3-tokenizer.json")
        let sha = fixture["model_sha256"] as? String
        XCTAssertEqual(sha, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")
        XCTAssertEqual(tok.vocabularySize, fixture["vocabulary_size"] as? Int)
        XCTAssertEqual(tok.bosID.map(Int.init), fixture["bos_id"] as? Int)
        XCTAssertEqual(tok.eosID.map(Int.init), fixture["eos_id"] as? Int)
        XCTAssertEqual(tok.addBOS, fixture["add_bos"] as? Bool)

        let cases = try XCTUnwrap(fixture["cases"] as? [[String: Any]])
        XCTAssertGreaterThan(cases.count, 500)
        XCTAssertEqual(cases.filter { $0["ids_with_bos"] != nil }.count, 99)
        var failed = 0
        for c in cases {
            let text = try XCTUnwrap(c["text"] as? String)
            let special = try XCTUnwrap(c["special"] as? Bool)
            let want = try XCTUnwrap(c["ids"] as? [Int]).map(Int32.init)
            let wantBOS = (c["ids_with_bos"] as? [Int])?.map(Int32.init)   // listed strings only
            let wantText = try XCTUnwrap(c["detokenized"] as? String)
            let label = "\(text.debugDescription) special=\(special)"

            let ids = tok.encode(text, parseSpecial: special)
            let withBOS = (tok.addBOS ? tok.bosID.map { [$0] } ?? [] : []) + ids
            let back = tok.decode(want, includeSpecial: special)
            if ids != want || (wantBOS != nil && withBOS != wantBOS) || back != wantText { failed += 1 }
            XCTAssertEqual(ids, want, label)
            if let wantBOS { XCTAssertEqual(withBOS, wantBOS, label) }
            XCTAssertEqual(back, wantText, label)
        }
        print("gemma3 tokenizer fixture: \(cases.count - failed) of \(cases.count) cases match llama.cpp")
    }

    func testVocabularyAndSpecialTokens() throws {
        let tok = try GemmaSupport.tokenizer()
        XCTAssertTrue(tok is SPMTokenizer)
        XCTAssertEqual(tok.vocabularySize, 262_144)
        XCTAssertEqual(tok.tokenID("<start_of_turn>"), 105)
        XCTAssertEqual(tok.tokenID("<end_of_turn>"), 106)
        XCTAssertNotNil(tok.tokenID("<0x0A>"))
        XCTAssertNil(tok.tokenID("<not a piece>"))
        XCTAssertTrue(tok.isControl(105))
        XCTAssertEqual(tok.tokenType(107), .userDefined)          // "\n"
        XCTAssertEqual(tok.tokenType(212), .control)              // "</s>": user-defined in the file, control by llama.cpp's rule
        XCTAssertEqual(tok.tokenText(105), "<start_of_turn>")
        XCTAssertNil(tok.tokenText(-1))
        for b in 0...255 { XCTAssertTrue(tok.hasByteToken(UInt8(b))) }

        // Canonically equivalent texts are different pieces: lookups compare bytes.
        XCTAssertNotEqual(tok.encode("\u{E9}", parseSpecial: false), tok.encode("e\u{301}", parseSpecial: false))

        let chat = "<start_of_turn>user\nHi<end_of_turn>\n"
        let ids = tok.encode(chat, parseSpecial: true)
        XCTAssertEqual(ids.first, 105)
        XCTAssertTrue(ids.contains(106))
        XCTAssertFalse(tok.encode(chat, parseSpecial: false).contains(105))
        XCTAssertEqual(tok.decode(ids), "user\nHi\n")
        XCTAssertEqual(tok.decode(ids, includeSpecial: true), chat)
        XCTAssertEqual(tok.decodeBytes(105), [])
        XCTAssertEqual(tok.decodeBytes(105, includeSpecial: true), Array("<start_of_turn>".utf8))
        XCTAssertEqual(tok.decodeBytes(Int32(tok.vocabularySize)), [])

        // llama.cpp's end-of-generation set for this vocabulary: <eos>, <end_of_turn>, </s>.
        XCTAssertEqual(tok.endOfGenerationIDs, [1, 106, 212])
        XCTAssertEqual(try TestSupport.tokenizer().endOfGenerationIDs, [0, 2])   // SmolLM2: as before
    }

    /// Streaming the ids one at a time gives the same text as decoding them at once, also
    /// when characters are split over byte-fallback tokens.
    func testStreamingDetokenizerAgreesWithDecode() throws {
        let tok = try GemmaSupport.tokenizer()
        for text in ["Hello, world! 👋🏽 café", "rare 𠀀 CJK \u{20000}\u{2A6D6}", "<start_of_turn>model\nOK<end_of_turn>", "  a\n\n\tb  "] {
            let ids = tok.encode(text, parseSpecial: true)
            for special in [false, true] {
                var d = StreamingDetokenizer(tokenizer: tok, includeSpecial: special)
                var streamed = ""
                for id in ids { streamed += d.append(id) }
                streamed += d.flush()
                XCTAssertEqual(streamed, tok.decode(ids, includeSpecial: special), text.debugDescription)
            }
        }
    }

    /// Building the 262,144-piece tokenizer from an opened file takes a fraction of a second.
    func testLoadTime() throws {
        let t0 = Date()
        let file = try GemmaSupport.file()
        let t1 = Date()
        let tok = try makeTokenizer(gguf: file)
        let t2 = Date()
        let open = t1.timeIntervalSince(t0), build = t2.timeIntervalSince(t1)
        print(String(format: "gemma3 tokenizer: GGUF open %.3f s, tokenizer build %.3f s (%d pieces)", open, build, tok.vocabularySize))
        XCTAssertLessThan(build, 0.5)

        // Encoding speed: a 6 KB paragraph.
        let text = String(repeating: "The quick brown fox jumps over the lazy dog; 12:45, café 日本語 👍🏽.\n", count: 90)
        let t3 = Date()
        let ids = tok.encode(text, parseSpecial: true)
        let secs = Date().timeIntervalSince(t3)
        print(String(format: "gemma3 tokenizer: %d bytes -> %d tokens in %.4f s", text.utf8.count, ids.count, secs))
        XCTAssertEqual(tok.decode(ids), text)
        XCTAssertLessThan(secs, 0.5)
    }

    /// A small synthetic SentencePiece vocabulary: the highest-scoring pair merges first, ties go
    /// to the leftmost pair, a space prefix is added after special tokens, and characters that
    /// are not pieces fall back to byte tokens (or are dropped when the byte has none).
    func testSyntheticVocabulary() throws {
        var tokens = ["<unk>", "<s>", "</s>", "<ctl>", "▁", "a", "b", "c", "ab", "bc", "abc", "▁a", "é"]
        var types: [TokenType] = [.unknown, .control, .control, .control] + Array(repeating: .normal, count: 9)
        var scores: [Float] = [0, 0, 0, 0, -1, -2, -2, -2, -5, -3, -4, -1, -2]
        for b in [0xC3, 0xA8, 0x41] { tokens.append(String(format: "<0x%02X>", b)); types.append(.byte); scores.append(0) }
        let v = GGUFVocabulary(model: "llama", tokens: tokens, tokenTypes: types, scores: scores, bosID: 1, eosID: 2,
                               addBOS: true, addSpacePrefix: true)
        let tok = try SPMTokenizer(v)
        // "▁abc": ▁a (-1) beats bc (-3) and ab (-5); then nothing merges with "▁a" + "bc".
        XCTAssertEqual(tok.encode("abc", parseSpecial: false), [11, 9])
        // Without a space prefix after a special token: a special token is followed by " " + text.
        XCTAssertEqual(tok.encode("<ctl>abc", parseSpecial: true), [3, 11, 9])
        XCTAssertEqual(tok.encode("<ctl>abc", parseSpecial: false).first, 4)   // "▁" then "<" has no piece or byte token
        // "è" is not a piece: its two bytes have byte tokens; "A" falls back to <0x41>.
        XCTAssertEqual(tok.encode("è", parseSpecial: false), [4, 13, 14])
        XCTAssertEqual(tok.decode(tok.encode("abc èA", parseSpecial: false)), "abc èA")
        XCTAssertTrue(tok.removesLeadingSpace)
        XCTAssertEqual(tok.score(8), -5)
        XCTAssertThrowsError(try SPMTokenizer(GGUFVocabulary(model: "gpt2", tokens: tokens)))
        XCTAssertThrowsError(try SPMTokenizer(GGUFVocabulary(model: "llama", tokens: tokens, scores: [1])))
        XCTAssertThrowsError(try SPMTokenizer(GGUFVocabulary(model: "llama", tokens: [])))
    }
}

import BuddyCore
import BuddyTestSupport
import XCTest

final class GGUFReaderTests: XCTestCase {
    func sample() -> GGUFWriter {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("u8", .u8(200)); w.set("i8", .i8(-5)); w.set("u16", .u16(60000)); w.set("i16", .i16(-30000))
        w.set("u32", .u32(4_000_000_000)); w.set("i32", .i32(-7)); w.set("f32", .f32(1.5)); w.set("b", .bool(true))
        w.set("u64", .u64(1 << 40)); w.set("i64", .i64(-(1 << 40))); w.set("f64", .f64(2.25))
        w.set("names", .strings(["a", "bé", "日本"])); w.set("nums", .ints([1, -2, 3]))
        w.addF32("t.weight", dims: [4, 2], [1, 2, 3, 4, 5, 6, 7, 8])
        w.addF32("v", dims: [3], [9, 10, 11])
        return w
    }

    func testReadsEveryValueTypeAndTensorsInBothVersions() throws {
        for version in [UInt32(2), 3] {
            var w = sample()
            w.version = version
            let f = try w.parse()
            XCTAssertEqual(f.version, version)
            XCTAssertEqual(try f.string("general.architecture"), "llama")
            XCTAssertEqual(try f.int("u8"), 200)
            XCTAssertEqual(try f.int("i8"), -5)
            XCTAssertEqual(try f.int("u16"), 60000)
            XCTAssertEqual(try f.int("i16"), -30000)
            XCTAssertEqual(try f.int("u32"), 4_000_000_000)
            XCTAssertEqual(try f.int("i32"), -7)
            XCTAssertEqual(try f.float("f32"), 1.5)
            XCTAssertEqual(f.metadata["b"]?.boolValue, true)
            XCTAssertEqual(try f.int("u64"), 1 << 40)
            XCTAssertEqual(try f.int("i64"), -(1 << 40))
            XCTAssertEqual(try f.float("f64"), 2.25)
            XCTAssertEqual(try f.stringArray("names"), ["a", "bé", "日本"])
            XCTAssertEqual(try f.intArray("nums"), [1, -2, 3])
            let t = try f.tensor("t.weight")
            XCTAssertEqual(t.dims, [4, 2])
            XCTAssertEqual(t.type, .f32)
            XCTAssertEqual(t.offset % 32, 0, "tensor data is aligned")
            XCTAssertEqual(f.data(t).loadUnaligned(fromByteOffset: 4 * 5, as: Float.self), 6)
            let v = try f.tensor("v")
            XCTAssertEqual(f.data(v).loadUnaligned(fromByteOffset: 8, as: Float.self), 11)
        }
    }

    func testTypedAccessNamesTheKey() throws {
        let f = try sample().parse()
        XCTAssertThrowsError(try f.int("missing.key")) { XCTAssertEqual($0 as? GGUFError, .missingKey("missing.key")) }
        XCTAssertThrowsError(try f.int("names")) {
            XCTAssertEqual($0 as? GGUFError, .wrongKeyType(key: "names", expected: "integer", found: "array"))
        }
        XCTAssertThrowsError(try f.tensor("nope")) { XCTAssertEqual($0 as? GGUFError, .missingTensor("nope")) }
    }

    func expectError(_ bytes: [UInt8], _ check: (GGUFError) -> Bool, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try GGUFFile(mapping: MappedFile(bytes: bytes)), file: file, line: line) { error in
            guard let e = error as? GGUFError else { return XCTFail("not a GGUFError: \(error)", file: file, line: line) }
            XCTAssertTrue(check(e), "unexpected error: \(e)", file: file, line: line)
            XCTAssertFalse(e.description.isEmpty)
        }
    }

    func testBadMagic() {
        var b = sample().bytes()
        b[0] = UInt8(ascii: "X")
        expectError(b) { if case .badMagic = $0 { return true }; return false }
    }

    func testUnsupportedVersion() {
        var w = sample()
        w.version = 7
        expectError(w.bytes()) { $0 == .unsupportedVersion(7) }
    }

    func testTruncatedAtEveryPrefixGivesANamedError() {
        let b = sample().bytes()
        // Every cut inside the header and metadata must fail cleanly, never crash.
        var named = 0
        // (the last 20 bytes are padding after the final tensor, which a file may omit)
        for cut in stride(from: 0, to: b.count - 20, by: 7) {
            XCTAssertThrowsError(try GGUFFile(mapping: MappedFile(bytes: Array(b[..<cut])))) { error in
                if case let .truncated(field, _, _, _) = error as? GGUFError, !field.isEmpty { named += 1 }
            }
        }
        XCTAssertGreaterThan(named, 10)
        // A cut in the tensor data is caught as out of bounds and names the tensor.
        expectError(Array(b[..<(b.count - 40)])) {
            if case let .tensorOutOfBounds(t, _, _, _) = $0 { return t == "v" || t == "t.weight" }
            return false
        }
    }

    func testUnknownValueType() {
        var b = sample().bytes()
        // first key is general.architecture: magic(4) version(4) counts(16) keylen(8) key(20) type(4)
        let typeOffset = 4 + 4 + 16 + 8 + "general.architecture".utf8.count
        b[typeOffset] = 99
        expectError(b) { $0 == .unknownValueType(key: "general.architecture", type: 99) }
    }

    func testUnknownTensorType() {
        var w = sample()
        w.tensors[1].type = 77
        expectError(w.bytes()) { $0 == .unknownTensorType(tensor: "v", type: 77) }
    }

    func testOverflowingArrayLength() {
        var w = GGUFWriter()
        w.set("x", .ints([1]))
        var b = w.bytes()
        // the array length field follows key, value type and element type
        let lenOffset = 4 + 4 + 16 + 8 + 1 + 4 + 4
        for i in 0..<8 { b[lenOffset + i] = 0xFF }
        expectError(b) { if case .sizeOverflow = $0 { return true }; return false }
    }

    func testOverflowingTensorDimensions() {
        var w = sample()
        w.tensors[0].dims = [1 << 39, 1 << 39]
        expectError(w.bytes()) {
            if case .sizeOverflow = $0 { return true }
            if case .tensorOutOfBounds = $0 { return true }
            return false
        }
    }

    func testInvalidUTF8KeyIsNamed() {
        var w = GGUFWriter()
        w.set("k", .string("ok"))
        var b = w.bytes()
        b[b.count - 1] = 0xFF  // last byte of the value "ok"
        // bytes() pads to alignment; find the value instead
        b = w.bytes()
        let idx = b.lastIndex(of: UInt8(ascii: "k"))!
        b[idx] = 0xC3  // "ok" -> "o\xC3": a truncated two-byte sequence
        expectError(b) { if case .invalidString = $0 { return true }; return false }
    }

    func testMissingFileIsAClearError() {
        XCTAssertThrowsError(try GGUFFile(path: "/nonexistent/model.gguf")) { error in
            XCTAssertTrue("\(error)".contains("/nonexistent/model.gguf"))
        }
    }

    func testShapeMismatchAndMissingKeysInAModel() throws {
        var w = TinyModel.writer(arch: "llama", seed: 1)
        // wrong shape for one projection
        if let i = w.tensors.firstIndex(where: { $0.name == "blk.0.attn_k.weight" }) {
            w.tensors[i].dims = [w.tensors[i].dims[0] / 2, w.tensors[i].dims[1] * 2]
        }
        XCTAssertThrowsError(try Transformer(file: w.parse())) { error in
            guard case let .shapeMismatch(t, _, _) = error as? GGUFError else { return XCTFail("\(error)") }
            XCTAssertEqual(t, "blk.0.attn_k.weight")
        }
        var w2 = TinyModel.writer(arch: "llama", seed: 1)
        w2.metadata.removeAll { $0.0 == "llama.embedding_length" }
        XCTAssertThrowsError(try Transformer(file: w2.parse())) { XCTAssertEqual($0 as? GGUFError, .missingKey("llama.embedding_length")) }
        var w3 = TinyModel.writer(arch: "gpt-j", seed: 1)
        w3.metadata.removeAll { $0.0 == "general.architecture" }
        w3.set("general.architecture", .string("gpt-j"))
        XCTAssertThrowsError(try Transformer(file: w3.parse())) { XCTAssertEqual($0 as? GGUFError, .unsupportedArchitecture("gpt-j")) }
    }

    func testRealModelHeader() throws {
        let m = try TestSupport.model()
        let c = m.config
        XCTAssertEqual(c.architecture, .llama)
        XCTAssertEqual(c.layers, 30); XCTAssertEqual(c.dim, 576); XCTAssertEqual(c.heads, 9); XCTAssertEqual(c.kvHeads, 3)
        XCTAssertEqual(c.ffnDim, 1536); XCTAssertEqual(c.vocabSize, 49152); XCTAssertEqual(c.headDim, 64)
        XCTAssertEqual(m.file.tensors.count, 272)
        XCTAssertEqual(try m.file.tensor("token_embd.weight").type, .q8_0)
        XCTAssertEqual(try m.file.tensor("blk.0.ffn_down.weight").type, .q4_1)
        XCTAssertTrue(m.transformer.tiedEmbeddings)
        XCTAssertEqual(m.template.defaultSystemPrompt, "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    }
}

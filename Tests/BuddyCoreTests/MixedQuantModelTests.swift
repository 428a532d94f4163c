import BuddyCore
import BuddyTestSupport
import Foundation
import XCTest

/// Random but valid blocks: finite half scales in a realistic range.
func randomQuantBlocks(_ type: GGMLType, blocks: Int, _ r: inout TestRandom) -> [UInt8] {
    let size = type.layout!.bytes
    var out = r.bytes(blocks * size)
    func setHalf(_ offset: Int, _ v: Float) {
        let h = Float16(v).bitPattern
        out[offset] = UInt8(h & 0xFF); out[offset + 1] = UInt8(h >> 8)
    }
    for b in 0..<blocks {
        // K-quant weights multiply d by 6- or 8-bit scales: smaller d keeps them of order 1.
        setHalf(b * size + (type == .q6_K ? 208 : 0), type.isKQuant ? r.float(0.0002, 0.002) : r.float(0.001, 0.05))
        if type == .q4_1 || type == .q5_1 { setHalf(b * size + 2, r.float(-0.2, 0.2)) }
        if type == .q4_K || type == .q5_K { setHalf(b * size + 2, r.float(0.0002, 0.002)) }
    }
    return out
}
/// A small llama model whose matrices are random blocks of every quantised type, mixed across
/// roles (embedding, attention, feed-forward, head), with rows of 256 and 512 so the K-quants fit.
enum MixedQuantModel {
    static let dim = 256, heads = 4, kvHeads = 2, ffn = 512, vocab = 80, layers = 2
    /// Per layer: q, k, v, output, gate, up, down.
    static let layerTypes: [[GGMLType]] = [
        [.q5_0, .q5_1, .q6_K, .q4_K, .q5_K, .q4_0, .q4_K],
        [.q4_K, .q5_K, .q5_0, .q6_K, .q5_1, .q8_0, .q6_K],
    ]

    static func file(embedding: GGMLType, head: GGMLType) throws -> GGUFFile { try writer(embedding: embedding, head: head).parse() }

    static func writer(embedding: GGMLType, head: GGMLType) -> GGUFWriter {
        var r = TestRandom(41)
        var w = TinyModel.header(arch: "llama", layers: layers, dim: dim, ffn: ffn, heads: heads, kvHeads: kvHeads)
        func add(_ name: String, _ type: GGMLType, cols: Int, rows: Int) {
            let blocks = cols * rows / type.layout!.elements
            w.tensors.append(.init(name: name, dims: [cols, rows], type: type.rawValue, data: randomQuantBlocks(type, blocks: blocks, &r)))
        }
        let kv = kvHeads * dim / heads
        add("token_embd.weight", embedding, cols: dim, rows: vocab)
        for l in 0..<layers {
            let p = "blk.\(l).", t = layerTypes[l]
            w.addF32(p + "attn_norm.weight", dims: [dim], r.floats(dim, 0.5, 1.5))
            w.addF32(p + "ffn_norm.weight", dims: [dim], r.floats(dim, 0.5, 1.5))
            add(p + "attn_q.weight", t[0], cols: dim, rows: dim)
            add(p + "attn_k.weight", t[1], cols: dim, rows: kv)
            add(p + "attn_v.weight", t[2], cols: dim, rows: kv)
            add(p + "attn_output.weight", t[3], cols: dim, rows: dim)
            add(p + "ffn_gate.weight", t[4], cols: dim, rows: ffn)
            add(p + "ffn_up.weight", t[5], cols: dim, rows: ffn)
            add(p + "ffn_down.weight", t[6], cols: ffn, rows: dim)
        }
        w.addF32("output_norm.weight", dims: [dim], r.floats(dim, 0.5, 1.5))
        add("output.weight", head, cols: dim, rows: vocab)
        return w
    }
}

final class MixedQuantModelTests: XCTestCase {
    let tokens: [Int32] = [3, 17, 42, 5, 79, 0, 11, 64, 2]

    /// Logits of every position, token by token, on the fast or the fp32 reference path.
    func decode(_ t: Transformer, reference: Bool) -> [Float] {
        let cache = KVCache(layers: t.config.layers, capacity: 16, kvDim: t.config.kvDim)
        let s = DecodeState(config: t.config, capacity: 16, pool: ThreadPool.shared(threads: 2))
        s.reference = reference
        var out: [Float] = []
        for (pos, tok) in tokens.enumerated() {
            let l = t.forward(token: tok, pos: pos, s, cache)
            out += Array(UnsafeBufferPointer(start: l, count: t.config.vocabSize))
        }
        return out
    }

    func check(embedding: GGMLType, head: GGMLType) throws {
        let t = try Transformer(file: MixedQuantModel.file(embedding: embedding, head: head))
        XCTAssertEqual(t.tokenEmbedding.type, embedding)
        XCTAssertEqual(t.layers[0].down.type, .q4_K)
        let fast = decode(t, reference: false)
        XCTAssertTrue(fast.allSatisfy { $0.isFinite })
        // The batched prompt path gives exactly the token-by-token numbers (in two chunks, so
        // the second attends to a cache the first wrote).
        let cache = KVCache(layers: t.config.layers, capacity: 16, kvDim: t.config.kvDim)
        let b = BatchState(config: t.config, maxTokens: 8, capacity: 16, pool: ThreadPool.shared(threads: 2))
        var batched = [Float](repeating: .nan, count: tokens.count * t.config.vocabSize)
        batched.withUnsafeMutableBufferPointer { out in
            t.prefill(tokens[0..<5], start: 0, b, cache)
            t.batchLogitsAll(n: 5, b, out.baseAddress!)
            t.prefill(tokens[5...], start: 5, b, cache)
            t.batchLogitsAll(n: tokens.count - 5, b, out.baseAddress! + 5 * t.config.vocabSize)
        }
        XCTAssertEqual(batched, fast, "\(embedding)/\(head): batched prompt vs token by token")
        // The 8-bit-activation path stays close to dequantised weights with fp32 activations.
        // (This random model's sharp attention amplifies rounding at a few positions, hence the
        // loose bound on the worst logit; a kernel wired to the wrong activations is off by
        // the whole spread.)
        let ref = decode(t, reference: true)
        let spread = ref.map { abs($0) }.max()!
        let errors = zip(fast, ref).map { abs($0 - $1) }
        let mean = errors.reduce(0, +) / Float(errors.count)
        XCTAssertGreaterThan(spread, 0.5)
        XCTAssertLessThan(errors.max()!, 0.15 * spread, "\(embedding)/\(head): fast vs fp32 reference, worst logit")
        XCTAssertLessThan(mean, 0.01 * spread, "\(embedding)/\(head): fast vs fp32 reference, mean")
    }

    /// A type the engine has no kernels for is still refused by name when the model loads.
    func testUnsupportedTypeIsRefusedWithItsName() throws {
        var w = MixedQuantModel.writer(embedding: .q8_0, head: .q8_0)
        let i = w.tensors.firstIndex { $0.name == "blk.1.ffn_up.weight" }!
        w.tensors[i].type = GGMLType.q3_K.rawValue
        w.tensors[i].data = [UInt8](repeating: 0, count: MixedQuantModel.ffn * MixedQuantModel.dim / 256 * 110)
        XCTAssertThrowsError(try Transformer(file: w.parse())) {
            XCTAssertEqual($0 as? GGUFError, .badTensorType(tensor: "blk.1.ffn_up.weight", type: "Q3_K", reason: "this type is not supported by the engine"))
        }
    }

    func testMixedTypesWithKQuantEmbeddingAndQ8Head() throws { try check(embedding: .q6_K, head: .q8_0) }
    func testMixedTypesWithQ5EmbeddingAndKQuantHead() throws { try check(embedding: .q5_0, head: .q5_K) }
}

final class TensorTypeShareTests: XCTestCase {
    func testSharesCountEveryTensorOnceAndAddUpToTheTensorBytes() throws {
        let f = try MixedQuantModel.file(embedding: .q6_K, head: .q8_0)
        let shares = f.tensorTypeShares()
        XCTAssertEqual(shares.reduce(0) { $0 + $1.tensors }, f.tensors.count)
        XCTAssertEqual(shares.reduce(0) { $0 + $1.bytes }, f.tensors.reduce(0) { $0 + $1.byteCount })
        XCTAssertEqual(Set(shares.map(\.type)), [.f32, .q4_0, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K])
        XCTAssertEqual(shares.map(\.bytes), shares.map(\.bytes).sorted(by: >))
        // Q4_K: layer 0's output (256 × 256) and down (256 × 512), layer 1's q (256 × 256).
        let q4k = shares.first { $0.type == .q4_K }!
        XCTAssertEqual(q4k.tensors, 3)
        XCTAssertEqual(q4k.bytes, (256 * 256 * 2 + 256 * 512) / 256 * 144)
        XCTAssertEqual(q4k.fileShare, Double(q4k.bytes) / Double(f.mapping.size))
        XCTAssertLessThan(shares.reduce(0) { $0 + $1.fileShare }, 1)
    }
}

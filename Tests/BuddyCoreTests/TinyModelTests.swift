import BuddyCore
import BuddyTestSupport
import Foundation
import XCTest

/// A tiny random model written as GGUF by our own writer, and an independent naive forward
/// pass over the same numbers, for checking the llama and qwen2 code paths.
enum TinyModel {
    static let dim = 64, heads = 4, kvHeads = 2, ffn = 96, vocab = 80, layers = 3
    static var headDim: Int { dim / heads }

    /// A writer holding the hyper-parameters of a model of this shape (context 64).
    static func header(arch: String, layers: Int, dim: Int, ffn: Int, heads: Int, kvHeads: Int) -> GGUFWriter {
        var w = GGUFWriter()
        w.set("general.architecture", .string(arch))
        w.set("\(arch).block_count", .u32(UInt32(layers)))
        w.set("\(arch).embedding_length", .u32(UInt32(dim)))
        w.set("\(arch).feed_forward_length", .u32(UInt32(ffn)))
        w.set("\(arch).attention.head_count", .u32(UInt32(heads)))
        w.set("\(arch).attention.head_count_kv", .u32(UInt32(kvHeads)))
        w.set("\(arch).context_length", .u32(64))
        w.set("\(arch).rope.freq_base", .f32(10000))
        w.set("\(arch).attention.layer_norm_rms_epsilon", .f32(1e-6))
        return w
    }

    static func writer(arch: String, seed: UInt64, tied: Bool = true) -> GGUFWriter {
        var r = TestRandom(seed)
        var w = header(arch: arch, layers: layers, dim: dim, ffn: ffn, heads: heads, kvHeads: kvHeads)
        let kv = kvHeads * headDim
        w.addF32("token_embd.weight", dims: [dim, vocab], r.floats(dim * vocab))
        for l in 0..<layers {
            let p = "blk.\(l)."
            w.addF32(p + "attn_norm.weight", dims: [dim], r.floats(dim, 0.5, 1.5))
            w.addF32(p + "ffn_norm.weight", dims: [dim], r.floats(dim, 0.5, 1.5))
            w.addF32(p + "attn_q.weight", dims: [dim, dim], r.floats(dim * dim, -0.3, 0.3))
            w.addF32(p + "attn_k.weight", dims: [dim, kv], r.floats(dim * kv, -0.3, 0.3))
            w.addF32(p + "attn_v.weight", dims: [dim, kv], r.floats(dim * kv, -0.3, 0.3))
            w.addF32(p + "attn_output.weight", dims: [dim, dim], r.floats(dim * dim, -0.2, 0.2))
            w.addF32(p + "ffn_gate.weight", dims: [dim, ffn], r.floats(dim * ffn, -0.2, 0.2))
            w.addF32(p + "ffn_up.weight", dims: [dim, ffn], r.floats(dim * ffn, -0.2, 0.2))
            w.addF32(p + "ffn_down.weight", dims: [ffn, dim], r.floats(dim * ffn, -0.2, 0.2))
            if arch == "qwen2" {
                w.addF32(p + "attn_q.bias", dims: [dim], r.floats(dim, -0.5, 0.5))
                w.addF32(p + "attn_k.bias", dims: [kv], r.floats(kv, -0.5, 0.5))
                w.addF32(p + "attn_v.bias", dims: [kv], r.floats(kv, -0.5, 0.5))
            }
        }
        w.addF32("output_norm.weight", dims: [dim], r.floats(dim, 0.5, 1.5))
        if !tied { w.addF32("output.weight", dims: [dim, vocab], r.floats(dim * vocab)) }
        return w
    }
}

/// Straightforward fp64 forward pass written from the formulas, sharing no code with the engine.
struct NaiveReference {
    let f: GGUFFile
    let qwen: Bool

    func tensor(_ name: String) -> [Double] {
        let t = try! f.tensor(name)
        let p = f.data(t)
        return (0..<t.elementCount).map { Double(p.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self)) }
    }
    func matvec(_ w: [Double], rows: Int, cols: Int, _ x: [Double]) -> [Double] {
        (0..<rows).map { r in (0..<cols).reduce(0.0) { $0 + w[r * cols + $1] * x[$1] } }
    }
    func rmsnorm(_ x: [Double], _ w: [Double]) -> [Double] {
        let ms = x.reduce(0) { $0 + $1 * $1 } / Double(x.count)
        return zip(x, w).map { $0 / (ms + 1e-6).squareRoot() * $1 }
    }
    func rope(_ v: inout [Double], heads: Int, pos: Int) {
        let hd = TinyModel.headDim
        for h in 0..<heads {
            for i in 0..<hd / 2 {
                let theta = Double(pos) * pow(10000.0, -2.0 * Double(i) / Double(hd))
                let (a, b) = qwen ? (h * hd + i, h * hd + i + hd / 2) : (h * hd + 2 * i, h * hd + 2 * i + 1)
                let x0 = v[a], x1 = v[b]
                v[a] = x0 * cos(theta) - x1 * sin(theta)
                v[b] = x0 * sin(theta) + x1 * cos(theta)
            }
        }
    }

    /// Logits for every position of `tokens`.
    func logits(_ tokens: [Int32]) -> [[Double]] {
        let d = TinyModel.dim, hd = TinyModel.headDim, kv = TinyModel.kvHeads * hd, ffn = TinyModel.ffn
        let emb = tensor("token_embd.weight")
        var keys = [[[Double]]](repeating: [], count: TinyModel.layers)
        var vals = keys
        var out: [[Double]] = []
        for (pos, tok) in tokens.enumerated() {
            var x = Array(emb[Int(tok) * d..<(Int(tok) + 1) * d])
            for l in 0..<TinyModel.layers {
                let p = "blk.\(l)."
                let xn = rmsnorm(x, tensor(p + "attn_norm.weight"))
                var q = matvec(tensor(p + "attn_q.weight"), rows: d, cols: d, xn)
                var k = matvec(tensor(p + "attn_k.weight"), rows: kv, cols: d, xn)
                var v = matvec(tensor(p + "attn_v.weight"), rows: kv, cols: d, xn)
                if qwen {
                    q = zip(q, tensor(p + "attn_q.bias")).map(+)
                    k = zip(k, tensor(p + "attn_k.bias")).map(+)
                    v = zip(v, tensor(p + "attn_v.bias")).map(+)
                }
                rope(&q, heads: TinyModel.heads, pos: pos)
                rope(&k, heads: TinyModel.kvHeads, pos: pos)
                keys[l].append(k); vals[l].append(v)
                var att = [Double](repeating: 0, count: d)
                for h in 0..<TinyModel.heads {
                    let g = h / (TinyModel.heads / TinyModel.kvHeads)
                    let scores = (0...pos).map { t in
                        (0..<hd).reduce(0.0) { $0 + q[h * hd + $1] * keys[l][t][g * hd + $1] } / Double(hd).squareRoot()
                    }
                    let m = scores.max()!
                    let e = scores.map { exp($0 - m) }
                    let s = e.reduce(0, +)
                    for t in 0...pos { for j in 0..<hd { att[h * hd + j] += e[t] / s * vals[l][t][g * hd + j] } }
                }
                x = zip(x, matvec(tensor(p + "attn_output.weight"), rows: d, cols: d, att)).map(+)
                let xn2 = rmsnorm(x, tensor(p + "ffn_norm.weight"))
                let gate = matvec(tensor(p + "ffn_gate.weight"), rows: ffn, cols: d, xn2)
                let up = matvec(tensor(p + "ffn_up.weight"), rows: ffn, cols: d, xn2)
                let h = zip(gate, up).map { $0 / (1 + exp(-$0)) * $1 }
                x = zip(x, matvec(tensor(p + "ffn_down.weight"), rows: d, cols: ffn, h)).map(+)
            }
            let xf = rmsnorm(x, tensor("output_norm.weight"))
            let head = f.hasTensor("output.weight") ? tensor("output.weight") : emb
            out.append(matvec(head, rows: TinyModel.vocab, cols: d, xf))
        }
        return out
    }
}

final class TinyModelTests: XCTestCase {
    let tokens: [Int32] = [3, 17, 42, 5, 79, 0, 11]

    func check(arch: String, tied: Bool) throws {
        let file = try TinyModel.writer(arch: arch, seed: 7, tied: tied).parse()
        let t = try Transformer(file: file)
        XCTAssertEqual(t.config.architecture.rawValue, arch)
        XCTAssertEqual(t.tiedEmbeddings, tied)
        let want = NaiveReference(f: file, qwen: arch == "qwen2").logits(tokens)
        let pool = ThreadPool.shared(threads: 2)
        for reference in [true, false] {
            let cache = KVCache(layers: TinyModel.layers, capacity: 16, kvDim: t.config.kvDim)
            let s = DecodeState(config: t.config, capacity: 16, pool: pool)
            s.reference = reference
            var maxErr = 0.0
            for (pos, tok) in tokens.enumerated() {
                let logits = t.forward(token: tok, pos: pos, s, cache)
                for i in 0..<TinyModel.vocab { maxErr = max(maxErr, abs(Double(logits[i]) - want[pos][i])) }
            }
            // The fp32 reference differs from fp64 by rounding only; the fast path also keeps
            // K/V/Q in half precision like llama.cpp's f16 cache.
            XCTAssertLessThan(maxErr, reference ? 1e-3 : 5e-2, "\(arch) reference=\(reference)")
        }
        // The batched prompt path agrees with the naive reference too.
        let cache = KVCache(layers: TinyModel.layers, capacity: 16, kvDim: t.config.kvDim)
        let b = BatchState(config: t.config, maxTokens: 8, capacity: 16, pool: pool)
        t.prefill(tokens[...], start: 0, b, cache)
        let all = UnsafeMutablePointer<Float>.allocate(capacity: tokens.count * TinyModel.vocab)
        defer { all.deallocate() }
        t.batchLogitsAll(n: tokens.count, b, all)
        var maxErr = 0.0
        for pos in tokens.indices { for i in 0..<TinyModel.vocab { maxErr = max(maxErr, abs(Double(all[pos * TinyModel.vocab + i]) - want[pos][i])) } }
        XCTAssertLessThan(maxErr, 5e-2, "\(arch) batched")
    }

    func testLlamaTiedMatchesNaiveReference() throws { try check(arch: "llama", tied: true) }
    func testLlamaSeparateHeadMatchesNaiveReference() throws { try check(arch: "llama", tied: false) }
    func testQwen2WithBiasesMatchesNaiveReference() throws { try check(arch: "qwen2", tied: false) }

    func testSkippingALayerUnderMaskEqualsModelWithoutIt() throws {
        let file = try TinyModel.writer(arch: "llama", seed: 9).parse()
        let t = try Transformer(file: file)
        let pool = ThreadPool.shared(threads: 1)
        func run(_ runs: @escaping (Int) -> Bool) -> [Float] {
            let cache = KVCache(layers: TinyModel.layers, capacity: 16, kvDim: t.config.kvDim)
            let s = DecodeState(config: t.config, capacity: 16, pool: pool)
            s.reference = true
            var out: [Float] = []
            for (pos, tok) in tokens.enumerated() {
                let l = t.forward(token: tok, pos: pos, s, cache, runs: runs, policy: .mask)
                out += Array(UnsafeBufferPointer(start: l, count: TinyModel.vocab))
            }
            return out
        }
        let skipped = run { $0 != 1 }
        // Same model with layer 1 removed from the file: rename layer 2 to layer 1.
        var w = TinyModel.writer(arch: "llama", seed: 9)
        w.tensors.removeAll { $0.name.hasPrefix("blk.1.") }
        for i in w.tensors.indices where w.tensors[i].name.hasPrefix("blk.2.") {
            w.tensors[i].name = "blk.1." + w.tensors[i].name.dropFirst(6)
        }
        w.metadata.removeAll { $0.0 == "llama.block_count" }
        w.set("llama.block_count", .u32(2))
        let t2 = try Transformer(file: w.parse())
        let cache = KVCache(layers: 2, capacity: 16, kvDim: t2.config.kvDim)
        let s = DecodeState(config: t2.config, capacity: 16, pool: pool)
        s.reference = true
        var removed: [Float] = []
        for (pos, tok) in tokens.enumerated() {
            let l = t2.forward(token: tok, pos: pos, s, cache)
            removed += Array(UnsafeBufferPointer(start: l, count: TinyModel.vocab))
        }
        XCTAssertEqual(skipped, removed)
    }
}

import BuddyCore
import BuddyFuzzSupport
import BuddyTestSupport
import Foundation
import XCTest

/// Stand-ins for skipped layers: the kernel against its scalar twin and a hand computation,
/// what they change in the executor (and what they must not), and their file format.
final class StandInTests: XCTestCase {
    /// Random stand-ins for every layer of a model of width `dim` (ranks vary, one layer has none).
    static func random(config c: ModelConfig, seed: UInt64, scale: Float = 0.05) -> StandIns {
        var r = TestRandom(seed)
        let layers: [StandIns.Layer?] = (0..<c.layers).map { l in
            if l == 2 { return nil }
            let rank = [0, 3, 8, 17][l % 4]
            return StandIns.Layer(rank: rank, bias: r.floats(c.dim, -scale, scale), down: r.floats(rank * c.dim, -scale, scale),
                                  up: r.floats(c.dim * rank, -scale, scale))
        }
        return try! StandIns(dim: c.dim, eps: c.rmsNormEps, layers: layers)
    }

    /// h + c + B·A·(h/rms(h)) by hand in double precision, against the vector kernel and its twin.
    func testApplyMatchesHandComputationAndScalarTwin() throws {
        let dim = 37, rank = 5
        var r = TestRandom(11)
        let layer = StandIns.Layer(rank: rank, bias: r.floats(dim), down: r.floats(rank * dim), up: r.floats(dim * rank))
        let s = try StandIns(dim: dim, eps: 1e-5, layers: [nil, layer])
        let x0 = r.floats(dim, -3, 3)
        let ms = x0.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(dim)
        let n = x0.map { Double($0) / (ms + 1e-5).squareRoot() }
        let t = (0..<rank).map { j in (0..<dim).reduce(0.0) { $0 + Double(layer.down[j * dim + $1]) * n[$1] } }
        let expected = (0..<dim).map { i in Double(x0[i]) + Double(layer.bias[i]) + (0..<rank).reduce(0.0) { $0 + Double(layer.up[i * rank + $1]) * t[$1] } }
        var fast = x0, ref = x0, untouched = x0
        var normed = [Float](repeating: 0, count: dim), projected = [Float](repeating: 0, count: rank)
        s.apply(layer: 1, &fast, normed: &normed, projected: &projected)
        s.applyRef(layer: 1, &ref, normed: &normed, projected: &projected)
        s.apply(layer: 0, &untouched, normed: &normed, projected: &projected)   // no stand-in: nothing added
        XCTAssertEqual(untouched, x0)
        for i in 0..<dim {
            XCTAssertEqual(Double(fast[i]), expected[i], accuracy: 1e-4 * max(1, abs(expected[i])))
            XCTAssertEqual(Double(ref[i]), expected[i], accuracy: 1e-4 * max(1, abs(expected[i])))
        }
    }

    /// Weights that are exact halves (as every loaded file's are) run on half-precision rows
    /// and must give exactly the fp32 vector kernel's numbers, computed here with `dotF32`.
    func testHalfWeightsGiveTheFp32KernelsNumbers() throws {
        let dim = 69, rank = 17   // both leave a tail after the 16-wide vector loop
        var r = TestRandom(23)
        func halves(_ v: [Float]) -> [Float] { v.map { Float(Float16($0)) } }
        let layer = StandIns.Layer(rank: rank, bias: halves(r.floats(dim)), down: halves(r.floats(rank * dim)), up: halves(r.floats(dim * rank)))
        let s = try StandIns(dim: dim, eps: 1e-5, layers: [layer])
        XCTAssertTrue(s.usesHalfWeights(layer: 0))
        let x0 = r.floats(dim, -3, 3)
        var expected = x0
        let scale = 1 / (dotF32(x0, x0, count: dim) / Float(dim) + 1e-5).squareRoot()
        let normed = x0.map { $0 * scale }
        let projected = (0..<rank).map { j in layer.down.withUnsafeBufferPointer { dotF32($0.baseAddress! + j * dim, normed, count: dim) } }
        for i in 0..<dim {
            expected[i] += layer.bias[i] + layer.up.withUnsafeBufferPointer { dotF32($0.baseAddress! + i * rank, projected, count: rank) }
        }
        var fast = x0, scratch = [Float](repeating: 0, count: dim), proj = [Float](repeating: 0, count: rank)
        s.apply(layer: 0, &fast, normed: &scratch, projected: &proj)
        XCTAssertEqual(fast, expected)
        // Decode splits both products by rows across two threads: the same numbers.
        var split = x0
        let pool = ThreadPool.shared(threads: 2)
        let xq = Q8Activations(capacity: 96)
        defer { xq.deallocate() }
        s.apply(layer: 0, &split, normed: &scratch, projected: &proj, across: MatVec(pool: pool, maxCols: dim), xq: xq)
        XCTAssertEqual(split, expected)
        // Full-precision weights (a fit in progress) keep the fp32 kernel.
        let exact = try StandIns(dim: dim, eps: 1e-5, layers: [StandIns.Layer(rank: rank, bias: layer.bias, down: layer.down.map { $0 + 1e-6 }, up: layer.up)])
        XCTAssertFalse(exact.usesHalfWeights(layer: 0))
    }

    private func logits(_ m: LanguageModel, _ s: DecodeState) -> [Float] { Array(UnsafeBufferPointer(start: s.logits, count: m.config.vocabSize)) }

    /// Decoding `tokens` through the layers `runs` selects, returning every position's logits.
    private func decode(_ m: LanguageModel, _ tokens: [Int32], runs: [Bool], standIns: StandIns?, policy: KVPolicy, reference: Bool = false) -> [[Float]] {
        let pool = ThreadPool.shared(threads: 2)
        let s = DecodeState(config: m.config, capacity: 64, pool: pool)
        s.reference = reference
        s.standIns = standIns
        let cache = KVCache(layers: m.config.layers, capacity: 64, kvDim: m.config.kvDim)
        return tokens.enumerated().map { pos, tok in
            m.transformer.forward(token: tok, pos: pos, s, cache, runs: { runs[$0] }, policy: policy)
            return logits(m, s)
        }
    }

    /// A zero stand-in equals plain skipping exactly; budget 1 (no layer skipped) is the full
    /// model bit for bit whatever stand-ins are installed.
    func testZeroStandInIsPlainSkipAndFullDepthIsUnchanged() throws {
        let m = try TestSupport.model()
        let L = m.config.layers
        let tokens = m.tokenizer.encode("The quick brown fox jumps over the lazy dog", parseSpecial: false)
        let skipSome = (0..<L).map { ![3, 7, 8, 20].contains($0) }
        for policy in KVPolicy.allCases {
            XCTAssertEqual(decode(m, tokens, runs: skipSome, standIns: StandIns.zero(config: m.config), policy: policy),
                           decode(m, tokens, runs: skipSome, standIns: nil, policy: policy), "\(policy)")
        }
        let all = [Bool](repeating: true, count: L)
        XCTAssertEqual(decode(m, tokens, runs: all, standIns: Self.random(config: m.config, seed: 3), policy: .fill),
                       decode(m, tokens, runs: all, standIns: nil, policy: .fill))
        // And the stand-ins really act when layers are skipped.
        XCTAssertNotEqual(decode(m, tokens, runs: skipSome, standIns: Self.random(config: m.config, seed: 3), policy: .fill),
                          decode(m, tokens, runs: skipSome, standIns: nil, policy: .fill))
    }

    /// A prompt evaluated as one batch (one layer set, or one set per row) gives the logits of
    /// decoding it token by token with the same stand-ins, to the batch path's rounding; the
    /// reference (scalar) path agrees with the vector path to float accuracy.
    func testBatchedPromptEqualsTokenByTokenWithStandIns() throws {
        let m = try TestSupport.model()
        let L = m.config.layers, V = m.config.vocabSize
        let tokens = m.tokenizer.encode("Once upon a time there was a little robot who wanted to learn", parseSpecial: false)
        let n = tokens.count
        let standIns = Self.random(config: m.config, seed: 5)
        let pool = ThreadPool.shared(threads: 2)
        // Row i skips layers {3, 9} and, on odd rows, also 14 and 15.
        let rowRuns: [[Bool]] = (0..<n).map { i in (0..<L).map { l in !([3, 9].contains(l) || (i % 2 == 1 && [14, 15].contains(l))) } }
        for policy in [KVPolicy.fill, .zero] {
            let b = BatchState(config: m.config, maxTokens: n, capacity: 64, pool: pool)
            b.standIns = standIns
            let cache = KVCache(layers: L, capacity: 64, kvDim: m.config.kvDim)
            m.transformer.prefillEmbed(tokens[...], start: 0, b, cache)
            m.transformer.prefillLayers(0..<L, n: n, start: 0, b, cache, rowRuns: rowRuns, policy: policy)
            let batched = UnsafeMutablePointer<Float>.allocate(capacity: n * V)
            defer { batched.deallocate() }
            m.transformer.batchLogitsAll(n: n, b, batched)
            // Token by token with each row's own decision.
            let s = DecodeState(config: m.config, capacity: 64, pool: pool)
            s.standIns = standIns
            let dcache = KVCache(layers: L, capacity: 64, kvDim: m.config.kvDim)
            var worst: Float = 0
            for (pos, tok) in tokens.enumerated() {
                m.transformer.forward(token: tok, pos: pos, s, dcache, runs: { rowRuns[pos][$0] }, policy: policy)
                for v in 0..<V { worst = max(worst, abs(s.logits[v] - batched[pos * V + v])) }
            }
            XCTAssertLessThan(worst, 0.02, "\(policy): largest logit difference batch vs decode")
            // The reference path with the scalar twin lands close to the vector path.
            let ref = decode(m, Array(tokens.prefix(4)), runs: rowRuns[1], standIns: standIns, policy: policy, reference: true)
            let fast = decode(m, Array(tokens.prefix(4)), runs: rowRuns[1], standIns: standIns, policy: policy)
            XCTAssertEqual(Sampler.argmax(ref[3], count: V), Sampler.argmax(fast[3], count: V))
        }
    }

    func testFileRoundTripsAndRefusesOtherModelsDamageAndVersions() throws {
        let m = try TestSupport.model()
        let s = Self.random(config: m.config, seed: 7)
        let data = try StandInFile.encode(s, fingerprint: m.fingerprint)
        let back = try StandInFile.decode(data, path: "x", config: m.config, fingerprint: m.fingerprint)
        // Stored in half precision.
        for (a, b) in zip(s.layers, back.layers) {
            XCTAssertEqual(a?.rank, b?.rank)
            XCTAssertEqual(a?.down.map { Float(Float16($0)) }, b?.down)
            XCTAssertEqual(a?.bias.map { Float(Float16($0)) }, b?.bias)
        }
        XCTAssertThrowsError(try StandInFile.decode(data, path: "x", config: m.config, fingerprint: "0123-45")) { e in
            guard case .wrongModel = e as? StandInError else { return XCTFail("\(e)") }
        }
        var future = data
        future[8] = 99
        XCTAssertThrowsError(try StandInFile.decode(future, path: "x", config: m.config, fingerprint: m.fingerprint)) { e in
            guard case .unsupportedVersion = e as? StandInError else { return XCTFail("\(e)") }
        }
        var damaged = data
        damaged[damaged.count - 3] ^= 0x40
        XCTAssertThrowsError(try StandInFile.decode(damaged, path: "x", config: m.config, fingerprint: m.fingerprint)) { e in
            XCTAssertTrue("\(e)".contains("checksum"), "\(e)")
        }
        XCTAssertThrowsError(try StandInFile.decode(data.prefix(data.count - 2), path: "x", config: m.config, fingerprint: m.fingerprint))
        XCTAssertThrowsError(try StandInFile.decode(Data("BUDDYSTI".utf8), path: "x", config: m.config, fingerprint: m.fingerprint))
    }

    /// The identity that cached measurements record: the same weights give the same digest
    /// (a file read twice, or a file and the stand-ins it was saved from once rounded to halves),
    /// and any changed weight, rank or missing layer gives another.
    func testIdentityFollowsTheWeights() throws {
        let m = try TestSupport.model()
        let s = Self.random(config: m.config, seed: 7)
        let data = try StandInFile.encode(s, fingerprint: m.fingerprint)
        let a = try StandInFile.decode(data, path: "x", config: m.config, fingerprint: m.fingerprint)
        let b = try StandInFile.decode(data, path: "y", config: m.config, fingerprint: m.fingerprint)
        XCTAssertEqual(a.identity, b.identity)
        XCTAssertEqual(a.identity.count, 16)
        let rounded = try StandIns(dim: s.dim, eps: s.eps, layers: s.layers.map { l in
            l.map { StandIns.Layer(rank: $0.rank, bias: $0.bias.map { Float(Float16($0)) }, down: $0.down.map { Float(Float16($0)) },
                                   up: $0.up.map { Float(Float16($0)) }) }
        })
        XCTAssertEqual(rounded.identity, a.identity)
        XCTAssertNotEqual(s.identity, a.identity, "the fp32 weights differ from their halves")
        XCTAssertNotEqual(Self.random(config: m.config, seed: 8).identity, a.identity)
        var layers = a.layers
        let l3 = layers[3]!
        var bias = l3.bias
        bias[5] = Float(Float16(bias[5] + 0.01))
        layers[3] = StandIns.Layer(rank: l3.rank, bias: bias, down: l3.down, up: l3.up)
        XCTAssertNotEqual(try StandIns(dim: a.dim, eps: a.eps, layers: layers).identity, a.identity)
        layers = a.layers
        layers[0] = nil
        XCTAssertNotEqual(try StandIns(dim: a.dim, eps: a.eps, layers: layers).identity, a.identity)
    }

    /// Mutated stand-in files load (and then apply finite values) or are refused with a
    /// StandInError; nothing crashes.
    func testMutatedStandInFilesAreRefusedOrLoadCleanly() throws {
        let m = try TestSupport.model()
        // Small ranks keep each mutant cheap to parse.
        var r = TestRandom(8)
        let layers: [StandIns.Layer?] = (0..<m.config.layers).map { l in
            l % 3 == 0 ? nil : StandIns.Layer(rank: 1, bias: r.floats(m.config.dim, -0.1, 0.1), down: r.floats(m.config.dim, -0.1, 0.1), up: r.floats(m.config.dim, -0.1, 0.1))
        }
        let seed = [UInt8](try StandInFile.encode(try StandIns(dim: m.config.dim, eps: m.config.rmsNormEps, layers: layers), fingerprint: m.fingerprint))
        let budget = FuzzBudget(defaultIterations: 400)
        var mutator = Mutator(seed: budget.seed, dictionary: textFuzzDictionary + ["\"ranks\":", "576", "\"payload_bytes\":"])
        var loaded = 0, refused = 0
        let headerEnd = 16 + Int(seed[12]) + Int(seed[13]) << 8
        /// A payload mutant made to pass the checksum, so the value checks behind it are reached.
        func resealed(_ payload: [UInt8]) -> [UInt8] {
            var header = try! JSONSerialization.jsonObject(with: Data(seed[16..<headerEnd])) as! [String: Any]
            header["payload_fnv64"] = String(format: "%016llx", payload.withUnsafeBytes { StandInFile.fnv64($0) })
            header["payload_bytes"] = payload.count
            let h = try! JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
            return Array(seed[0..<12]) + [UInt8(h.count & 0xff), UInt8(h.count >> 8 & 0xff), 0, 0] + [UInt8](h) + payload
        }
        let (n, secs) = budget.run { i in
            // Even runs mutate the header (and anything near it); odd runs the payload, resealed.
            let b = i % 2 == 0 ? mutator.mutate(seed, focus: headerEnd + 64) : resealed(mutator.mutate(Array(seed[headerEnd...])))
            do {
                let s = try StandInFile.decode(Data(b), path: "mutant", config: m.config, fingerprint: m.fingerprint)
                var x = [Float](repeating: 0.5, count: m.config.dim), normed = x, projected = x
                for l in 0..<m.config.layers { s.apply(layer: l, &x, normed: &normed, projected: &projected) }
                XCTAssertTrue(x.allSatisfy(\.isFinite))
                loaded += 1
            } catch is StandInError {
                refused += 1
            } catch {
                XCTFail("untyped error: \(error)")
            }
        }
        print(String(format: "fuzz stand-in files: %d executions in %.1f s, %d loaded, %d refused", n, secs, loaded, refused))
        XCTAssertGreaterThan(refused, n / 4)
        XCTAssertGreaterThan(loaded, n / 20)   // the value checks are reached, not only the framing ones
    }
}

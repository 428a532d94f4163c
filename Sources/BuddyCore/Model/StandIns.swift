import CKernels
import Foundation

/// Cheap replacements for skipped layers. A layer that a token skips normally leaves the
/// residual stream unchanged; with a stand-in it adds an affine map of its RMS-normalised
/// input instead, a low-rank estimate of what the layer would have added:
///
///     h ← h + c + B·(A·(h / rms(h)))      c: [dim], A: [rank × dim], B: [dim × rank]
///
/// A rank-64 stand-in costs 2·576·64 ≈ 74 k multiply-adds, about 2 % of a SmolLM2 layer.
/// Rank 0 is a bias-only stand-in. Weights are immutable; callers pass the scratch.
public final class StandIns: @unchecked Sendable {
    public struct Layer: Sendable, Equatable {
        public let rank: Int
        public let bias: [Float]   // [dim]
        public let down: [Float]   // [rank × dim]  A
        public let up: [Float]     // [dim × rank]  B
        public init(rank: Int, bias: [Float], down: [Float], up: [Float]) {
            self.rank = rank; self.bias = bias; self.down = down; self.up = up
        }
        /// Multiply-adds per token.
        public var cost: Int { 2 * bias.count * rank }
    }

    public let dim: Int
    /// Epsilon of the normalisation (the model's RMS-norm epsilon).
    public let eps: Float
    /// One entry per model layer; nil where the layer has no stand-in (it then vanishes when skipped).
    public let layers: [Layer?]
    /// What the file says about how it was made (command, data ranges, validation figures).
    public let notes: String
    /// Per layer, A and B as half-precision bits when every weight of both is exactly a half
    /// (always so for a loaded file, which stores halves): the vector path then reads half the
    /// bytes and widens them exactly, which gives the fp32 kernel's numbers. Fits in progress
    /// hold full-precision weights and keep the fp32 kernel.
    private let halfWeights: [(down: [UInt16], up: [UInt16])?]

    public init(dim: Int, eps: Float, layers: [Layer?], notes: String = "") throws {
        for (l, layer) in layers.enumerated() {
            guard let layer else { continue }
            guard layer.rank >= 0, layer.rank <= dim, layer.bias.count == dim,
                  layer.down.count == layer.rank * dim, layer.up.count == dim * layer.rank else {
                throw StandInError.badShape(layer: l)
            }
            guard layer.bias.allSatisfy(\.isFinite), layer.down.allSatisfy(\.isFinite), layer.up.allSatisfy(\.isFinite) else {
                throw StandInError.notFinite(layer: l)
            }
        }
        self.dim = dim; self.eps = eps; self.layers = layers; self.notes = notes
        halfWeights = layers.map { layer in
            guard let layer, layer.rank > 0 else { return nil }
            func bits(_ v: [Float]) -> [UInt16]? {
                var out = [UInt16](repeating: 0, count: v.count)
                for (i, f) in v.enumerated() {
                    let h = Float16(f)
                    guard Float(h) == f else { return nil }
                    out[i] = h.bitPattern
                }
                return out
            }
            guard let down = bits(layer.down), let up = bits(layer.up) else { return nil }
            return (down, up)
        }
    }

    /// A digest of every weight (FNV-64 over ranks and float bits, hex). Measurements cached on
    /// disk (the router's checkpoint, the Budget Predictor's curves) record it, so a rerun with
    /// different stand-ins measures again instead of reusing numbers made with the old ones.
    public var identity: String {
        var h = FNV1a64()
        func mix(_ v: UInt32) { for k in 0..<4 { h.mix(UInt8(truncatingIfNeeded: v >> (8 * UInt32(k)))) } }
        for layer in layers {
            guard let layer else { mix(UInt32.max); continue }
            mix(UInt32(layer.rank))
            for part in [layer.bias, layer.down, layer.up] { for v in part { mix(v.bitPattern) } }
        }
        return String(format: "%016llx", h.value)
    }

    /// Whether layer l's stand-in runs on its half-precision weights (see `halfWeights`).
    public func usesHalfWeights(layer l: Int) -> Bool { halfWeights[l] != nil }

    /// Stand-ins that add nothing (every layer rank 0, zero bias): the same as plain skipping.
    public static func zero(config c: ModelConfig) -> StandIns {
        try! StandIns(dim: c.dim, eps: c.rmsNormEps,
                      layers: (0..<c.layers).map { _ in Layer(rank: 0, bias: [Float](repeating: 0, count: c.dim), down: [], up: []) })
    }

    /// The largest rank of any layer (the scratch `projected` needs this many floats).
    public var maxRank: Int { layers.compactMap { $0?.rank }.max() ?? 0 }

    /// Apply layer l's stand-in to the residual stream x [dim] (vector kernels).
    /// normed: scratch [dim]; projected: scratch [maxRank].
    @inline(__always)
    public func apply(layer l: Int, _ x: UnsafeMutablePointer<Float>, normed: UnsafeMutablePointer<Float>,
                      projected: UnsafeMutablePointer<Float>) {
        guard let s = layers[l] else { return }
        if let h = halfWeights[l] {
            return runHalf(s, h, x, normed, projected) { w, rows, cols, x, y in
                bk_matvec_half(1, w, 2 * cols, 0, Int32(rows), Int32(cols), x, y)
            }
        }
        run(s, x, normed, projected, dot: vectorDot)
    }

    /// The scalar reference twin of `apply`.
    public func applyRef(layer l: Int, _ x: UnsafeMutablePointer<Float>, normed: UnsafeMutablePointer<Float>,
                         projected: UnsafeMutablePointer<Float>) {
        guard let s = layers[l] else { return }
        run(s, x, normed, projected, dot: scalarDot)
    }

    @inline(__always)
    private func run(_ s: Layer, _ x: UnsafeMutablePointer<Float>, _ normed: UnsafeMutablePointer<Float>,
                     _ projected: UnsafeMutablePointer<Float>,
                     dot: (UnsafePointer<Float>, UnsafePointer<Float>, Int) -> Float) {
        let n = dim, r = s.rank
        let scale = 1 / (dot(x, x, n) / Float(n) + eps).squareRoot()
        for i in 0..<n { normed[i] = x[i] * scale }
        s.down.withUnsafeBufferPointer { a in
            for j in 0..<r { projected[j] = dot(a.baseAddress! + j * n, normed, n) }
        }
        s.bias.withUnsafeBufferPointer { c in
            s.up.withUnsafeBufferPointer { b in
                if r == 0 {
                    for i in 0..<n { x[i] += c[i] }
                } else {
                    for i in 0..<n { x[i] += c[i] + dot(b.baseAddress! + i * r, projected, r) }
                }
            }
        }
    }
}

extension StandIns {
    /// `run` with the vector dot over half-precision rows: the same products and the same
    /// summation order as the fp32 vector kernel (bk_matvec_half's rows use that kernel's
    /// loop with exact widening), so the numbers are those of `run(dot: vectorDot)`. `product`
    /// computes y = W·x for W [rows × cols] in half precision (on one thread or split by rows).
    @inline(__always)
    private func runHalf(_ s: Layer, _ h: (down: [UInt16], up: [UInt16]), _ x: UnsafeMutablePointer<Float>,
                         _ normed: UnsafeMutablePointer<Float>, _ projected: UnsafeMutablePointer<Float>,
                         product: (_ w: UnsafePointer<UInt16>, _ rows: Int, _ cols: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) -> Void) {
        let n = dim, r = s.rank
        let scale = 1 / (vectorDot(x, x, n) / Float(n) + eps).squareRoot()
        for i in 0..<n { normed[i] = x[i] * scale }
        h.down.withUnsafeBufferPointer { a in product(a.baseAddress!, r, n, normed, projected) }
        // B·projected into `normed`, which is no longer needed.
        h.up.withUnsafeBufferPointer { b in product(b.baseAddress!, n, r, projected, normed) }
        s.bias.withUnsafeBufferPointer { c in for i in 0..<n { x[i] += c[i] + normed[i] } }
    }

    /// `apply` with both products split by rows across `matvec`'s pool (as every decode product
    /// is; half-precision rows read the float input, so `xq` is not read): every row's dot is
    /// still computed whole by one thread with the same kernel, so the numbers are those of
    /// `apply`. Decode calls this: one token's stand-in is two small products (a rank-128 one
    /// reads 295 KB), which one core streams at about half the rate two cores draw.
    @inline(__always)
    public func apply(layer l: Int, _ x: UnsafeMutablePointer<Float>, normed: UnsafeMutablePointer<Float>,
                      projected: UnsafeMutablePointer<Float>, across matvec: MatVec, xq: Q8Activations) {
        guard let s = layers[l] else { return }
        guard let h = halfWeights[l] else { return run(s, x, normed, projected, dot: vectorDot) }
        runHalf(s, h, x, normed, projected) { w, rows, cols, x, y in
            matvec.run(QuantMatrix(name: "", type: .f16, rows: rows, cols: cols, data: UnsafeRawPointer(w)), x, xq, y)
        }
    }
}

@inline(__always) private func vectorDot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> Float { dotF32(x, y, count: n) }
@inline(__always) private func scalarDot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> Float { dotF32Ref(x, y, count: n) }

/// Why a stand-in file was refused, worded for users.
public enum StandInError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String)
    case badFile(path: String, reason: String)
    case unsupportedVersion(path: String, found: Int, supported: Int)
    case wrongModel(path: String, fileFingerprint: String, modelFingerprint: String)
    case badShape(layer: Int)
    case notFinite(layer: Int)

    public var description: String {
        switch self {
        case let .unreadable(p): return "stand-in file '\(p)': cannot read the file"
        case let .badFile(p, r): return "stand-in file '\(p)': \(r)"
        case let .unsupportedVersion(p, f, s): return "stand-in file '\(p)' has version \(f); this build reads versions 1...\(s)"
        case let .wrongModel(p, f, m): return "stand-in file '\(p)' was made for another model (fingerprint \(f), this model \(m))"
        case let .badShape(l): return "stand-in of layer \(l) has inconsistent shapes"
        case let .notFinite(l): return "stand-in of layer \(l) contains NaN or infinity"
        }
    }
}

/// Stand-in files: versioned, tied to the model's fingerprint, weights in half precision.
///
///     "BUDDYSTI"  8 bytes magic
///     u32 version, u32 header length (little-endian)
///     header: JSON {"format": "buddy-stand-ins", "model_fingerprint", "layers", "dim",
///                   "ranks": [rank per layer, -1 where none], "payload_bytes", "payload_fnv64",
///                   "notes"}
///     payload: per layer with a stand-in, bias [dim], A [rank × dim], B [dim × rank], f16
///
/// Writing is atomic (temporary file, fsync, rename): an existing file is never lost.
public enum StandInFile {
    public static let magic = Array("BUDDYSTI".utf8)
    public static let version = 1
    public static let format = "buddy-stand-ins"
    /// Where the shipped stand-ins of a model live, beside its router in `routers/`.
    public static let defaultFileName = "stand-ins.bin"
    /// Refuse absurd headers before allocating anything.
    static let maxHeaderBytes = 1 << 20

    public static func fnv64(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h = FNV1a64()
        for b in bytes { h.mix(b) }
        return h.value
    }

    public static func encode(_ s: StandIns, fingerprint: String) throws -> Data {
        var payload = [UInt16]()
        for layer in s.layers {
            guard let layer else { continue }
            for v in layer.bias { payload.append(Float16(v).bitPattern.littleEndian) }
            for v in layer.down { payload.append(Float16(v).bitPattern.littleEndian) }
            for v in layer.up { payload.append(Float16(v).bitPattern.littleEndian) }
        }
        let payloadData = payload.withUnsafeBytes { Data($0) }
        let header: [String: Any] = [
            "format": format, "model_fingerprint": fingerprint, "layers": s.layers.count, "dim": s.dim,
            "ranks": s.layers.map { $0?.rank ?? -1 }, "payload_bytes": payloadData.count,
            "payload_fnv64": String(format: "%016llx", payloadData.withUnsafeBytes { fnv64($0) }), "notes": s.notes,
        ]
        let h = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        var out = Data(magic)
        withUnsafeBytes(of: UInt32(version).littleEndian) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: UInt32(h.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(h)
        out.append(payloadData)
        return out
    }

    public static func save(_ s: StandIns, fingerprint: String, to path: String) throws {
        try AtomicFile.write(try encode(s, fingerprint: fingerprint), to: path)
    }

    public static func load(path: String, config: ModelConfig, fingerprint: String) throws -> StandIns {
        guard let data = FileManager.default.contents(atPath: path) else { throw StandInError.unreadable(path: path) }
        return try decode(data, path: path, config: config, fingerprint: fingerprint)
    }

    /// Parses and checks a stand-in file against the model: every field bounded before use.
    public static func decode(_ data: Data, path: String, config c: ModelConfig, fingerprint: String) throws -> StandIns {
        func bad(_ reason: String) -> StandInError { .badFile(path: path, reason: reason) }
        let bytes = [UInt8](data)
        guard bytes.count >= 16, Array(bytes[0..<8]) == magic else { throw bad("not a buddy stand-in file (magic)") }
        func u32(_ o: Int) -> Int { Int(bytes[o]) | Int(bytes[o + 1]) << 8 | Int(bytes[o + 2]) << 16 | Int(bytes[o + 3]) << 24 }
        let v = u32(8), headerBytes = u32(12)
        guard v >= 1 && v <= version else { throw StandInError.unsupportedVersion(path: path, found: v, supported: version) }
        guard headerBytes <= maxHeaderBytes, 16 + headerBytes <= bytes.count else { throw bad("header length \(headerBytes) exceeds the file") }
        guard let obj = try? JSONSerialization.jsonObject(with: Data(bytes[16..<16 + headerBytes])), let j = obj as? [String: Any] else {
            throw bad("header is not a JSON object")
        }
        guard j["format"] as? String == format else { throw bad("not a buddy stand-in file (format field)") }
        guard let fp = j["model_fingerprint"] as? String else { throw bad("missing model_fingerprint") }
        guard fp == fingerprint else { throw StandInError.wrongModel(path: path, fileFingerprint: fp, modelFingerprint: fingerprint) }
        guard j["layers"] as? Int == c.layers else { throw bad("layer count differs from the model's \(c.layers)") }
        guard j["dim"] as? Int == c.dim else { throw bad("width differs from the model's \(c.dim)") }
        guard let ranks = j["ranks"] as? [Int], ranks.count == c.layers else { throw bad("ranks must list one rank per layer") }
        guard ranks.allSatisfy({ $0 >= -1 && $0 <= c.dim }) else { throw bad("a rank is out of range (-1...\(c.dim))") }
        let halves = ranks.reduce(0) { $0 + ($1 < 0 ? 0 : c.dim * (1 + 2 * $1)) }
        let payloadStart = 16 + headerBytes
        guard j["payload_bytes"] as? Int == 2 * halves, bytes.count - payloadStart == 2 * halves else {
            throw bad("payload holds \(bytes.count - payloadStart) bytes; the ranks need \(2 * halves)")
        }
        let sum = bytes[payloadStart...].withUnsafeBytes { fnv64($0) }
        guard j["payload_fnv64"] as? String == String(format: "%016llx", sum) else { throw bad("payload checksum mismatch (damaged file)") }
        var offset = payloadStart
        func floats(_ n: Int) -> [Float] {
            defer { offset += 2 * n }
            return (0..<n).map { i in Float(Float16(bitPattern: UInt16(bytes[offset + 2 * i]) | UInt16(bytes[offset + 2 * i + 1]) << 8)) }
        }
        let layers: [StandIns.Layer?] = ranks.map { r in
            guard r >= 0 else { return nil }
            return StandIns.Layer(rank: r, bias: floats(c.dim), down: floats(r * c.dim), up: floats(c.dim * r))
        }
        do {
            return try StandIns(dim: c.dim, eps: c.rmsNormEps, layers: layers, notes: j["notes"] as? String ?? "")
        } catch {
            throw bad("\(error)")
        }
    }
}

/// Writes a file so that readers see either the old or the new content, never a half.
public enum AtomicFile {
    public static func write(_ data: Data, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent().path
        let tmp = dir + "/." + url.lastPathComponent + ".tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: tmp, contents: nil) else {
            throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: tmp])
        }
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: tmp))
        do {
            try h.write(contentsOf: data)
            try h.synchronize()
            try h.close()
        } catch {
            try? h.close()
            try? FileManager.default.removeItem(atPath: tmp)
            throw error
        }
        guard rename(tmp, path) == 0 else {
            let e = String(cString: strerror(errno))
            try? FileManager.default.removeItem(atPath: tmp)
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path, NSLocalizedDescriptionKey: e])
        }
    }
}

import CKernels

/// A vector quantised to 8 bits in blocks of 32, as llama.cpp quantises activations before
/// a quantised dot product (its Q8_0/Q8_1 formats): per block a scale `d` (rounded to half
/// precision, as ggml stores it) and the integer sum of the block's values, from which the
/// Q4_1/Q5_1 offset term d·Σa is formed (Q4_0/Q5_0/Q8_0 use signed weights and need no sum).
public struct Q8Activations {
    public let capacity: Int
    /// [capacity] int8 values
    public let qs: UnsafeMutablePointer<Int8>
    /// [capacity / 32] block scales
    public let d: UnsafeMutablePointer<Float>
    /// [capacity / 32] integer sums of each block's values
    public let sums: UnsafeMutablePointer<Int32>
    /// [capacity / 32] unrounded scale × sum, rounded to half (ggml Q8_1's `s`; used by Q4_1)
    public let ds: UnsafeMutablePointer<Float>
    /// The same vector as Q8_K super-blocks of 256 (what the K-quant kernels read), filled
    /// when the length is a multiple of 256: [capacity] int8 values, [capacity / 256] float
    /// scales, [capacity / 16] sums of each run of 16 values.
    public let kqs: UnsafeMutablePointer<Int8>
    public let kd: UnsafeMutablePointer<Float>
    public let kbsums: UnsafeMutablePointer<Int16>
    public private(set) var count = 0
    /// Whether kqs/kd/kbsums hold the current vector (count % 256 == 0).
    public var hasQ8K: Bool { count % 256 == 0 }

    public init(capacity: Int) {
        precondition(capacity % 32 == 0)
        self.capacity = capacity
        qs = .allocate(capacity: capacity)
        d = .allocate(capacity: capacity / 32)
        sums = .allocate(capacity: capacity / 32)
        ds = .allocate(capacity: capacity / 32)
        kqs = .allocate(capacity: capacity)
        kd = .allocate(capacity: capacity / 256)
        kbsums = .allocate(capacity: capacity / 16)
    }

    public func deallocate() {
        qs.deallocate(); d.deallocate(); sums.deallocate(); ds.deallocate()
        kqs.deallocate(); kd.deallocate(); kbsums.deallocate()
    }

    /// Quantise x[0..<n] (n a multiple of 32) with the vector kernel, and also to Q8_K when n
    /// is a multiple of 256 (a K-quant row always is).
    public mutating func quantize(_ x: UnsafePointer<Float>, count n: Int) {
        precondition(n % 32 == 0 && n <= capacity)
        count = n
        bk_quantize_q8(x, Int32(n), qs, d, sums, ds)
        if hasQ8K { bk_quantize_q8k(x, Int32(n), kqs, kd, kbsums) }
    }

    /// The scalar reference twin of `quantize`: same rounding (to nearest even), same half scale.
    public mutating func quantizeRef(_ x: UnsafePointer<Float>, count n: Int) {
        precondition(n % 32 == 0 && n <= capacity)
        count = n
        for b in 0..<n / 32 {
            var amax: Float = 0
            for j in 0..<32 { amax = Swift.max(amax, abs(x[32 * b + j])) }
            let scale = amax / 127
            let inv: Float = scale != 0 ? 1 / scale : 0
            var s: Int32 = 0
            for j in 0..<32 {
                let q = Int32((x[32 * b + j] * inv).rounded(.toNearestOrEven))
                qs[32 * b + j] = Int8(q)
                s += q
            }
            d[b] = Float(Float16(scale))
            sums[b] = s
            ds[b] = Float(Float16(scale * Float(s)))
        }
        if hasQ8K { quantizeQ8KRef(x) }
    }

    /// The scalar twin of bk_quantize_q8k: per 256 values the first one of largest magnitude
    /// maps to -127, the rest are scaled alike and rounded to nearest even.
    private func quantizeQ8KRef(_ x: UnsafePointer<Float>) {
        for b in 0..<count / 256 {
            let v = x + 256 * b, q = kqs + 256 * b
            var amax: Float = 0, peak: Float = 0
            for j in 0..<256 where abs(v[j]) > amax { amax = abs(v[j]); peak = v[j] }
            guard amax != 0 else {
                q.update(repeating: 0, count: 256)
                (kbsums + 16 * b).update(repeating: 0, count: 16)
                kd[b] = 0
                continue
            }
            let iscale = -127 / peak
            for j in 0..<256 { q[j] = Int8(Swift.min(127, Int32((iscale * v[j]).rounded(.toNearestOrEven)))) }
            for g in 0..<16 { kbsums[16 * b + g] = Int16((0..<16).reduce(Int32(0)) { $0 + Int32(q[16 * g + $1]) }) }
            kd[b] = 1 / iscale
        }
    }
}

// MARK: - Dot products of one weight row with quantised activations.
// The fast kernels live in CKernels (bk_matvec_q); these scalar twins do the same
// arithmetic block by block and are what the tests hold the fast kernels to.

/// The fast kernel for one row (tests call it against the `Ref` twins).
public func dotQuantized(_ type: GGMLType, _ row: UnsafeRawPointer, _ a: Q8Activations, cols: Int) -> Float {
    var y: Float = 0
    if type.isKQuant {
        precondition(a.hasQ8K && a.count == cols)
        bk_matvec_qk(Int32(type.rawValue), row, 0, 0, 1, Int32(cols), a.kqs, a.kd, a.kbsums, &y)
    } else {
        bk_matvec_q(Int32(type.rawValue), row, 0, 0, 1, Int32(cols), a.qs, a.d, a.sums, a.ds, &y)
    }
    return y
}

// The K-quant twins: per super-block exact integer sums, then
//   acc += (d_w·d_a)·isum - (dmin_w·d_a)·Σ_j m_j·(sum of sub-block j's activations)
// in exactly the float order of the C kernels, so all three agree bit for bit.

@inline(__always) func kTerm(_ dw: Float, _ dmw: Float, _ da: Float, _ isum: Int32, _ imin: Int32) -> Float {
    let main = (dw * da) * Float(isum)
    let off = (dmw * da) * Float(imin)
    return main - off
}

/// Q4_K (bytes 144) and Q5_K (bytes 176) on Q8_K activations.
func dotQ45KRef(_ row: UnsafeRawPointer, bytes: Int, _ a: Q8Activations, superBlocks: Int) -> Float {
    let five = bytes == QK.q5_KBytes
    var acc: Float = 0
    for b in 0..<superBlocks {
        let p = row + b * bytes
        let ql = p + (five ? 48 : 16), qh = p + 16
        var isum: Int32 = 0, imin: Int32 = 0
        for j in 0..<8 {
            let (sc, m) = kScaleMin(p + 4, j)
            var s: Int32 = 0
            for l in 0..<32 {
                let byte = ql.load(fromByteOffset: 32 * (j / 2) + l, as: UInt8.self)
                var v = Int32(j % 2 == 0 ? byte & 0x0F : byte >> 4)
                if five { v |= Int32((qh.load(fromByteOffset: l, as: UInt8.self) >> UInt8(j)) & 1) << 4 }
                s += v * Int32(a.kqs[256 * b + 32 * j + l])
            }
            isum += sc * s
            imin += m * (Int32(a.kbsums[16 * b + 2 * j]) + Int32(a.kbsums[16 * b + 2 * j + 1]))
        }
        acc += kTerm(loadHalf(p, 0), loadHalf(p, 2), a.kd[b], isum, imin)
    }
    return acc
}

public func dotQ4_KRef(_ row: UnsafeRawPointer, _ a: Q8Activations, superBlocks: Int) -> Float {
    dotQ45KRef(row, bytes: QK.q4_KBytes, a, superBlocks: superBlocks)
}

public func dotQ5_KRef(_ row: UnsafeRawPointer, _ a: Q8Activations, superBlocks: Int) -> Float {
    dotQ45KRef(row, bytes: QK.q5_KBytes, a, superBlocks: superBlocks)
}

/// Q6_K on Q8_K activations: Σ_g sc_g·Σ (q - 32)·a over the 16 runs of 16 weights.
public func dotQ6_KRef(_ row: UnsafeRawPointer, _ a: Q8Activations, superBlocks: Int) -> Float {
    var acc: Float = 0
    for b in 0..<superBlocks {
        let p = row + b * QK.q6_KBytes
        var isum: Int32 = 0
        for h in 0..<2 {
            let ql = p + 64 * h, qh = p + 128 + 32 * h
            for l in 0..<32 {
                let lo0 = ql.load(fromByteOffset: l, as: UInt8.self), lo1 = ql.load(fromByteOffset: l + 32, as: UInt8.self)
                let hb = qh.load(fromByteOffset: l, as: UInt8.self)
                let values = [lo0 & 0x0F | (hb & 3) << 4, lo1 & 0x0F | (hb >> 2 & 3) << 4,
                              lo0 >> 4 | (hb >> 4 & 3) << 4, lo1 >> 4 | (hb >> 6 & 3) << 4]
                for (k, q) in values.enumerated() {
                    let pos = 128 * h + 32 * k + l
                    let sc = Int32(p.load(fromByteOffset: 192 + pos / 16, as: Int8.self))
                    isum += sc * (Int32(q) - 32) * Int32(a.kqs[256 * b + pos])
                }
            }
        }
        acc += kTerm(loadHalf(p, 208), 0, a.kd[b], isum, 0)
    }
    return acc
}

/// Q4_1: Σ_b d_w·d_a·Σ q·a + m_w·s_a  (s_a = d_a·Σ a, in half precision as ggml keeps it)

public func dotQ4_1Ref(_ row: UnsafeRawPointer, _ a: Q8Activations, blocks: Int) -> Float {
    var acc: Float = 0
    for b in 0..<blocks {
        let p = row + b * QK.q4_1Bytes
        var isum: Int32 = 0
        for j in 0..<16 {
            let byte = p.load(fromByteOffset: 4 + j, as: UInt8.self)
            isum += Int32(byte & 0x0F) * Int32(a.qs[32 * b + j]) + Int32(byte >> 4) * Int32(a.qs[32 * b + j + 16])
        }
        let da = a.d[b]
        acc += loadHalf(p, 0) * da * Float(isum) + loadHalf(p, 2) * a.ds[b]
    }
    return acc
}

/// Q4_0: Σ_b d_w·d_a·Σ (q - 8)·a
public func dotQ4_0Ref(_ row: UnsafeRawPointer, _ a: Q8Activations, blocks: Int) -> Float {
    var acc: Float = 0
    for b in 0..<blocks {
        let p = row + b * QK.q4_0Bytes
        var isum: Int32 = 0
        for j in 0..<16 {
            let byte = p.load(fromByteOffset: 2 + j, as: UInt8.self)
            isum += (Int32(byte & 0x0F) - 8) * Int32(a.qs[32 * b + j]) + (Int32(byte >> 4) - 8) * Int32(a.qs[32 * b + j + 16])
        }
        acc += loadHalf(p, 0) * a.d[b] * Float(isum)
    }
    return acc
}

/// Σ (q - bias)·a over the 32 weights of one Q5 block (qh word at `q`) and activation block b.
@inline(__always) func q5BlockSum(_ q: UnsafeRawPointer, _ a: Q8Activations, _ b: Int, bias: Int) -> Int32 {
    var isum: Int32 = 0
    for k in 0..<32 { isum += Int32(q5Value(q, k) - bias) * Int32(a.qs[32 * b + k]) }
    return isum
}

/// Q5_0: Σ_b d_w·d_a·Σ (q - 16)·a
public func dotQ5_0Ref(_ row: UnsafeRawPointer, _ a: Q8Activations, blocks: Int) -> Float {
    var acc: Float = 0
    for b in 0..<blocks {
        let p = row + b * QK.q5_0Bytes
        acc += loadHalf(p, 0) * a.d[b] * Float(q5BlockSum(p + 2, a, b, bias: 16))
    }
    return acc
}

/// Q5_1: Σ_b d_w·d_a·Σ q·a + m_w·s_a
public func dotQ5_1Ref(_ row: UnsafeRawPointer, _ a: Q8Activations, blocks: Int) -> Float {
    var acc: Float = 0
    for b in 0..<blocks {
        let p = row + b * QK.q5_1Bytes
        acc += loadHalf(p, 0) * a.d[b] * Float(q5BlockSum(p + 4, a, b, bias: 0)) + loadHalf(p, 2) * a.ds[b]
    }
    return acc
}

/// Q8_0: Σ_b d_w·d_a·Σ q·a
public func dotQ8_0Ref(_ row: UnsafeRawPointer, _ a: Q8Activations, blocks: Int) -> Float {
    var acc: Float = 0
    for b in 0..<blocks {
        let p = row + b * QK.q8_0Bytes
        var isum: Int32 = 0
        for j in 0..<32 { isum += Int32(p.load(fromByteOffset: 2 + j, as: Int8.self)) * Int32(a.qs[32 * b + j]) }
        acc += loadHalf(p, 0) * a.d[b] * Float(isum)
    }
    return acc
}

// MARK: - Float kernels

/// Σ x[i]*y[i]
@inline(__always)
public func dotF32(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, count n: Int) -> Float {
    bk_dot_f32(x, y, Int32(n))
}

public func dotF32Ref(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, count n: Int) -> Float {
    var s: Float = 0
    for i in 0..<n { s += x[i] * y[i] }
    return s
}

/// y[i] += a * x[i]
@inline(__always)
public func axpyF32(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count n: Int) {
    bk_axpy_f32(a, x, y, Int32(n))
}

public func axpyF32Ref(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count n: Int) {
    for i in 0..<n { y[i] += a * x[i] }
}

import CKernels

/// A vector quantised to 8 bits in blocks of 32, as llama.cpp quantises activations before
/// a quantised dot product (its Q8_0/Q8_1 formats): per block a scale `d` (rounded to half
/// precision, as ggml stores it) and the integer sum of the block's values, which the Q4_1
/// kernel needs for its offset term and Q4_0 for its -8 bias.
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
    public private(set) var count = 0

    public init(capacity: Int) {
        precondition(capacity % 32 == 0)
        self.capacity = capacity
        qs = .allocate(capacity: capacity)
        d = .allocate(capacity: capacity / 32)
        sums = .allocate(capacity: capacity / 32)
        ds = .allocate(capacity: capacity / 32)
    }

    public func deallocate() { qs.deallocate(); d.deallocate(); sums.deallocate(); ds.deallocate() }

    /// Quantise x[0..<n] (n a multiple of 32) with the vector kernel.
    public mutating func quantize(_ x: UnsafePointer<Float>, count n: Int) {
        precondition(n % 32 == 0 && n <= capacity)
        count = n
        bk_quantize_q8(x, Int32(n), qs, d, sums, ds)
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
    }
}

// MARK: - Dot products of one weight row with quantised activations.
// The fast kernels live in CKernels (bk_matvec_q); these scalar twins do the same
// arithmetic block by block and are what the tests hold the fast kernels to.

/// The fast kernel for one row (tests call it against the `Ref` twins).
public func dotQuantized(_ type: GGMLType, _ row: UnsafeRawPointer, _ a: Q8Activations, cols: Int) -> Float {
    var y: Float = 0
    bk_matvec_q(Int32(type.rawValue), row, 0, 0, 1, Int32(cols), a.qs, a.d, a.sums, a.ds, &y)
    return y
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

import CKernels

/// Block layouts of the quantised weight types, as ggml stores them (little-endian):
///   Q4_0: half d; uint8 qs[16]           -> 18 bytes / 32 weights; w = d * (q - 8)
///   Q4_1: half d; half m; uint8 qs[16]   -> 20 bytes / 32 weights; w = d * q + m
///   Q5_0: half d; uint32 qh; uint8 qs[16]         -> 22 bytes / 32 weights; w = d * (q - 16)
///   Q5_1: half d; half m; uint32 qh; uint8 qs[16] -> 24 bytes / 32 weights; w = d * q + m
///   Q8_0: half d; int8 qs[32]            -> 34 bytes / 32 weights; w = d * q
/// In Q4 and Q5 blocks byte j holds weight j in its low nibble and weight j+16 in its high
/// nibble; a Q5 weight k takes bit k of the little-endian qh as its fifth (value 16) bit.
public enum QK {
    public static let block = 32
    public static let q4_0Bytes = 18
    public static let q4_1Bytes = 20
    public static let q5_0Bytes = 22
    public static let q5_1Bytes = 24
    public static let q8_0Bytes = 34
    public static let kBlock = 256
    public static let q4_KBytes = 144
    public static let q5_KBytes = 176
    public static let q6_KBytes = 210
}

@inline(__always) func loadHalf(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
    Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
}

/// Fast dequantisation of one row (vector kernel where there is one, else the reference).
@inline(__always)
public func dequantizeRow(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    if bk_dequantize_row(Int32(type.rawValue), src, dst, Int32(count)) == 0 {
        dequantizeRowRef(type, src, dst, count: count)
    }
}

/// Scalar dequantisation of `count` elements of one row. This is the reference every fast
/// kernel is tested against, and what the fp32 reference model uses.
public func dequantizeRowRef(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    switch type {
    case .f32:
        for i in 0..<count { dst[i] = src.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) }
    case .f16:
        for i in 0..<count { dst[i] = loadHalf(src, 2 * i) }
    case .bf16:
        for i in 0..<count { dst[i] = Float(bitPattern: UInt32(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16) }
    case .q4_0:
        for b in 0..<count / 32 {
            let p = src + b * QK.q4_0Bytes
            let d = loadHalf(p, 0)
            for j in 0..<16 {
                let byte = p.load(fromByteOffset: 2 + j, as: UInt8.self)
                dst[b * 32 + j] = d * Float(Int(byte & 0x0F) - 8)
                dst[b * 32 + j + 16] = d * Float(Int(byte >> 4) - 8)
            }
        }
    case .q4_1:
        for b in 0..<count / 32 {
            let p = src + b * QK.q4_1Bytes
            let d = loadHalf(p, 0), m = loadHalf(p, 2)
            for j in 0..<16 {
                let byte = p.load(fromByteOffset: 4 + j, as: UInt8.self)
                dst[b * 32 + j] = d * Float(byte & 0x0F) + m
                dst[b * 32 + j + 16] = d * Float(byte >> 4) + m
            }
        }
    case .q5_0:
        for b in 0..<count / 32 {
            let p = src + b * QK.q5_0Bytes
            let d = loadHalf(p, 0)
            for k in 0..<32 { dst[b * 32 + k] = d * Float(q5Value(p + 2, k) - 16) }
        }
    case .q5_1:
        for b in 0..<count / 32 {
            let p = src + b * QK.q5_1Bytes
            let d = loadHalf(p, 0), m = loadHalf(p, 2)
            for k in 0..<32 { dst[b * 32 + k] = d * Float(q5Value(p + 4, k)) + m }
        }
    case .q8_0:
        for b in 0..<count / 32 {
            let p = src + b * QK.q8_0Bytes
            let d = loadHalf(p, 0)
            for j in 0..<32 { dst[b * 32 + j] = d * Float(p.load(fromByteOffset: 2 + j, as: Int8.self)) }
        }
    case .q4_K:
        dequantizeQ4KRef(src, dst, count: count)
    case .q5_K:
        dequantizeQ5KRef(src, dst, count: count)
    case .q6_K:
        dequantizeQ6KRef(src, dst, count: count)
    default:
        preconditionFailure("dequantizeRowRef: unsupported type \(type) (the loader rejects it earlier)")
    }
}

/// The 5-bit value of weight k (0..<32) of a Q5_0/Q5_1 block whose qh word starts at `qh`
/// (the 16 nibble bytes follow it).
@inline(__always) func q5Value(_ qh: UnsafeRawPointer, _ k: Int) -> Int {
    let high = Int(qh.loadUnaligned(as: UInt32.self).littleEndian >> UInt32(k) & 1)
    let byte = qh.load(fromByteOffset: 4 + k % 16, as: UInt8.self)
    return Int(k < 16 ? byte & 0x0F : byte >> 4) | high << 4
}

/// Scale and min j (0..<8) of a Q4_K/Q5_K super-block: 6-bit values packed into 12 bytes.
/// Entries 0-3 are the low 6 bits of bytes j (scale) and j+4 (min); entries 4-7 take their
/// low 4 bits from byte j+4's nibbles and their top 2 bits from the spare bits of bytes j-4
/// (scale) and j (min).
@inline(__always) func kScaleMin(_ scales: UnsafeRawPointer, _ j: Int) -> (scale: Int32, min: Int32) {
    let s = { (i: Int) in Int32(scales.load(fromByteOffset: i, as: UInt8.self)) }
    if j < 4 { return (s(j) & 63, s(j + 4) & 63) }
    return ((s(j + 4) & 0x0F) | (s(j - 4) >> 6) << 4, (s(j + 4) >> 4) | (s(j) >> 6) << 4)
}

/// Q5_K: 256 weights in 8 sub-blocks of 32; half d, half dmin, 12 bytes of packed 6-bit scales
/// and mins (as Q4_K), 32 bytes of high bits, 128 bytes of nibbles. Within each 64 weights the
/// low nibbles of 32 bytes are sub-block 2g and their high nibbles sub-block 2g+1; weight l of
/// sub-block j takes bit j of qh[l] as its fifth bit. w = d * sc * q - dmin * m.
func dequantizeQ5KRef(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    for b in 0..<count / 256 {
        let p = src + b * QK.q5_KBytes
        let d = loadHalf(p, 0), dmin = loadHalf(p, 2)
        let qh = p + 16, qs = p + 48
        for j in 0..<8 {
            let (sc, m) = kScaleMin(p + 4, j)
            let q = qs + 32 * (j / 2)
            for l in 0..<32 {
                let byte = q.load(fromByteOffset: l, as: UInt8.self)
                let low = j % 2 == 0 ? byte & 0x0F : byte >> 4
                let high = (qh.load(fromByteOffset: l, as: UInt8.self) >> UInt8(j)) & 1
                dst[b * 256 + 32 * j + l] = d * Float(sc) * Float(low | high << 4) - dmin * Float(m)
            }
        }
    }
}

/// Q4_K: 256 weights in 8 sub-blocks of 32; half d, half dmin, 12 bytes of packed 6-bit
/// scales and mins, 128 bytes of nibbles. w = d * sc * q - dmin * m.
func dequantizeQ4KRef(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    for b in 0..<count / 256 {
        let p = src + b * QK.q4_KBytes
        let d = loadHalf(p, 0), dmin = loadHalf(p, 2)
        let qs = p + 16
        func scaleMin(_ j: Int) -> (Float, Float) { let (sc, m) = kScaleMin(p + 4, j); return (Float(sc), Float(m)) }
        var out = dst + b * 256
        for group in 0..<4 {  // 64 weights: 32 low nibbles then 32 high nibbles
            let (sc1, m1) = scaleMin(2 * group), (sc2, m2) = scaleMin(2 * group + 1)
            let q = qs + 32 * group
            for l in 0..<32 { out[l] = d * sc1 * Float(q.load(fromByteOffset: l, as: UInt8.self) & 0x0F) - dmin * m1 }
            for l in 0..<32 { out[32 + l] = d * sc2 * Float(q.load(fromByteOffset: l, as: UInt8.self) >> 4) - dmin * m2 }
            out += 64
        }
    }
}

/// Q6_K: 256 weights; 128 bytes low 4 bits, 64 bytes high 2 bits, 16 int8 scales, half d.
func dequantizeQ6KRef(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    for b in 0..<count / 256 {
        let p = src + b * QK.q6_KBytes
        let d = loadHalf(p, 208)
        for half in 0..<2 {
            let ql = p + 64 * half, qh = p + 128 + 32 * half, sc = p + 192 + 8 * half
            let out = dst + b * 256 + 128 * half
            for l in 0..<32 {
                let sub = l / 16
                let lo0 = ql.load(fromByteOffset: l, as: UInt8.self), lo1 = ql.load(fromByteOffset: l + 32, as: UInt8.self)
                let h = qh.load(fromByteOffset: l, as: UInt8.self)
                let q1 = Int(lo0 & 0x0F | ((h >> 0) & 3) << 4) - 32
                let q2 = Int(lo1 & 0x0F | ((h >> 2) & 3) << 4) - 32
                let q3 = Int(lo0 >> 4 | ((h >> 4) & 3) << 4) - 32
                let q4 = Int(lo1 >> 4 | ((h >> 6) & 3) << 4) - 32
                let s = { (i: Int) in Float(sc.load(fromByteOffset: i, as: Int8.self)) }
                out[l] = d * s(sub) * Float(q1)
                out[l + 32] = d * s(sub + 2) * Float(q2)
                out[l + 64] = d * s(sub + 4) * Float(q3)
                out[l + 96] = d * s(sub + 6) * Float(q4)
            }
        }
    }
}

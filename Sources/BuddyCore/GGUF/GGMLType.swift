/// Tensor element types, numbered as in ggml. Only the types with a `blockSize` are
/// readable; the rest are recognised so the error can name them.
public enum GGMLType: UInt32, Sendable, CustomStringConvertible {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30

    /// (elements per block, bytes per block) for the types this engine can compute with.
    /// Pinned against llama.cpp's layouts: Q4_0 = 18, Q4_1 = 20, Q5_0 = 22, Q5_1 = 24, Q8_0 = 34
    /// bytes per 32 weights; Q4_K = 144, Q5_K = 176 and Q6_K = 210 bytes per 256 weights.
    public var layout: (elements: Int, bytes: Int)? {
        switch self {
        case .f32: return (1, 4)
        case .f16, .bf16: return (1, 2)
        case .q4_0: return (32, 18)
        case .q4_1: return (32, 20)
        case .q5_0: return (32, 22)
        case .q5_1: return (32, 24)
        case .q8_0: return (32, 34)
        case .q4_K: return (256, 144)
        case .q5_K: return (256, 176)
        case .q6_K: return (256, 210)
        default: return nil
        }
    }

    /// The K-quants: 256-weight super-blocks whose dot products take Q8_K activations.
    public var isKQuant: Bool { self == .q4_K || self == .q5_K || self == .q6_K }

    public var description: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .q4_0: return "Q4_0"
        case .q4_1: return "Q4_1"
        case .q8_0: return "Q8_0"
        case .q4_K: return "Q4_K"
        case .q6_K: return "Q6_K"
        case .q5_0: return "Q5_0"
        case .q5_1: return "Q5_1"
        case .q8_1: return "Q8_1"
        case .q2_K: return "Q2_K"
        case .q3_K: return "Q3_K"
        case .q5_K: return "Q5_K"
        case .q8_K: return "Q8_K"
        default: return "ggml type \(rawValue)"
        }
    }
}

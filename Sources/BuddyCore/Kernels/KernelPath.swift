import CKernels

/// Which vector instructions the compute kernels use. The best the CPU has is chosen at run
/// time; a benchmark may ask for a lesser path so that one machine can show what a CPU without
/// AVX-512 (or without AVX2) would run. Every path gives the same integer sums in the quantised
/// dot products, so results agree across paths up to float summation order.
public enum KernelPath: String, CaseIterable, Sendable {
    /// The best this CPU has: AVX-512 VNNI on 256-bit vectors, else AVX2, else portable C.
    case auto
    /// AVX2 + FMA + F16C even where VNNI is present (what an AVX2-only x86-64 runs).
    case avx2
    /// Plain C, as on a CPU without AVX2.
    case portable

    /// The path the kernels take now, as a benchmark names it.
    public static var active: String {
        if bk_has_vnni() != 0 { return "AVX-512 VNNI (256-bit vectors)" }
        if bk_has_avx2() != 0 { return "AVX2" }
        return "portable C"
    }

    /// Makes the kernels take this path for the rest of the process.
    /// Throws when the CPU cannot run it (AVX2 asked of a CPU without it).
    public func apply() throws {
        bk_force_portable(0)
        bk_force_no_vnni(0)
        switch self {
        case .auto:
            break
        case .avx2:
            guard bk_has_avx2() != 0 else { throw KernelPathError.notSupported(self) }
            bk_force_no_vnni(1)
        case .portable:
            bk_force_portable(1)
        }
    }
}

public enum KernelPathError: Error, CustomStringConvertible {
    case notSupported(KernelPath)
    public var description: String {
        switch self {
        case .notSupported(let path): return "this CPU cannot run the \(path.rawValue) kernels (it has no AVX2, FMA and F16C); use --kernels auto"
        }
    }
}

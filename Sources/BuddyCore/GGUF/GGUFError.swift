/// Every way a GGUF file can be unusable. Each case names the field or tensor at fault,
/// so a user who downloaded a broken file learns what is broken, not just that something is.
public enum GGUFError: Error, CustomStringConvertible, Equatable {
    case cannotOpen(path: String, reason: String)
    case badMagic(found: UInt32)
    case unsupportedVersion(UInt32)
    case truncated(field: String, offset: Int, needed: Int, fileSize: Int)
    case sizeOverflow(field: String)
    case unknownValueType(key: String, type: UInt32)
    case unknownTensorType(tensor: String, type: UInt32)
    case invalidString(field: String)
    case duplicateKey(String)
    case duplicateTensor(String)
    case missingKey(String)
    case wrongKeyType(key: String, expected: String, found: String)
    case missingTensor(String)
    case shapeMismatch(tensor: String, expected: [Int], found: [Int])
    case badTensorType(tensor: String, type: String, reason: String)
    case badDimensions(tensor: String, dims: [Int])
    case tensorOutOfBounds(tensor: String, offset: Int, bytes: Int, fileSize: Int)
    case badAlignment(UInt32)
    case unsupportedArchitecture(String)
    case invalidValue(key: String, reason: String)

    public var description: String {
        switch self {
        case let .cannotOpen(path, reason): return "cannot open model file '\(path)': \(reason)"
        case let .badMagic(found):
            return "not a GGUF file: bad magic 0x\(String(found, radix: 16)) (expected 'GGUF')"
        case let .unsupportedVersion(v): return "unsupported GGUF version \(v) (supported: 2, 3)"
        case let .truncated(field, offset, needed, size):
            return "GGUF file truncated while reading \(field): needed \(needed) bytes at offset \(offset), file has \(size)"
        case let .sizeOverflow(field): return "GGUF size of \(field) overflows"
        case let .unknownValueType(key, type): return "GGUF metadata key '\(key)' has unknown value type \(type)"
        case let .unknownTensorType(tensor, type): return "tensor '\(tensor)' has unknown ggml type \(type)"
        case let .invalidString(field): return "GGUF string in \(field) is not valid UTF-8"
        case let .duplicateKey(k): return "GGUF metadata key '\(k)' appears twice"
        case let .duplicateTensor(t): return "tensor '\(t)' appears twice"
        case let .missingKey(k): return "GGUF is missing required metadata key '\(k)'"
        case let .wrongKeyType(key, expected, found): return "GGUF metadata key '\(key)' should be \(expected), found \(found)"
        case let .missingTensor(t): return "GGUF is missing required tensor '\(t)'"
        case let .shapeMismatch(tensor, expected, found):
            return "tensor '\(tensor)' has shape \(found), expected \(expected)"
        case let .badTensorType(tensor, type, reason): return "tensor '\(tensor)' of type \(type): \(reason)"
        case let .badDimensions(tensor, dims): return "tensor '\(tensor)' has invalid dimensions \(dims)"
        case let .tensorOutOfBounds(tensor, offset, bytes, size):
            return "tensor '\(tensor)' data (\(bytes) bytes at offset \(offset)) lies beyond the end of the file (\(size) bytes)"
        case let .badAlignment(a): return "GGUF general.alignment \(a) is not a power of two"
        case let .unsupportedArchitecture(a): return "unsupported model architecture '\(a)' (supported: llama, qwen2, gemma3)"
        case let .invalidValue(key, reason): return "GGUF metadata '\(key)': \(reason)"
        }
    }
}

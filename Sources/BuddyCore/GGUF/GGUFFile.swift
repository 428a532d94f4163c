import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A metadata value. Arrays keep their element type so an empty array still says what it is.
public indirect enum GGUFValue: Sendable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16)
    case uint32(UInt32), int32(Int32), float32(Float), bool(Bool), string(String)
    case uint64(UInt64), int64(Int64), float64(Double)
    case array(elementType: UInt32, values: [GGUFValue])

    public var typeName: String {
        switch self {
        case .uint8: return "uint8"
        case .int8: return "int8"
        case .uint16: return "uint16"
        case .int16: return "int16"
        case .uint32: return "uint32"
        case .int32: return "int32"
        case .float32: return "float32"
        case .bool: return "bool"
        case .string: return "string"
        case .uint64: return "uint64"
        case .int64: return "int64"
        case .float64: return "float64"
        case .array: return "array"
        }
    }

    /// Any integer type as Int (nil for non-integers or values that do not fit).
    public var intValue: Int? {
        switch self {
        case let .uint8(v): return Int(v)
        case let .int8(v): return Int(v)
        case let .uint16(v): return Int(v)
        case let .int16(v): return Int(v)
        case let .uint32(v): return Int(v)
        case let .int32(v): return Int(v)
        case let .uint64(v): return v <= UInt64(Int.max) ? Int(v) : nil
        case let .int64(v): return Int(v)
        case let .bool(v): return v ? 1 : 0
        default: return nil
        }
    }

    public var floatValue: Double? {
        switch self {
        case let .float32(v): return Double(v)
        case let .float64(v): return v
        default: return intValue.map(Double.init)
        }
    }

    public var stringValue: String? { if case let .string(s) = self { return s } else { return nil } }
    public var boolValue: Bool? { if case let .bool(b) = self { return b } else { return nil } }
    public var arrayValue: [GGUFValue]? { if case let .array(_, v) = self { return v } else { return nil } }
}

/// A read-only memory mapping of a whole file. Weights are used in place from the mapping.
public final class MappedFile: @unchecked Sendable {
    public let base: UnsafeRawPointer
    public let size: Int
    private let owned: Bool

    public init(path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw GGUFError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw GGUFError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw GGUFError.cannotOpen(path: path, reason: "not a regular file") }
        size = Int(st.st_size)
        guard size > 0 else { throw GGUFError.truncated(field: "magic", offset: 0, needed: 4, fileSize: 0) }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw GGUFError.cannotOpen(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(p)
        owned = true
    }

    /// Wraps bytes already in memory (tests, synthetic models). The buffer is copied.
    public init(bytes: [UInt8]) {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 64)
        bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        base = UnsafeRawPointer(p)
        size = bytes.count
        owned = false
    }

    deinit {
        if owned { munmap(UnsafeMutableRawPointer(mutating: base), size) } else { base.deallocate() }
    }
}

public struct GGUFTensorInfo: Sendable {
    public let name: String
    /// ggml order: dims[0] is the contiguous (row) length.
    public let dims: [Int]
    public let type: GGMLType
    /// Offset from the start of the file (already includes the data section start).
    public let offset: Int
    public let byteCount: Int
    public var elementCount: Int { dims.reduce(1, *) }
}

/// A parsed GGUF file (versions 2 and 3). Every read is bounds-checked; nothing is trusted.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let mapping: MappedFile
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Keys in file order (for display).
    public let metadataKeys: [String]
    public let tensors: [GGUFTensorInfo]
    public let tensorIndex: [String: Int]
    public let alignment: Int
    public let dataOffset: Int

    public convenience init(path: String) throws {
        try self.init(mapping: MappedFile(path: path), path: path)
    }

    public init(mapping: MappedFile, path: String = "<memory>") throws {
        self.path = path
        self.mapping = mapping
        var r = BoundedReader(base: mapping.base, size: mapping.size)
        let magic = try r.u32("magic")
        guard magic == 0x4655_4747 else { throw GGUFError.badMagic(found: magic) }  // "GGUF" little-endian
        version = try r.u32("version")
        guard version == 2 || version == 3 else { throw GGUFError.unsupportedVersion(version) }
        let tensorCount = try r.count("tensor_count", limit: 1 << 20)
        let kvCount = try r.count("metadata_kv_count", limit: 1 << 20)

        var meta: [String: GGUFValue] = [:]
        var keys: [String] = []
        for i in 0..<kvCount {
            let key = try r.string("metadata key #\(i)")
            let type = try r.u32("type of '\(key)'")
            let value = try r.value(type: type, key: key, depth: 0)
            guard meta[key] == nil else { throw GGUFError.duplicateKey(key) }
            meta[key] = value
            keys.append(key)
        }
        metadata = meta
        metadataKeys = keys

        var align = 32
        if let a = meta["general.alignment"] {
            guard let v = a.intValue, v > 0, v <= 1 << 16, v & (v - 1) == 0 else {
                throw GGUFError.badAlignment(UInt32(truncatingIfNeeded: a.intValue ?? 0))
            }
            align = v
        }
        alignment = align

        struct Raw { let name: String; let dims: [Int]; let type: GGMLType; let rel: Int }
        var raws: [Raw] = []
        var seen = Set<String>()
        for i in 0..<tensorCount {
            let name = try r.string("tensor #\(i) name")
            let nDims = try r.u32("dimension count of '\(name)'")
            guard nDims >= 1 && nDims <= 4 else { throw GGUFError.badDimensions(tensor: name, dims: [Int(nDims)]) }
            var dims: [Int] = []
            for d in 0..<Int(nDims) {
                let v = try r.u64("dimension \(d) of '\(name)'")
                guard v >= 1 && v <= 1 << 40 else { throw GGUFError.badDimensions(tensor: name, dims: dims + [Int(truncatingIfNeeded: v)]) }
                dims.append(Int(v))
            }
            let rawType = try r.u32("type of '\(name)'")
            guard let type = GGMLType(rawValue: rawType) else { throw GGUFError.unknownTensorType(tensor: name, type: rawType) }
            let rel = try r.u64("offset of '\(name)'")
            guard rel <= UInt64(Int.max / 2) else { throw GGUFError.sizeOverflow(field: "offset of '\(name)'") }
            guard seen.insert(name).inserted else { throw GGUFError.duplicateTensor(name) }
            raws.append(Raw(name: name, dims: dims, type: type, rel: Int(rel)))
        }
        let start = (r.offset + align - 1) / align * align
        dataOffset = start

        var infos: [GGUFTensorInfo] = []
        var index: [String: Int] = [:]
        for raw in raws {
            var bytes = 0
            if let layout = raw.type.layout {
                guard raw.dims[0] % layout.elements == 0 else {
                    throw GGUFError.badTensorType(tensor: raw.name, type: raw.type.description,
                        reason: "row length \(raw.dims[0]) is not a multiple of the block size \(layout.elements)")
                }
                var (rows, overflow) = (1, false)
                for d in raw.dims.dropFirst() {
                    (rows, overflow) = rows.multipliedReportingOverflow(by: d)
                    if overflow { throw GGUFError.sizeOverflow(field: "size of '\(raw.name)'") }
                }
                let rowBytes = raw.dims[0] / layout.elements * layout.bytes
                (bytes, overflow) = rows.multipliedReportingOverflow(by: rowBytes)
                if overflow { throw GGUFError.sizeOverflow(field: "size of '\(raw.name)'") }
            }
            guard raw.rel % align == 0 else {
                throw GGUFError.invalidValue(key: "offset of '\(raw.name)'", reason: "\(raw.rel) is not aligned to \(align)")
            }
            let (abs, o1) = start.addingReportingOverflow(raw.rel)
            let (end, o2) = abs.addingReportingOverflow(bytes)
            if o1 || o2 { throw GGUFError.sizeOverflow(field: "offset of '\(raw.name)'") }
            guard end <= mapping.size else {
                throw GGUFError.tensorOutOfBounds(tensor: raw.name, offset: abs, bytes: bytes, fileSize: mapping.size)
            }
            index[raw.name] = infos.count
            infos.append(GGUFTensorInfo(name: raw.name, dims: raw.dims, type: raw.type, offset: abs, byteCount: bytes))
        }
        tensors = infos
        tensorIndex = index
    }

    // MARK: typed metadata access with named errors

    public func value(_ key: String) throws -> GGUFValue {
        guard let v = metadata[key] else { throw GGUFError.missingKey(key) }
        return v
    }
    public func int(_ key: String) throws -> Int {
        let v = try value(key)
        guard let i = v.intValue else { throw GGUFError.wrongKeyType(key: key, expected: "integer", found: v.typeName) }
        return i
    }
    public func float(_ key: String) throws -> Double {
        let v = try value(key)
        guard let f = v.floatValue else { throw GGUFError.wrongKeyType(key: key, expected: "number", found: v.typeName) }
        return f
    }
    public func string(_ key: String) throws -> String {
        let v = try value(key)
        guard let s = v.stringValue else { throw GGUFError.wrongKeyType(key: key, expected: "string", found: v.typeName) }
        return s
    }
    public func stringArray(_ key: String) throws -> [String] {
        try array(key, of: "string") { $0.stringValue }
    }
    public func intArray(_ key: String) throws -> [Int] {
        try array(key, of: "integer") { $0.intValue }
    }
    /// Numbers of any type (float or integer arrays).
    public func floatArray(_ key: String) throws -> [Double] {
        try array(key, of: "number") { $0.floatValue }
    }
    private func array<T>(_ key: String, of element: String, _ convert: (GGUFValue) -> T?) throws -> [T] {
        let v = try value(key)
        guard let a = v.arrayValue else { throw GGUFError.wrongKeyType(key: key, expected: "array of \(element)", found: v.typeName) }
        return try a.map {
            guard let x = convert($0) else { throw GGUFError.wrongKeyType(key: key, expected: "array of \(element)", found: "array of \($0.typeName)") }
            return x
        }
    }

    public func tensor(_ name: String) throws -> GGUFTensorInfo {
        guard let i = tensorIndex[name] else { throw GGUFError.missingTensor(name) }
        return tensors[i]
    }
    public func hasTensor(_ name: String) -> Bool { tensorIndex[name] != nil }

    /// Pointer to a tensor's bytes inside the mapping; valid while this file lives.
    public func data(_ info: GGUFTensorInfo) -> UnsafeRawPointer { mapping.base + info.offset }
}

/// Cursor over untrusted bytes: every read checks the remaining length first.
struct BoundedReader {
    let base: UnsafeRawPointer
    let size: Int
    var offset = 0

    mutating func bytes(_ n: Int, _ field: @autoclosure () -> String) throws -> UnsafeRawPointer {
        guard n >= 0, n <= size - offset else {
            throw GGUFError.truncated(field: field(), offset: offset, needed: n, fileSize: size)
        }
        defer { offset += n }
        return base + offset
    }
    mutating func load<T: FixedWidthInteger>(_ t: T.Type, _ field: @autoclosure () -> String) throws -> T {
        let p = try bytes(MemoryLayout<T>.size, field())
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }
    mutating func u32(_ field: @autoclosure () -> String) throws -> UInt32 { try load(UInt32.self, field()) }
    mutating func u64(_ field: @autoclosure () -> String) throws -> UInt64 { try load(UInt64.self, field()) }
    mutating func count(_ field: String, limit: UInt64) throws -> Int {
        let v = try u64(field)
        guard v <= limit else { throw GGUFError.sizeOverflow(field: "\(field) (\(v))") }
        return Int(v)
    }
    mutating func string(_ field: @autoclosure () -> String) throws -> String {
        let n = try u64("length of \(field())")
        guard n <= UInt64(size - offset) else {
            throw GGUFError.truncated(field: field(), offset: offset, needed: Int(min(n, UInt64(Int.max))), fileSize: size)
        }
        let p = try bytes(Int(n), field())
        let buf = UnsafeRawBufferPointer(start: p, count: Int(n))
        guard let s = String(validating: buf, as: UTF8.self) else { throw GGUFError.invalidString(field: field()) }
        return s
    }

    mutating func value(type: UInt32, key: String, depth: Int) throws -> GGUFValue {
        switch type {
        case 0: return .uint8(try load(UInt8.self, key))
        case 1: return .int8(try load(Int8.self, key))
        case 2: return .uint16(try load(UInt16.self, key))
        case 3: return .int16(try load(Int16.self, key))
        case 4: return .uint32(try load(UInt32.self, key))
        case 5: return .int32(try load(Int32.self, key))
        case 6: return .float32(Float(bitPattern: try load(UInt32.self, key)))
        case 7:
            let b = try load(UInt8.self, key)
            guard b <= 1 else { throw GGUFError.invalidValue(key: key, reason: "bool byte is \(b)") }
            return .bool(b == 1)
        case 8: return .string(try string("value of '\(key)'"))
        case 9:
            guard depth < 4 else { throw GGUFError.invalidValue(key: key, reason: "arrays nested too deeply") }
            let elementType = try u32("array type of '\(key)'")
            let n = try u64("array length of '\(key)'")
            // Each element takes at least one byte, so a count beyond the file is a lie.
            guard n <= UInt64(size - offset) else { throw GGUFError.sizeOverflow(field: "array length of '\(key)' (\(n))") }
            var values: [GGUFValue] = []
            values.reserveCapacity(Int(n))
            for _ in 0..<Int(n) { values.append(try value(type: elementType, key: key, depth: depth + 1)) }
            return .array(elementType: elementType, values: values)
        case 10: return .uint64(try load(UInt64.self, key))
        case 11: return .int64(try load(Int64.self, key))
        case 12: return .float64(Double(bitPattern: try load(UInt64.self, key)))
        default: throw GGUFError.unknownValueType(key: key, type: type)
        }
    }
}

import BuddyCore
import Foundation

/// Writes small GGUF files for tests (synthetic models and deliberately corrupt files).
struct GGUFWriter {
    enum Value {
        case u32(UInt32), i32(Int32), f32(Float), bool(Bool), string(String), u64(UInt64)
        case u8(UInt8), i8(Int8), u16(UInt16), i16(Int16), i64(Int64), f64(Double)
        case strings([String]), ints([Int32]), floats([Float])
    }
    struct Tensor { var name: String; var dims: [Int]; var type: UInt32; var data: [UInt8] }

    var version: UInt32 = 3
    var metadata: [(String, Value)] = []
    var tensors: [Tensor] = []
    var alignment = 32

    mutating func set(_ key: String, _ v: Value) { metadata.append((key, v)) }

    mutating func addF32(_ name: String, dims: [Int], _ values: [Float]) {
        precondition(values.count == dims.reduce(1, *))
        var bytes: [UInt8] = []
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes.append(contentsOf: $0) } }
        tensors.append(Tensor(name: name, dims: dims, type: 0, data: bytes))
    }

    static func put<T: FixedWidthInteger>(_ v: T, _ out: inout [UInt8]) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
    static func putString(_ s: String, _ out: inout [UInt8]) { put(UInt64(s.utf8.count), &out); out.append(contentsOf: s.utf8) }

    static func putValue(_ v: Value, _ out: inout [UInt8]) {
        switch v {
        case let .u8(x): put(UInt32(0), &out); put(x, &out)
        case let .i8(x): put(UInt32(1), &out); put(x, &out)
        case let .u16(x): put(UInt32(2), &out); put(x, &out)
        case let .i16(x): put(UInt32(3), &out); put(x, &out)
        case let .u32(x): put(UInt32(4), &out); put(x, &out)
        case let .i32(x): put(UInt32(5), &out); put(x, &out)
        case let .f32(x): put(UInt32(6), &out); put(x.bitPattern, &out)
        case let .bool(x): put(UInt32(7), &out); out.append(x ? 1 : 0)
        case let .string(x): put(UInt32(8), &out); putString(x, &out)
        case let .u64(x): put(UInt32(10), &out); put(x, &out)
        case let .i64(x): put(UInt32(11), &out); put(x, &out)
        case let .f64(x): put(UInt32(12), &out); put(x.bitPattern, &out)
        case let .strings(xs):
            put(UInt32(9), &out); put(UInt32(8), &out); put(UInt64(xs.count), &out)
            for x in xs { putString(x, &out) }
        case let .ints(xs):
            put(UInt32(9), &out); put(UInt32(5), &out); put(UInt64(xs.count), &out)
            for x in xs { put(x, &out) }
        case let .floats(xs):
            put(UInt32(9), &out); put(UInt32(6), &out); put(UInt64(xs.count), &out)
            for x in xs { put(x.bitPattern, &out) }
        }
    }

    func bytes() -> [UInt8] {
        var out: [UInt8] = []
        out.append(contentsOf: Array("GGUF".utf8))
        GGUFWriter.put(version, &out)
        GGUFWriter.put(UInt64(tensors.count), &out)
        GGUFWriter.put(UInt64(metadata.count), &out)
        for (k, v) in metadata { GGUFWriter.putString(k, &out); GGUFWriter.putValue(v, &out) }
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            offsets.append(offset)
            offset += (t.data.count + alignment - 1) / alignment * alignment
        }
        for (t, off) in zip(tensors, offsets) {
            GGUFWriter.putString(t.name, &out)
            GGUFWriter.put(UInt32(t.dims.count), &out)
            for d in t.dims { GGUFWriter.put(UInt64(d), &out) }
            GGUFWriter.put(t.type, &out)
            GGUFWriter.put(UInt64(off), &out)
        }
        while out.count % alignment != 0 { out.append(0) }
        for t in tensors {
            out.append(contentsOf: t.data)
            while out.count % alignment != 0 { out.append(0) }
        }
        return out
    }

    func parse() throws -> GGUFFile { try GGUFFile(mapping: MappedFile(bytes: bytes())) }
}

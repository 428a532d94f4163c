// Incremental detokenization for streamed generation.
//
// A single token may end in the middle of a UTF-8 sequence (e.g. an emoji split
// over several byte-level tokens). The detokenizer buffers such an incomplete
// tail and only emits text made of complete characters, so every chunk is a
// valid String and the concatenation of all chunks (plus `flush()`) equals
// `tokenizer.decode(ids, includeSpecial:)`.

public struct StreamingDetokenizer: Sendable {
    public let tokenizer: any Tokenizer
    public let includeSpecial: Bool
    /// Bytes not yet emitted: at most an incomplete (but so far valid) UTF-8 sequence.
    private var pending: [UInt8] = []

    public init(tokenizer: any Tokenizer, includeSpecial: Bool = false) {
        self.tokenizer = tokenizer
        self.includeSpecial = includeSpecial
    }

    /// Number of buffered bytes waiting for the rest of their character.
    public var pendingByteCount: Int { pending.count }

    /// Feeds one token; returns the text that became complete ("" if the token ends
    /// mid-character). Byte sequences that can never become valid are emitted as U+FFFD.
    public mutating func append(_ id: Int32) -> String {
        tokenizer.appendBytes(id, includeSpecial: includeSpecial, to: &pending)
        if pending.isEmpty { return "" }
        let keep = Self.incompleteTailLength(pending)
        if keep == pending.count { return "" }
        let text: String
        if keep == 0 {
            text = String(decoding: pending, as: UTF8.self)
            pending.removeAll(keepingCapacity: true)
        } else {
            let cut = pending.count - keep
            text = String(decoding: pending[..<cut], as: UTF8.self)
            pending.removeFirst(cut)
        }
        return text
    }

    /// Returns whatever remains buffered (an incomplete sequence becomes U+FFFD) and resets.
    public mutating func flush() -> String {
        if pending.isEmpty { return "" }
        let text = String(decoding: pending, as: UTF8.self)
        pending.removeAll(keepingCapacity: true)
        return text
    }

    /// Discards buffered bytes without emitting them.
    public mutating func reset() {
        pending.removeAll(keepingCapacity: true)
    }

    /// Length of the trailing bytes that form a valid but incomplete UTF-8 sequence
    /// (a prefix that more bytes could complete), or 0.
    static func incompleteTailLength(_ bytes: [UInt8]) -> Int {
        let n = bytes.count
        // Find the last lead byte within the final 3 bytes.
        var i = n - 1
        let lowest = max(0, n - 3)
        while i >= lowest && bytes[i] & 0xC0 == 0x80 { i -= 1 }
        if i < lowest { return 0 }  // no lead byte close enough: nothing can complete
        let lead = bytes[i]
        let need: Int
        switch lead {
        case 0xC2...0xDF: need = 2
        case 0xE0...0xEF: need = 3
        case 0xF0...0xF4: need = 4
        default: return 0  // ASCII or a byte that can never start a valid sequence
        }
        let have = n - i
        if have >= need { return 0 }  // complete (or invalid): decodable now
        // The continuation bytes present must be valid for this lead (RFC 3629 ranges).
        if have >= 2 {
            let b1 = bytes[i + 1]
            let ok: Bool
            switch lead {
            case 0xE0: ok = (0xA0...0xBF).contains(b1)
            case 0xED: ok = (0x80...0x9F).contains(b1)
            case 0xF0: ok = (0x90...0xBF).contains(b1)
            case 0xF4: ok = (0x80...0x8F).contains(b1)
            default: ok = (0x80...0xBF).contains(b1)
            }
            if !ok { return 0 }
        }
        return have
    }
}

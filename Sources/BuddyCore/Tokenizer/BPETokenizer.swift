// Byte-level BPE tokenizer for GGUF vocabularies of model type "gpt2".
//
// Matches llama.cpp's `llama_tokenize(..., add_special = false, parse_special)`:
//   1. special-token partitioning (`tokenizer_st_partition`),
//   2. pre-tokenization (see PreTokenizer.swift),
//   3. GPT-2 byte-to-unicode mapping of each word,
//   4. BPE merges (lowest merge rank first, ties broken by leftmost position),
//   5. mapping of the final symbols to ids, with llama.cpp's fallback for
//      symbols missing from the vocabulary.

/// GGUF `tokenizer.ggml.token_type` values.
public enum TokenType: Int32, Sendable {
    case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
}

public struct TokenizerError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

public final class BPETokenizer: Sendable {
    public let bosID: Int32?
    public let eosID: Int32?
    public let addBOS: Bool

    /// Token strings as stored in the vocabulary (byte-level mapped).
    let tokens: [String]
    let tokenTypes: [TokenType]
    /// Exact vocabulary lookup. For duplicate strings the highest id wins (as in llama.cpp).
    let tokenToID: [String: Int32]
    let preTokenizer: PreTokenizer

    /// BPE symbols are identified by Int32: vocabulary ids, or ids >= vocabularySize
    /// for strings that take part in merges but are not vocabulary entries
    /// (their text is `extraSymbols[id - vocabularySize]`).
    let extraSymbols: [String]
    /// Merge table: key = (left symbol << 32 | right symbol), value = (rank << 32 | merged symbol).
    let merges: [UInt64: UInt64]
    /// Initial symbol of each byte value (the symbol of its bytes_to_unicode character).
    let byteSymbols: [Int32]

    /// Special tokens considered by the partitioner, longest text first.
    let specialTokens: [SpecialToken]
    let hasUserDefinedSpecials: Bool

    /// Decoded bytes of every token (control/user-defined: raw text; normal: inverse
    /// byte mapping; undefined/unused: nothing), flattened.
    let pieceBytes: [UInt8]
    let pieceOffsets: [Int]

    struct SpecialToken: Sendable {
        let id: Int32
        let bytes: [UInt8]
        /// CONTROL or UNKNOWN: only partitioned when parseSpecial is true.
        let onlyWhenParsingSpecial: Bool
    }

    public var vocabularySize: Int { tokens.count }

    public init(tokens: [String], tokenTypes: [TokenType], merges: [String], model: String, pre: String,
                bosID: Int32?, eosID: Int32?, addBOS: Bool) throws {
        guard model == "gpt2" else {
            throw TokenizerError(description: "unsupported tokenizer model '\(model)' (only byte-level BPE 'gpt2' is supported)")
        }
        guard !tokens.isEmpty else { throw TokenizerError(description: "empty vocabulary") }
        guard tokens.count < Int(Int32.max) / 2 else { throw TokenizerError(description: "vocabulary too large") }
        guard tokenTypes.isEmpty || tokenTypes.count == tokens.count else {
            throw TokenizerError(description: "token type count \(tokenTypes.count) does not match token count \(tokens.count)")
        }
        for (label, id) in [("BOS", bosID), ("EOS", eosID)] {
            if let id, id < 0 || Int(id) >= tokens.count {
                throw TokenizerError(description: "\(label) id \(id) out of range 0..<\(tokens.count)")
            }
        }
        self.preTokenizer = try PreTokenizer(name: pre)
        self.bosID = bosID
        self.eosID = eosID
        self.addBOS = addBOS

        let n = tokens.count
        // llama.cpp replaces empty token texts with "[EMPTY_<id>]".
        var texts = tokens
        for i in 0..<n where texts[i].isEmpty { texts[i] = "[EMPTY_\(i)]" }
        let types = tokenTypes.isEmpty ? [TokenType](repeating: .normal, count: n) : tokenTypes
        self.tokens = texts
        self.tokenTypes = types

        var toID = [String: Int32](minimumCapacity: n)
        for i in 0..<n { toID[texts[i]] = Int32(i) }
        self.tokenToID = toID

        // Symbol interning: vocabulary strings keep their id, others get ids past the vocabulary.
        var extras: [String] = []
        var extraIDs: [String: Int32] = [:]
        func intern(_ s: String) -> Int32 {
            if let id = toID[s] { return id }
            if let id = extraIDs[s] { return id }
            let id = Int32(n + extras.count)
            extras.append(s)
            extraIDs[s] = id
            return id
        }

        let byteChars = ByteLevel.byteToScalar
        self.byteSymbols = (0..<256).map { intern(String(Character(byteChars[$0]))) }

        var table = [UInt64: UInt64](minimumCapacity: merges.count)
        for (rank, line) in merges.enumerated() {
            // Split at the first space after the first byte (llama.cpp: word.find(' ', 1)).
            let utf8 = line.utf8
            guard !utf8.isEmpty,
                  let sp = utf8[utf8.index(after: utf8.startIndex)...].firstIndex(of: 0x20) else {
                throw TokenizerError(description: "bad merge line \(rank): '\(line)'")
            }
            let left = String(line[..<sp])
            let right = String(line[utf8.index(after: sp)...])
            let l = intern(left), r = intern(right)
            let key = UInt64(UInt32(bitPattern: l)) << 32 | UInt64(UInt32(bitPattern: r))
            if table[key] == nil {  // first (highest priority) occurrence wins
                let merged = intern(left + right)
                table[key] = UInt64(rank) << 32 | UInt64(UInt32(bitPattern: merged))
            }
        }
        self.merges = table
        self.extraSymbols = extras

        // Special tokens, longest first (stable by id for equal lengths).
        var specials: [SpecialToken] = []
        for i in 0..<n {
            switch types[i] {
            case .control, .unknown:
                specials.append(SpecialToken(id: Int32(i), bytes: Array(texts[i].utf8), onlyWhenParsingSpecial: true))
            case .userDefined:
                specials.append(SpecialToken(id: Int32(i), bytes: Array(texts[i].utf8), onlyWhenParsingSpecial: false))
            default:
                break
            }
        }
        specials.sort { a, b in a.bytes.count != b.bytes.count ? a.bytes.count > b.bytes.count : a.id < b.id }
        self.specialTokens = specials
        self.hasUserDefinedSpecials = specials.contains { !$0.onlyWhenParsingSpecial }

        // Decoded pieces.
        var bytes: [UInt8] = []
        bytes.reserveCapacity(n * 6)
        var offsets = [Int]()
        offsets.reserveCapacity(n + 1)
        offsets.append(0)
        for i in 0..<n {
            let text = texts[i]
            switch types[i] {
            case .control, .unknown, .userDefined:
                bytes.append(contentsOf: text.utf8)
            case .normal:
                ByteLevel.decode(text, into: &bytes)
            case .byte:
                if let b = ByteLevel.parseByteToken(text) { bytes.append(b) } else { ByteLevel.decode(text, into: &bytes) }
            case .undefined, .unused:
                break
            }
            offsets.append(bytes.count)
        }
        self.pieceBytes = bytes
        self.pieceOffsets = offsets
    }

    // MARK: - Lookup

    public func tokenID(_ piece: String) -> Int32? { tokenToID[piece] }

    public func isControl(_ id: Int32) -> Bool {
        id >= 0 && Int(id) < tokenTypes.count && tokenTypes[Int(id)] == .control
    }

    /// Token type of `id`, or nil when out of range.
    public func tokenType(_ id: Int32) -> TokenType? {
        id >= 0 && Int(id) < tokenTypes.count ? tokenTypes[Int(id)] : nil
    }

    /// The vocabulary string of `id` (byte-level mapped form), or nil when out of range.
    public func tokenText(_ id: Int32) -> String? {
        id >= 0 && Int(id) < tokens.count ? tokens[Int(id)] : nil
    }

    // MARK: - Decoding

    public func decodeBytes(_ id: Int32) -> [UInt8] { decodeBytes(id, includeSpecial: false) }

    /// Whether a lone byte has a token. Some vocabularies (SmolLM2's among them) lack a few
    /// byte tokens (rare control characters, lead bytes of unassigned planes); such bytes
    /// are dropped by encoding, exactly as llama.cpp drops them.
    public func hasByteToken(_ b: UInt8) -> Bool {
        tokenToID[String(Character(ByteLevel.byteToScalar[Int(b)]))] != nil
    }

    /// Raw bytes of one token, like llama.cpp's `token_to_piece`: control and unknown
    /// tokens produce their text only when `includeSpecial`; user-defined tokens
    /// always produce their text; undefined/unused tokens produce nothing.
    public func decodeBytes(_ id: Int32, includeSpecial: Bool) -> [UInt8] {
        guard id >= 0, Int(id) < tokens.count else { return [] }
        let i = Int(id)
        if !includeSpecial {
            let t = tokenTypes[i]
            if t == .control || t == .unknown { return [] }
        }
        return Array(pieceBytes[pieceOffsets[i]..<pieceOffsets[i + 1]])
    }

    /// Appends the bytes of `id` to `out` (no intermediate array).
    func appendBytes(_ id: Int32, includeSpecial: Bool, to out: inout [UInt8]) {
        guard id >= 0, Int(id) < tokens.count else { return }
        let i = Int(id)
        if !includeSpecial {
            let t = tokenTypes[i]
            if t == .control || t == .unknown { return }
        }
        out.append(contentsOf: pieceBytes[pieceOffsets[i]..<pieceOffsets[i + 1]])
    }

    /// Concatenates the bytes of all tokens and converts them to a String once, at the
    /// end (invalid UTF-8 becomes U+FFFD).
    public func decode(_ ids: [Int32], includeSpecial: Bool = false) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        for id in ids { appendBytes(id, includeSpecial: includeSpecial, to: &bytes) }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: - Encoding

    private enum Fragment {
        case raw(start: Int, count: Int)
        case token(Int32)
    }

    /// Tokenizes `text` like llama.cpp with add_special = false (no BOS is added).
    /// With `parseSpecial`, the literal text of control tokens becomes those tokens;
    /// user-defined tokens are always matched.
    public func encode(_ text: String, parseSpecial: Bool) -> [Int32] {
        let utf8 = Array(text.utf8)
        if utf8.isEmpty { return [] }
        var out: [Int32] = []
        out.reserveCapacity(utf8.count / 3 + 4)
        utf8.withUnsafeBufferPointer { bytes in
            var scratch = Scratch()
            for fragment in partition(bytes, parseSpecial: parseSpecial) {
                switch fragment {
                case .token(let id):
                    out.append(id)
                case .raw(let start, let count):
                    encodeFragment(UnsafeBufferPointer(rebasing: bytes[start..<start + count]), &scratch, &out)
                }
            }
        }
        return out
    }

    /// Splits the text on special tokens, processing one special token at a time in
    /// order of decreasing length over all remaining raw fragments (llama.cpp's order).
    private func partition(_ bytes: UnsafeBufferPointer<UInt8>, parseSpecial: Bool) -> [Fragment] {
        var fragments: [Fragment] = [.raw(start: 0, count: bytes.count)]
        if !parseSpecial && !hasUserDefinedSpecials { return fragments }
        var next: [Fragment] = []
        for special in specialTokens {
            if special.onlyWhenParsingSpecial && !parseSpecial { continue }
            let needle = special.bytes
            if needle.isEmpty { continue }
            var changed = false
            next.removeAll(keepingCapacity: true)
            for fragment in fragments {
                guard case .raw(var start, var count) = fragment else {
                    next.append(fragment)
                    continue
                }
                while count >= needle.count, let m = Self.find(needle, in: bytes, from: start, to: start + count) {
                    changed = true
                    if m > start { next.append(.raw(start: start, count: m - start)) }
                    next.append(.token(special.id))
                    let end = m + needle.count
                    count = start + count - end
                    start = end
                }
                if count > 0 { next.append(.raw(start: start, count: count)) }
            }
            if changed { swap(&fragments, &next) }
        }
        return fragments
    }

    private static func find(_ needle: [UInt8], in hay: UnsafeBufferPointer<UInt8>, from: Int, to: Int) -> Int? {
        let m = needle.count
        guard m > 0, to - from >= m else { return nil }
        let first = needle[0]
        var i = from
        let last = to - m
        while i <= last {
            if hay[i] == first {
                var j = 1
                while j < m && hay[i + j] == needle[j] { j += 1 }
                if j == m { return i }
            }
            i += 1
        }
        return nil
    }

    /// Reusable buffers for one encode call.
    private struct Scratch {
        var cps: [UInt32] = []
        var classes: [UInt8] = []
        var byteOffsets: [Int] = []
        var symbols: [Int32] = []
        var prev: [Int32] = []
        var next: [Int32] = []
        var heap = MergeHeap()
    }

    private func encodeFragment(_ bytes: UnsafeBufferPointer<UInt8>, _ s: inout Scratch, _ out: inout [Int32]) {
        // Decode UTF-8 (valid: it comes from a Swift String, split at character boundaries).
        s.cps.removeAll(keepingCapacity: true)
        s.classes.removeAll(keepingCapacity: true)
        s.byteOffsets.removeAll(keepingCapacity: true)
        var i = 0
        let n = bytes.count
        while i < n {
            let b0 = UInt32(bytes[i])
            s.byteOffsets.append(i)
            var cp: UInt32
            var len: Int
            if b0 < 0x80 {
                cp = b0; len = 1
            } else if b0 < 0xE0 {
                cp = b0 & 0x1F; len = 2
            } else if b0 < 0xF0 {
                cp = b0 & 0x0F; len = 3
            } else {
                cp = b0 & 0x07; len = 4
            }
            if i + len > n { len = n - i }  // cannot happen for valid input
            var k = 1
            while k < len { cp = cp << 6 | UInt32(bytes[i + k] & 0x3F); k += 1 }
            s.cps.append(cp)
            s.classes.append(CodePointClass.of(cp))
            i += len
        }
        s.byteOffsets.append(n)

        let lengths = s.cps.withUnsafeBufferPointer { cps in
            s.classes.withUnsafeBufferPointer { cls in preTokenizer.split(cps, cls) }
        }
        var start = 0
        for len in lengths {
            let lo = s.byteOffsets[start], hi = s.byteOffsets[start + len]
            encodeWord(UnsafeBufferPointer(rebasing: bytes[lo..<hi]), &s, &out)
            start += len
        }
    }

    /// BPE-encodes one pre-tokenized word (raw bytes).
    private func encodeWord(_ word: UnsafeBufferPointer<UInt8>, _ s: inout Scratch, _ out: inout [Int32]) {
        let n = word.count
        if n == 0 { return }
        if preTokenizer.ignoreMerges {
            var mapped = String.UnicodeScalarView()
            for b in word { mapped.append(ByteLevel.byteToScalar[Int(b)]) }
            if let id = tokenToID[String(mapped)] {
                out.append(id)
                return
            }
        }
        if n == 1 {
            emit(byteSymbols[Int(word[0])], &out)
            return
        }

        s.symbols.removeAll(keepingCapacity: true)
        s.prev.removeAll(keepingCapacity: true)
        s.next.removeAll(keepingCapacity: true)
        for k in 0..<n {
            s.symbols.append(byteSymbols[Int(word[k])])
            s.prev.append(Int32(k - 1))
            s.next.append(k + 1 < n ? Int32(k + 1) : -1)
        }
        s.heap.removeAll()
        for k in 1..<n { addBigram(Int32(k - 1), Int32(k), &s) }

        let dead = Int32.min
        while let bg = s.heap.popMin() {
            let l = Int(bg.left), r = Int(bg.right)
            // Skip outdated bigrams: either side merged away or changed since it was queued.
            if s.symbols[l] != bg.leftSymbol || s.symbols[r] != bg.rightSymbol { continue }
            s.symbols[l] = bg.merged
            s.symbols[r] = dead
            let rn = s.next[r]
            s.next[l] = rn
            if rn >= 0 { s.prev[Int(rn)] = bg.left }
            let lp = s.prev[l]
            if lp >= 0 { addBigram(lp, bg.left, &s) }
            if rn >= 0 { addBigram(bg.left, rn, &s) }
        }

        var k: Int32 = 0
        while k >= 0 {
            emit(s.symbols[Int(k)], &out)
            k = s.next[Int(k)]
        }
    }

    @inline(__always)
    private func addBigram(_ left: Int32, _ right: Int32, _ s: inout Scratch) {
        let ls = s.symbols[Int(left)], rs = s.symbols[Int(right)]
        let key = UInt64(UInt32(bitPattern: ls)) << 32 | UInt64(UInt32(bitPattern: rs))
        guard let v = merges[key] else { return }
        let rank = UInt32(truncatingIfNeeded: v >> 32)
        let merged = Int32(bitPattern: UInt32(truncatingIfNeeded: v))
        s.heap.push(MergeHeap.Entry(order: UInt64(rank) << 32 | UInt64(UInt32(bitPattern: left)),
                                    left: left, right: right, leftSymbol: ls, rightSymbol: rs, merged: merged))
    }

    /// Appends the id of a final symbol. Symbols that are not vocabulary entries fall
    /// back, as in llama.cpp, to looking up each byte of their (mapped) text as a
    /// one-byte token; only ASCII bytes can match, others are dropped.
    @inline(__always)
    private func emit(_ symbol: Int32, _ out: inout [Int32]) {
        if Int(symbol) < tokens.count {
            out.append(symbol)
            return
        }
        for b in extraSymbols[Int(symbol) - tokens.count].utf8 where b < 0x80 {
            if let id = tokenToID[String(UnicodeScalar(b))] { out.append(id) }
        }
    }
}

/// Binary min-heap of candidate merges ordered by (rank, left position).
struct MergeHeap {
    struct Entry {
        var order: UInt64     // rank << 32 | left index
        var left: Int32
        var right: Int32
        var leftSymbol: Int32
        var rightSymbol: Int32
        var merged: Int32
    }

    private var items: [Entry] = []

    mutating func removeAll() { items.removeAll(keepingCapacity: true) }

    mutating func push(_ e: Entry) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) >> 1
            if items[p].order <= e.order { break }
            items[i] = items[p]
            i = p
        }
        items[i] = e
    }

    mutating func popMin() -> Entry? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            var i = 0
            let count = items.count
            while true {
                let l = 2 * i + 1
                if l >= count { break }
                let r = l + 1
                let c = (r < count && items[r].order < items[l].order) ? r : l
                if items[c].order >= last.order { break }
                items[i] = items[c]
                i = c
            }
            items[i] = last
        }
        return top
    }
}

/// GPT-2's reversible byte <-> unicode mapping.
enum ByteLevel {
    /// bytes_to_unicode: printable Latin-1 bytes map to themselves, the rest to U+0100 onwards.
    static let byteToScalar: [Unicode.Scalar] = {
        var map = [UInt32](repeating: 0, count: 256)
        var assigned = [Bool](repeating: false, count: 256)
        for b in 0x21...0x7E { map[b] = UInt32(b); assigned[b] = true }
        for b in 0xA1...0xAC { map[b] = UInt32(b); assigned[b] = true }
        for b in 0xAE...0xFF { map[b] = UInt32(b); assigned[b] = true }
        var n: UInt32 = 0
        for b in 0..<256 where !assigned[b] {
            map[b] = 256 + n
            n += 1
        }
        return map.map { Unicode.Scalar($0)! }
    }()

    /// Inverse mapping indexed by scalar value (< 324); -1 where unmapped.
    static let scalarToByte: [Int16] = {
        var inv = [Int16](repeating: -1, count: 324)
        for (b, s) in byteToScalar.enumerated() { inv[Int(s.value)] = Int16(b) }
        return inv
    }()

    /// llama.cpp's `llama_decode_text`: maps each character back to its byte; a character
    /// outside the mapping produces "[UNK_BYTE_0x<hex>" + token text + "]".
    static func decode(_ text: String, into out: inout [UInt8]) {
        let inv = scalarToByte
        for scalar in text.unicodeScalars {
            let v = Int(scalar.value)
            if v < inv.count, inv[v] >= 0 {
                out.append(UInt8(inv[v]))
            } else {
                let hex = Array("0123456789abcdef".utf8)
                out.append(contentsOf: "[UNK_BYTE_0x".utf8)
                for b in String(scalar).utf8 {
                    out.append(hex[Int(b >> 4)])
                    out.append(hex[Int(b & 15)])
                }
                out.append(contentsOf: text.utf8)
                out.append(UInt8(ascii: "]"))
            }
        }
    }

    /// "<0xHH>" -> byte value.
    static func parseByteToken(_ text: String) -> UInt8? {
        let u = Array(text.utf8)
        guard u.count == 6, u[0] == UInt8(ascii: "<"), u[1] == UInt8(ascii: "0"), u[2] == UInt8(ascii: "x"),
              u[5] == UInt8(ascii: ">") else { return nil }
        return UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16)
    }
}

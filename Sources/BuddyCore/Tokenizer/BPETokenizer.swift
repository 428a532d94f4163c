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

public final class BPETokenizer: Tokenizer {
    public let bosID: Int32?
    public let eosID: Int32?
    public let addBOS: Bool

    /// Token strings as stored in the vocabulary (byte-level mapped), types and decoded bytes
    /// (control/user-defined: raw text; normal: inverse byte mapping; undefined/unused: nothing).
    let pieces: TokenPieces
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

    /// Special tokens considered by the partitioner.
    let specialTokens: SpecialTokenSet

    public var vocabularySize: Int { pieces.count }
    public var removesLeadingSpace: Bool { false }

    public init(tokens: [String], tokenTypes: [TokenType], merges: [String], model: String, pre: String,
                bosID: Int32?, eosID: Int32?, addBOS: Bool) throws {
        guard model == "gpt2" else {
            throw TokenizerError(description: "unsupported tokenizer model '\(model)' (only byte-level BPE 'gpt2' is supported)")
        }
        let pieces = try TokenPieces(tokens: tokens, types: tokenTypes, bosID: bosID, eosID: eosID,
                                     decodeNormal: ByteLevel.decode)
        self.pieces = pieces
        self.preTokenizer = try PreTokenizer(name: pre)
        self.bosID = bosID
        self.eosID = eosID
        self.addBOS = addBOS

        let n = pieces.count
        let texts = pieces.texts

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

        self.specialTokens = SpecialTokenSet(texts: texts, types: pieces.types)
    }

    // MARK: - Lookup

    public func tokenID(_ piece: String) -> Int32? { tokenToID[piece] }

    /// Token type of `id`, or nil when out of range.
    public func tokenType(_ id: Int32) -> TokenType? { pieces.type(id) }

    /// The vocabulary string of `id` (byte-level mapped form), or nil when out of range.
    public func tokenText(_ id: Int32) -> String? { pieces.text(id) }

    // MARK: - Decoding

    /// Whether a lone byte has a token. Some vocabularies (SmolLM2's among them) lack a few
    /// byte tokens (rare control characters, lead bytes of unassigned planes); such bytes
    /// are dropped by encoding, exactly as llama.cpp drops them.
    public func hasByteToken(_ b: UInt8) -> Bool {
        tokenToID[String(Character(ByteLevel.byteToScalar[Int(b)]))] != nil
    }

    /// Appends the bytes of `id` to `out`, like llama.cpp's `token_to_piece`: control and
    /// unknown tokens produce their text only when `includeSpecial`; user-defined tokens always
    /// produce their text; undefined/unused tokens produce nothing.
    public func appendBytes(_ id: Int32, includeSpecial: Bool, to out: inout [UInt8]) {
        pieces.append(id, includeSpecial: includeSpecial, to: &out)
    }

    // MARK: - Encoding

    /// Tokenizes `text` like llama.cpp with add_special = false (no BOS is added).
    /// With `parseSpecial`, the literal text of control tokens becomes those tokens;
    /// user-defined tokens are always matched.
    public func encode(_ text: String, parseSpecial: Bool) -> [Int32] {
        var scratch = Scratch()
        return specialTokens.encode(text, parseSpecial: parseSpecial) { raw, _, out in
            encodeFragment(raw, &scratch, &out)
        }
    }

    /// Reusable buffers for one encode call.
    private struct Scratch {
        var cps: [UInt32] = []
        var classes: [UInt8] = []
        var byteOffsets: [Int] = []
        var symbols: [Int32] = []
        var prev: [Int32] = []
        var next: [Int32] = []
        var heap = MinHeap<BPEMerge>()
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
        s.heap.push(UInt64(rank) << 32 | UInt64(UInt32(bitPattern: left)),
                    BPEMerge(left: left, right: right, leftSymbol: ls, rightSymbol: rs, merged: merged))
    }

    /// Appends the id of a final symbol. Symbols that are not vocabulary entries fall
    /// back, as in llama.cpp, to looking up each byte of their (mapped) text as a
    /// one-byte token; only ASCII bytes can match, others are dropped.
    @inline(__always)
    private func emit(_ symbol: Int32, _ out: inout [Int32]) {
        if Int(symbol) < pieces.count {
            out.append(symbol)
            return
        }
        for b in extraSymbols[Int(symbol) - pieces.count].utf8 where b < 0x80 {
            if let id = tokenToID[String(UnicodeScalar(b))] { out.append(id) }
        }
    }
}

/// A candidate BPE merge (queued by rank, then left position).
struct BPEMerge {
    var left: Int32
    var right: Int32
    var leftSymbol: Int32
    var rightSymbol: Int32
    var merged: Int32
}

/// Binary min-heap of elements ordered by a UInt64 key (candidate merges of both tokenizers).
struct MinHeap<Element> {
    private var items: [(key: UInt64, value: Element)] = []

    mutating func removeAll() { items.removeAll(keepingCapacity: true) }

    mutating func push(_ key: UInt64, _ value: Element) {
        let e = (key: key, value: value)
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) >> 1
            if items[p].key <= key { break }
            items[i] = items[p]
            i = p
        }
        items[i] = e
    }

    mutating func popMin() -> Element? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            var i = 0
            let count = items.count
            while true {
                let l = 2 * i + 1
                if l >= count { break }
                let r = l + 1
                let c = (r < count && items[r].key < items[l].key) ? r : l
                if items[c].key >= last.key { break }
                items[i] = items[c]
                i = c
            }
            items[i] = last
        }
        return top.value
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

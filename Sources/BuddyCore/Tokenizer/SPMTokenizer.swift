// SentencePiece-style tokenizer for GGUF vocabularies of model type "llama" (Gemma 3's
// 262,144 pieces among them).
//
// Matches llama.cpp's `llama_tokenize(..., add_special = false, parse_special)` for SPM
// vocabularies:
//   1. special-token partitioning (shared with BPE, see SpecialTokens.swift),
//   2. per raw fragment: a space in front when `add_space_prefix` is set and a special token
//      (or the start of the text) precedes it, then every " " replaced by "▁" (U+2581),
//   3. the fragment split into UTF-8 characters, then the adjacent pair whose concatenation
//      is the vocabulary piece with the highest score merged first (ties: leftmost), again and
//      again until no adjacent pair forms a piece,
//   4. each final symbol mapped to its id; a character that is not a piece falls back to its
//      bytes' <0xNN> tokens.
// Decoding turns "▁" back into spaces and byte tokens into their byte.

public final class SPMTokenizer: Tokenizer {
    public let bosID: Int32?
    public let eosID: Int32?
    public let addBOS: Bool
    /// `tokenizer.ggml.add_space_prefix` (llama.cpp's default for SPM is true; Gemma's file says false).
    public let addSpacePrefix: Bool
    public var removesLeadingSpace: Bool { addSpacePrefix }

    /// Vocabulary texts as stored in the file, types and decoded bytes.
    let pieces: TokenPieces
    let scores: [Float]
    /// Exact lookup of a piece's UTF-8 bytes.
    let index: PieceIndex
    /// Token of each byte value: its <0xNN> piece, else the one-byte piece, else -1.
    let byteTokens: [Int32]
    let specialTokens: SpecialTokenSet

    public var vocabularySize: Int { pieces.count }

    /// Builds the tokenizer from `tokenizer.ggml.*` metadata. Missing keys take llama.cpp's
    /// defaults for SPM: BOS 1, EOS 2 (when in range), add BOS, add a space prefix.
    public init(_ v: GGUFVocabulary) throws {
        guard v.model == "llama" else {
            throw TokenizerError(description: "unsupported tokenizer model '\(v.model)' for SentencePiece (expected 'llama')")
        }
        let pieces = try TokenPieces(tokens: v.tokens, types: v.tokenTypes, bosID: v.bosID, eosID: v.eosID,
                                     decodeNormal: { Self.unescapeWhitespace($0, into: &$1) })
        self.pieces = pieces
        let n = pieces.count
        guard v.scores.isEmpty || v.scores.count == n else {
            throw TokenizerError(description: "score count \(v.scores.count) does not match token count \(n)")
        }
        bosID = v.bosID ?? (n > 1 ? 1 : nil)
        eosID = v.eosID ?? (n > 2 ? 2 : nil)
        addBOS = v.addBOS ?? true
        addSpacePrefix = v.addSpacePrefix ?? true

        scores = v.scores.isEmpty ? [Float](repeating: 0, count: n) : v.scores
        let index = PieceIndex(pieces.texts)
        self.index = index

        let hex = Array("0123456789ABCDEF".utf8)
        byteTokens = (0..<256).map { b in
            let name: [UInt8] = [0x3C, 0x30, 0x78, hex[b >> 4], hex[b & 15], 0x3E]  // "<0xNN>"
            return index.lookup(name) ?? index.lookup([UInt8(b)]) ?? -1
        }
        specialTokens = SpecialTokenSet(texts: pieces.texts, types: pieces.types)
    }

    /// Builds the SentencePiece tokenizer a GGUF file describes.
    public convenience init(gguf: GGUFFile) throws {
        try self.init(GGUFVocabulary(gguf: gguf))
    }

    /// "▁" (E2 96 81) -> " ".
    private static func unescapeWhitespace(_ text: String, into out: inout [UInt8]) {
        var text = text
        text.withUTF8 { unescapeWhitespace($0, into: &out) }
    }

    private static func unescapeWhitespace(_ u: UnsafeBufferPointer<UInt8>, into out: inout [UInt8]) {
        var i = 0
        while i < u.count {
            if u[i] == 0xE2, i + 2 < u.count, u[i + 1] == 0x96, u[i + 2] == 0x81 {
                out.append(0x20)
                i += 3
            } else {
                out.append(u[i])
                i += 1
            }
        }
    }

    // MARK: - Lookup

    public func tokenID(_ piece: String) -> Int32? { index.lookup(Array(piece.utf8)) }

    public func tokenType(_ id: Int32) -> TokenType? { pieces.type(id) }

    public func tokenText(_ id: Int32) -> String? { pieces.text(id) }

    /// Score of a piece (higher merges first), or nil when out of range.
    public func score(_ id: Int32) -> Float? {
        id >= 0 && Int(id) < scores.count ? scores[Int(id)] : nil
    }

    public func hasByteToken(_ b: UInt8) -> Bool { byteTokens[Int(b)] >= 0 }

    public func appendBytes(_ id: Int32, includeSpecial: Bool, to out: inout [UInt8]) {
        pieces.append(id, includeSpecial: includeSpecial, to: &out)
    }

    // MARK: - Encoding

    public func encode(_ text: String, parseSpecial: Bool) -> [Int32] {
        var scratch = Scratch()
        return specialTokens.encode(text, parseSpecial: parseSpecial) { raw, afterSpecial, out in
            encodeFragment(raw, spacePrefix: addSpacePrefix && afterSpecial, &scratch, &out)
        }
    }

    /// Reusable buffers for one encode call. Symbol k covers text[start[k] ..< start[k] + length[k]];
    /// a symbol merged into its left neighbour has length 0.
    private struct Scratch {
        var text: [UInt8] = []
        var start: [Int32] = []
        var length: [Int32] = []
        var prev: [Int32] = []
        var next: [Int32] = []
        var heap = MinHeap<SPMBigram>()
    }

    private func encodeFragment(_ raw: UnsafeBufferPointer<UInt8>, spacePrefix: Bool, _ s: inout Scratch, _ out: inout [Int32]) {
        s.text.removeAll(keepingCapacity: true)
        if spacePrefix { s.text.append(contentsOf: [0xE2, 0x96, 0x81]) }
        for b in raw {
            if b == 0x20 { s.text.append(contentsOf: [0xE2, 0x96, 0x81]) } else { s.text.append(b) }
        }
        let n = s.text.count
        if n == 0 { return }

        // One symbol per UTF-8 character (llama.cpp's unicode_len_utf8 of the lead byte).
        s.start.removeAll(keepingCapacity: true)
        s.length.removeAll(keepingCapacity: true)
        s.prev.removeAll(keepingCapacity: true)
        s.next.removeAll(keepingCapacity: true)
        var offset = 0
        while offset < n {
            let lead = s.text[offset]
            let len = lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
            let count = min(len, n - offset)
            let k = Int32(s.start.count)
            s.start.append(Int32(offset))
            s.length.append(Int32(count))
            s.prev.append(k - 1)
            offset += count
            s.next.append(offset == n ? -1 : k + 1)
        }

        // The text buffer leaves the scratch while it is read, so `s` can be passed inout.
        var textBuffer: [UInt8] = []
        swap(&textBuffer, &s.text)
        defer { swap(&textBuffer, &s.text) }
        textBuffer.withUnsafeBufferPointer { text in
            s.heap.removeAll()
            for k in 1..<s.start.count { addBigram(Int32(k - 1), Int32(k), text, &s) }
            while let bg = s.heap.popMin() {
                let l = Int(bg.left), r = Int(bg.right)
                // Skip bigrams made stale by an earlier merge of either side.
                if s.length[l] == 0 || s.length[r] == 0 || s.length[l] + s.length[r] != bg.size { continue }
                s.length[l] += s.length[r]
                s.length[r] = 0
                let rn = s.next[r]
                s.next[l] = rn
                if rn >= 0 { s.prev[Int(rn)] = bg.left }
                addBigram(s.prev[l], bg.left, text, &s)
                addBigram(bg.left, rn, text, &s)
            }

            // Every merged symbol is a piece (only pieces are queued), so a symbol that is not
            // a piece is a single character: its bytes become byte tokens.
            var k: Int32 = 0
            while k >= 0 {
                let st = Int(s.start[Int(k)]), len = Int(s.length[Int(k)])
                if let id = index.lookup(UnsafeBufferPointer(rebasing: text[st..<st + len])) {
                    out.append(id)
                } else {
                    for j in st..<st + len where byteTokens[Int(text[j])] >= 0 { out.append(byteTokens[Int(text[j])]) }
                }
                k = s.next[Int(k)]
            }
        }
    }

    /// Queues the merge of two adjacent symbols when their concatenation is a piece, keyed by
    /// score (highest first) and then left position (leftmost first), as llama.cpp orders them.
    @inline(__always)
    private func addBigram(_ left: Int32, _ right: Int32, _ text: UnsafeBufferPointer<UInt8>, _ s: inout Scratch) {
        if left < 0 || right < 0 { return }
        let st = Int(s.start[Int(left)])
        let size = s.length[Int(left)] + s.length[Int(right)]
        guard let id = index.lookup(UnsafeBufferPointer(rebasing: text[st..<st + Int(size)])) else { return }
        var score = scores[Int(id)]
        if score == 0 { score = 0 }  // -0.0 ties with 0.0, as in a float comparison
        let bits = score.bitPattern
        let ascending = bits & 0x8000_0000 != 0 ? ~bits : bits | 0x8000_0000
        s.heap.push(UInt64(~ascending) << 32 | UInt64(UInt32(bitPattern: left)),
                    SPMBigram(left: left, right: right, size: size))
    }
}

/// A candidate SentencePiece merge of two adjacent symbols of combined byte length `size`.
struct SPMBigram {
    var left: Int32
    var right: Int32
    var size: Int32
}

/// Open-addressing hash table from a piece's UTF-8 bytes to its id. Keys are compared as
/// bytes (a Swift String key would equate canonically equivalent pieces, which are distinct
/// tokens). For a text that occurs twice the higher id wins.
struct PieceIndex: Sendable {
    let textBytes: [UInt8]
    let textOffsets: [Int]
    private let slots: [Int32]
    private let mask: Int

    init(_ texts: [String]) {
        var bytes: [UInt8] = []
        var offsets = [Int]()
        offsets.reserveCapacity(texts.count + 1)
        offsets.append(0)
        for t in texts {
            bytes.append(contentsOf: t.utf8)
            offsets.append(bytes.count)
        }
        var capacity = 16
        while capacity < texts.count * 2 { capacity <<= 1 }
        var table = [Int32](repeating: -1, count: capacity)
        let mask = capacity - 1
        bytes.withUnsafeBufferPointer { all in
            for id in 0..<texts.count {
                let key = UnsafeBufferPointer(rebasing: all[offsets[id]..<offsets[id + 1]])
                var slot = Self.hash(key) & mask
                while table[slot] >= 0 {
                    let other = Int(table[slot])
                    if Self.equal(key, UnsafeBufferPointer(rebasing: all[offsets[other]..<offsets[other + 1]])) { break }
                    slot = (slot + 1) & mask
                }
                table[slot] = Int32(id)
            }
        }
        textBytes = bytes
        textOffsets = offsets
        slots = table
        self.mask = mask
    }

    func lookup(_ key: [UInt8]) -> Int32? {
        key.withUnsafeBufferPointer { lookup($0) }
    }

    func lookup(_ key: UnsafeBufferPointer<UInt8>) -> Int32? {
        var slot = Self.hash(key) & mask
        return textBytes.withUnsafeBufferPointer { all in
            while true {
                let id = Int(slots[slot])
                if id < 0 { return nil }
                if Self.equal(key, UnsafeBufferPointer(rebasing: all[textOffsets[id]..<textOffsets[id + 1]])) { return Int32(id) }
                slot = (slot + 1) & mask
            }
        }
    }

    @inline(__always)
    private static func hash(_ key: UnsafeBufferPointer<UInt8>) -> Int {
        var h = FNV1a64()
        for b in key { h.mix(b) }
        return Int(truncatingIfNeeded: h.value ^ (h.value >> 29))
    }

    @inline(__always)
    private static func equal(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
        guard a.count == b.count else { return false }
        for i in 0..<a.count where a[i] != b[i] { return false }
        return true
    }
}

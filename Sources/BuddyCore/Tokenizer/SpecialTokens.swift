// Special-token partitioning shared by the BPE and SentencePiece tokenizers: llama.cpp's
// `tokenizer_st_partition`. Control, unknown and user-defined tokens are cut out of the raw
// text before the model-specific algorithm sees it, one special token at a time in order of
// decreasing length, each over all raw fragments that remain.

/// A piece of the text after partitioning: raw bytes to tokenize, or a special token.
enum TextFragment {
    case raw(start: Int, count: Int)
    case token(Int32)
}

struct SpecialTokenSet: Sendable {
    struct Entry: Sendable {
        let id: Int32
        let bytes: [UInt8]
        /// CONTROL or UNKNOWN: only partitioned when parseSpecial is true.
        let onlyWhenParsingSpecial: Bool
        /// Trie node where `bytes` ends.
        var node: Int32 = 0
    }

    /// Longest text first (stable by id for equal lengths).
    let entries: [Entry]
    let hasUserDefined: Bool
    /// Trie of the entries' texts: key = node << 8 | byte, value = child node (root is 0).
    /// Finding which special texts occur in a text at all lets the partition skip the others,
    /// which matters for vocabularies with thousands of control tokens (Gemma's <unusedN>).
    private let children: [UInt64: Int32]
    /// Per node: whether some entry's text ends there.
    private let terminal: [Bool]

    /// The special tokens of a vocabulary: control, unknown and user-defined tokens with a
    /// non-empty text.
    init(texts: [String], types: [TokenType]) {
        var list: [Entry] = []
        for i in 0..<texts.count {
            switch types[i] {
            case .control, .unknown:
                list.append(Entry(id: Int32(i), bytes: Array(texts[i].utf8), onlyWhenParsingSpecial: true))
            case .userDefined:
                list.append(Entry(id: Int32(i), bytes: Array(texts[i].utf8), onlyWhenParsingSpecial: false))
            default:
                break
            }
        }
        list.sort { a, b in a.bytes.count != b.bytes.count ? a.bytes.count > b.bytes.count : a.id < b.id }
        var children: [UInt64: Int32] = [:]
        var terminal = [false]
        for k in list.indices {
            var node: Int32 = 0
            for b in list[k].bytes {
                let key = UInt64(node) << 8 | UInt64(b)
                if let next = children[key] {
                    node = next
                } else {
                    let next = Int32(terminal.count)
                    terminal.append(false)
                    children[key] = next
                    node = next
                }
            }
            terminal[Int(node)] = true
            list[k].node = node
        }
        entries = list
        hasUserDefined = list.contains { !$0.onlyWhenParsingSpecial }
        self.children = children
        self.terminal = terminal
    }

    /// Splits the text on special tokens, processing one special token at a time in order of
    /// decreasing length over all remaining raw fragments (llama.cpp's order).
    func partition(_ bytes: UnsafeBufferPointer<UInt8>, parseSpecial: Bool) -> [TextFragment] {
        var fragments: [TextFragment] = [.raw(start: 0, count: bytes.count)]
        if !parseSpecial && !hasUserDefined { return fragments }
        let present = occurringNodes(bytes)
        if present.isEmpty { return fragments }
        var next: [TextFragment] = []
        for special in entries {
            if special.onlyWhenParsingSpecial && !parseSpecial { continue }
            // A text that is nowhere in the whole input is in none of its fragments.
            if !present.contains(special.node) { continue }
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

    /// Tokenizes `text`: special tokens become their ids, and every raw fragment between them
    /// goes to `encodeRaw` (with whether a special token or the start of the text precedes it).
    func encode(_ text: String, parseSpecial: Bool,
                _ encodeRaw: (UnsafeBufferPointer<UInt8>, _ afterSpecial: Bool, inout [Int32]) -> Void) -> [Int32] {
        let utf8 = Array(text.utf8)
        if utf8.isEmpty { return [] }
        var out: [Int32] = []
        out.reserveCapacity(utf8.count / 3 + 4)
        utf8.withUnsafeBufferPointer { bytes in
            var afterSpecial = true
            for fragment in partition(bytes, parseSpecial: parseSpecial) {
                switch fragment {
                case .token(let id):
                    out.append(id)
                    afterSpecial = true
                case .raw(let start, let count):
                    encodeRaw(UnsafeBufferPointer(rebasing: bytes[start..<start + count]), afterSpecial, &out)
                    afterSpecial = false
                }
            }
        }
        return out
    }

    /// Trie nodes of the special texts that occur somewhere in `bytes`.
    private func occurringNodes(_ bytes: UnsafeBufferPointer<UInt8>) -> Set<Int32> {
        var found = Set<Int32>()
        for i in 0..<bytes.count {
            var node: Int32 = 0
            var j = i
            while j < bytes.count, let child = children[UInt64(node) << 8 | UInt64(bytes[j])] {
                node = child
                if terminal[Int(node)] { found.insert(node) }
                j += 1
            }
        }
        return found
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
}

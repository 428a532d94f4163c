// Pre-tokenization for byte-level BPE vocabularies.
//
// Splits text (as Unicode code points) into "words" that are then BPE-encoded
// independently. The behaviour mirrors llama.cpp's `unicode_regex_split` for
// the pre-tokenizer types we support; the GPT-2 and Llama-3 patterns are
// implemented as hand-written matchers (as llama.cpp does) rather than with a
// regex engine, so the edge cases (whitespace runs before non-space,
// case-sensitive contractions, ...) are reproduced exactly.
//
// Character classes follow llama.cpp's tables: \p{L}, \p{N}, \p{P} are the
// Unicode general categories L*, N*, P* as of Unicode 15.1 (characters assigned
// in later versions count as unassigned, as in llama.cpp); \s is the Unicode
// White_Space property (25 code points; U+001C..U+001F are *not* whitespace).

/// Per-code-point class bits used by the matchers.
enum CodePointClass {
    static let letter: UInt8 = 0x01       // \p{L}
    static let number: UInt8 = 0x02       // \p{N}
    static let whitespace: UInt8 = 0x04   // \s
    static let punctuation: UInt8 = 0x08  // \p{P}
    /// Set for every code point inside the current fragment. Positions outside
    /// the fragment have class 0 (llama.cpp's "out of range" flags).
    static let defined: UInt8 = 0x80

    /// Class of ASCII code points, indexed by value.
    static let ascii: [UInt8] = {
        var table = [UInt8](repeating: defined, count: 128)
        for c in UInt8(ascii: "a")...UInt8(ascii: "z") { table[Int(c)] |= letter }
        for c in UInt8(ascii: "A")...UInt8(ascii: "Z") { table[Int(c)] |= letter }
        for c in UInt8(ascii: "0")...UInt8(ascii: "9") { table[Int(c)] |= number }
        for c in [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20] { table[c] |= whitespace }
        // ASCII characters of general category P* (the others among the
        // printable non-alphanumerics, $+<=>^`|~, are symbols S*).
        for c in "!\"#%&'()*,-./:;?@[\\]_{}".utf8 { table[Int(c)] |= punctuation }
        return table
    }()

    @inline(__always)
    static func of(_ cp: UInt32) -> UInt8 {
        if cp < 128 { return ascii[Int(cp)] }
        return nonASCII(cp)
    }

    @inline(never)
    static func nonASCII(_ cp: UInt32) -> UInt8 {
        guard let scalar = Unicode.Scalar(cp) else { return defined }
        let props = scalar.properties
        var c = defined
        switch props.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            c |= letter
        case .decimalNumber, .letterNumber, .otherNumber:
            c |= number
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation:
            c |= punctuation
        default:
            break
        }
        // llama.cpp's tables are generated from Unicode 15.1; code points assigned
        // later are "undefined" there (neither letter, number nor punctuation).
        if c != defined, let age = props.age, age.major > 15 || (age.major == 15 && age.minor > 1) {
            c = defined
        }
        if props.isWhitespace { c |= whitespace }
        return c
    }
}

/// A pre-tokenizer as selected by GGUF `tokenizer.ggml.pre`.
struct PreTokenizer: Sendable {
    /// One splitting pass. Each pass refines the pieces produced by the previous one.
    enum Stage: Sendable {
        /// `\p{N}`: every number code point becomes its own piece.
        case isolateNumbers
        /// `\p{N}+`: maximal runs of number code points become pieces.
        case numberRuns
        /// `[\p{P}\$\+<=>\^~\|]+`: runs of punctuation (llama.cpp "default" pre-tokenizer).
        case punctuationRuns
        /// `[0-9][0-9][0-9]`: consecutive triples of ASCII digits.
        case asciiDigitTriples
        /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
        case gpt2
        /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
        case llama3
    }

    let name: String
    let stages: [Stage]
    /// llama.cpp's `ignore_merges`: a word that is itself a vocabulary entry is emitted as-is.
    let ignoreMerges: Bool

    init(name: String) throws {
        self.name = name
        switch name {
        case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", "mellum2":
            stages = [.isolateNumbers, .gpt2]
            ignoreMerges = false
        case "gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "gigachat",
             "a.x-4.0", "mellum", "mpt", "olmo", "jais", "exaone4", "trillion", "granite-docling":
            stages = [.gpt2]
            ignoreMerges = false
        case "", "default":
            stages = [.punctuationRuns, .gpt2, .numberRuns, .asciiDigitTriples]
            ignoreMerges = false
        case "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2":
            stages = [.llama3]
            ignoreMerges = true
        case "dbrx", "smaug-bpe":
            stages = [.llama3]
            ignoreMerges = false
        default:
            throw TokenizerError(description: "unsupported pre-tokenizer '\(name)'")
        }
    }

    /// Splits `cps[0..<count]` (with per-code-point classes `cls`) into pieces,
    /// returned as consecutive piece lengths (in code points) summing to `count`.
    func split(_ cps: UnsafeBufferPointer<UInt32>, _ cls: UnsafeBufferPointer<UInt8>) -> [Int] {
        var lengths = [cps.count]
        var next: [Int] = []
        for stage in stages {
            next.removeAll(keepingCapacity: true)
            next.reserveCapacity(lengths.count * 2)
            var start = 0
            for len in lengths {
                let end = start + len
                switch stage {
                case .isolateNumbers: Self.isolateNumbers(cls, start, end, &next)
                case .numberRuns: Self.runs(cls, CodePointClass.number, start, end, &next)
                case .punctuationRuns: Self.punctuationRuns(cps, cls, start, end, &next)
                case .asciiDigitTriples: Self.asciiDigitTriples(cps, start, end, &next)
                case .gpt2: Self.gpt2(cps, cls, start, end, &next)
                case .llama3: Self.llama3(cps, cls, start, end, &next)
                }
                start = end
            }
            swap(&lengths, &next)
        }
        return lengths
    }

    // MARK: - Simple regex passes
    //
    // A regex pass emits each match as a piece and the text between matches
    // (if any) as a piece, like llama.cpp's std::regex fallback.

    private static func isolateNumbers(_ cls: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int,
                                       _ out: inout [Int]) {
        var gapStart = start
        for i in start..<end where cls[i] & CodePointClass.number != 0 {
            if i > gapStart { out.append(i - gapStart) }
            out.append(1)
            gapStart = i + 1
        }
        if end > gapStart { out.append(end - gapStart) }
    }

    private static func runs(_ cls: UnsafeBufferPointer<UInt8>, _ bit: UInt8, _ start: Int, _ end: Int,
                             _ out: inout [Int]) {
        splitRuns(start, end, &out) { cls[$0] & bit != 0 }
    }

    /// Splits [start, end) into maximal runs of positions that match and the gaps between them.
    @inline(__always)
    private static func splitRuns(_ start: Int, _ end: Int, _ out: inout [Int], matches: (Int) -> Bool) {
        var gapStart = start
        var i = start
        while i < end {
            if matches(i) {
                var j = i + 1
                while j < end && matches(j) { j += 1 }
                if i > gapStart { out.append(i - gapStart) }
                out.append(j - i)
                gapStart = j
                i = j
            } else {
                i += 1
            }
        }
        if end > gapStart { out.append(end - gapStart) }
    }

    /// `[\p{P}\$\+<=>\^~\|]+` as llama.cpp evaluates it: on ASCII the class is
    /// every printable non-alphanumeric except the backtick; beyond ASCII it
    /// is general category P* (whitespace code points excluded).
    private static func punctuationRuns(_ cps: UnsafeBufferPointer<UInt32>, _ cls: UnsafeBufferPointer<UInt8>,
                                        _ start: Int, _ end: Int, _ out: inout [Int]) {
        @inline(__always) func matches(_ i: Int) -> Bool {
            let cp = cps[i]
            if cp < 128 {
                return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40)
                    || (cp >= 0x5B && cp <= 0x5F) || (cp >= 0x7B && cp <= 0x7E)
            }
            let c = cls[i]
            return c & CodePointClass.whitespace == 0 && c & CodePointClass.punctuation != 0
        }
        splitRuns(start, end, &out, matches: matches)
    }

    private static func asciiDigitTriples(_ cps: UnsafeBufferPointer<UInt32>, _ start: Int, _ end: Int,
                                          _ out: inout [Int]) {
        @inline(__always) func isDigit(_ i: Int) -> Bool { cps[i] >= 0x30 && cps[i] <= 0x39 }
        var gapStart = start
        var i = start
        while i + 3 <= end {
            if isDigit(i) && isDigit(i + 1) && isDigit(i + 2) {
                if i > gapStart { out.append(i - gapStart) }
                out.append(3)
                i += 3
                gapStart = i
            } else {
                i += 1
            }
        }
        if end > gapStart { out.append(end - gapStart) }
    }

    // MARK: - GPT-2 matcher

    /// The GPT-2 pattern, following llama.cpp's `unicode_regex_split_custom_gpt2`.
    private static func gpt2(_ cps: UnsafeBufferPointer<UInt32>, _ cls: UnsafeBufferPointer<UInt8>,
                             _ start: Int, _ end: Int, _ out: inout [Int]) {
        let outOfRange = UInt32.max
        @inline(__always) func cp(_ i: Int) -> UInt32 { i < end ? cps[i] : outOfRange }
        @inline(__always) func cl(_ i: Int) -> UInt8 { i < end ? cls[i] : 0 }
        let L = CodePointClass.letter, N = CodePointClass.number, W = CodePointClass.whitespace
        let space = UInt32(0x20), apostrophe = UInt32(0x27)

        var prevEnd = start
        @inline(__always) func emit(_ e: Int) {
            if e > prevEnd { out.append(e - prevEnd) }
            prevEnd = e
        }

        var pos = start
        while pos < end {
            let c = cps[pos]
            let f = cls[pos]

            // 's|'t|'re|'ve|'m|'ll|'d  (case-sensitive)
            if c == apostrophe && pos + 1 < end {
                let n1 = cps[pos + 1]
                if n1 == 0x73 || n1 == 0x74 || n1 == 0x6D || n1 == 0x64 {  // s t m d
                    pos += 2; emit(pos); continue
                }
                if pos + 2 < end {
                    let n2 = cps[pos + 2]
                    if (n1 == 0x72 && n2 == 0x65) || (n1 == 0x76 && n2 == 0x65) || (n1 == 0x6C && n2 == 0x6C) {
                        pos += 3; emit(pos); continue  // re ve ll
                    }
                }
            }

            var f2 = c == space ? cl(pos + 1) : f
            // ' ?\p{L}+'
            if f2 & L != 0 {
                if c == space { pos += 1 }
                while f2 & L != 0 { pos += 1; f2 = cl(pos) }
                emit(pos); continue
            }
            // ' ?\p{N}+'
            if f2 & N != 0 {
                if c == space { pos += 1 }
                while f2 & N != 0 { pos += 1; f2 = cl(pos) }
                emit(pos); continue
            }
            // ' ?[^\s\p{L}\p{N}]+'
            if f2 & (W | L | N) == 0 && f2 != 0 {
                if c == space { pos += 1 }
                while f2 & (W | L | N) == 0 && f2 != 0 { pos += 1; f2 = cl(pos) }
                emit(pos); continue
            }

            var numWhitespace = 0
            while cl(pos + numWhitespace) & W != 0 { numWhitespace += 1 }
            // '\s+(?!\S)': leave the last whitespace to prefix the next word
            if numWhitespace > 1 && cp(pos + numWhitespace) != outOfRange {
                pos += numWhitespace - 1
                emit(pos); continue
            }
            // '\s+'
            if numWhitespace > 0 {
                pos += numWhitespace
                emit(pos); continue
            }
            // no match
            pos += 1
            emit(pos)
        }
    }

    // MARK: - Llama-3 matcher

    /// The Llama-3 pattern, following llama.cpp's `unicode_regex_split_custom_llama3`.
    private static func llama3(_ cps: UnsafeBufferPointer<UInt32>, _ cls: UnsafeBufferPointer<UInt8>,
                               _ start: Int, _ end: Int, _ out: inout [Int]) {
        let outOfRange = UInt32.max
        @inline(__always) func cp(_ i: Int) -> UInt32 { i < end ? cps[i] : outOfRange }
        @inline(__always) func cl(_ i: Int) -> UInt8 { i < end ? cls[i] : 0 }
        @inline(__always) func lower(_ c: UInt32) -> UInt32 { (c >= 0x41 && c <= 0x5A) ? c + 0x20 : c }
        let L = CodePointClass.letter, N = CodePointClass.number, W = CodePointClass.whitespace
        let space = UInt32(0x20), apostrophe = UInt32(0x27), cr = UInt32(0x0D), lf = UInt32(0x0A)

        var prevEnd = start
        @inline(__always) func emit(_ e: Int) {
            if e > prevEnd { out.append(e - prevEnd) }
            prevEnd = e
        }

        var pos = start
        while pos < end {
            let c = cps[pos]
            let f = cls[pos]

            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if c == apostrophe && pos + 1 < end {
                let n1 = lower(cps[pos + 1])
                if n1 == 0x73 || n1 == 0x74 || n1 == 0x6D || n1 == 0x64 {
                    pos += 2; emit(pos); continue
                }
                if pos + 2 < end {
                    let n2 = lower(cps[pos + 2])
                    if (n1 == 0x72 && n2 == 0x65) || (n1 == 0x76 && n2 == 0x65) || (n1 == 0x6C && n2 == 0x6C) {
                        pos += 3; emit(pos); continue
                    }
                }
            }

            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(c == cr || c == lf || f & N != 0) {
                if f & L != 0 || cl(pos + 1) & L != 0 {
                    pos += 1
                    while cl(pos) & L != 0 { pos += 1 }
                    emit(pos); continue
                }
            }

            // \p{N}{1,3}
            if f & N != 0 {
                var ini = pos
                while cl(pos) & N != 0 {
                    pos += 1
                    if pos - ini >= 3 { emit(pos); ini = pos }
                }
                emit(pos); continue
            }

            // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
            var f2 = c == space ? cl(pos + 1) : f
            if f2 & (W | L | N) == 0 && f != 0 {
                if c == space { pos += 1 }
                while f2 & (W | L | N) == 0 && f2 != 0 { pos += 1; f2 = cl(pos) }
                var c2 = cp(pos)
                while c2 == cr || c2 == lf { pos += 1; c2 = cp(pos) }
                emit(pos); continue
            }

            var numWhitespace = 0
            var lastEndCRLF = 0
            while cl(pos + numWhitespace) & W != 0 {
                let c2 = cp(pos + numWhitespace)
                if c2 == cr || c2 == lf { lastEndCRLF = pos + numWhitespace + 1 }
                numWhitespace += 1
            }
            // \s*[\r\n]+
            if lastEndCRLF > 0 {
                pos = lastEndCRLF
                emit(pos); continue
            }
            // \s+(?!\S)
            if numWhitespace > 1 && cp(pos + numWhitespace) != outOfRange {
                pos += numWhitespace - 1
                emit(pos); continue
            }
            // \s+
            if numWhitespace > 0 {
                pos += numWhitespace
                emit(pos); continue
            }
            pos += 1
            emit(pos)
        }
    }
}

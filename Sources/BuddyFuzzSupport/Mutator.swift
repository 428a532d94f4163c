import BuddyCore
import Foundation

/// How long a fuzz target runs: `BUDDY_FUZZ_SECONDS` (wall clock) or
/// `BUDDY_FUZZ_ITERATIONS` (count), else `defaultIterations` (the quick run in the suite).
/// `BUDDY_FUZZ_SEED` varies the mutation stream between long runs.
public struct FuzzBudget {
    public let iterations: Int?
    public let seconds: Double?
    public let seed: UInt64

    public init(defaultIterations: Int, environment: [String: String] = ProcessInfo.processInfo.environment) {
        seconds = environment["BUDDY_FUZZ_SECONDS"].flatMap(Double.init)
        iterations = seconds == nil ? (environment["BUDDY_FUZZ_ITERATIONS"].flatMap(Int.init) ?? defaultIterations) : nil
        seed = environment["BUDDY_FUZZ_SEED"].flatMap(UInt64.init) ?? 20261129
    }

    /// Runs `body` once per execution until the budget is spent; returns the count.
    public func run(_ body: (Int) -> Void) -> (executions: Int, seconds: Double) {
        let start = monotonicSeconds()
        var n = 0
        while true {
            if let iterations, n >= iterations { break }
            if let seconds, monotonicSeconds() - start >= seconds { break }
            body(n)
            n += 1
        }
        return (n, monotonicSeconds() - start)
    }
}

/// Structure-blind mutations of a byte string, biased to where parsers decide things:
/// overwrite and flip bytes, plant huge or small integers, truncate, duplicate slices, and
/// splice in tokens from a dictionary (for text formats).
public struct Mutator {
    public var rng: SeededRNG
    public let dictionary: [[UInt8]]

    public init(seed: UInt64, dictionary: [String] = []) {
        rng = SeededRNG(seed: seed)
        self.dictionary = dictionary.map { Array($0.utf8) }
    }

    mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(rng.next() % UInt64(n)) }

    /// 1–4 mutations, mostly within the first `focus` bytes.
    public mutating func mutate(_ input: [UInt8], focus: Int = .max) -> [UInt8] {
        var b = input
        for _ in 0..<(1 + below(4)) {
            if b.count < 16 { b += [UInt8](repeating: 0x41, count: 16) }
            let f = min(b.count, focus)
            switch below(dictionary.isEmpty ? 6 : 8) {
            case 0: b[below(f)] = UInt8(truncatingIfNeeded: rng.next())
            case 1: // a length or count becomes huge
                let i = below(f - 8)
                for k in 0..<8 { b[i + k] = 0xFF }
            case 2: b = Array(b.prefix(below(b.count)))
            case 3: b[below(b.count)] ^= UInt8(1 << (rng.next() % 8))
            case 4: // a small integer into a 4-byte field (types, dimensions)
                let i = below(f - 4)
                b[i] = UInt8(rng.next() % 40); b[i + 1] = 0; b[i + 2] = 0; b[i + 3] = 0
            case 5: // duplicate a slice (repeated keys, shifted fields)
                let i = below(f), n = below(64)
                b.insert(contentsOf: b[i..<min(b.count, i + n)], at: i)
            case 6: b.insert(contentsOf: dictionary[below(dictionary.count)], at: below(f))
            default: // replace a run with a dictionary token
                let i = below(f), n = below(12)
                b.replaceSubrange(i..<min(b.count, i + n), with: dictionary[below(dictionary.count)])
            }
        }
        return b
    }
}

/// Interesting tokens for JSON and theme files.
public let textFuzzDictionary = [
    "\"", "{", "}", "[", "]", ",", ":", "=", "#", "\n", "\\", "\\u0000", "null", "true", "-1", "0", "1e999", "-1e999",
    "NaN", "Infinity", "99999999999999999999", "4294967296", "1e-320", "\"version\": 2", "\"layers\": 0",
    "\"hidden\": 100000000", "\"kind\": \"decision-module\"", "#zzzzzz", "#12345", "256", "-5", "bright_magenta", "\u{FEFF}", "\u{0}", "é", "😀",
]

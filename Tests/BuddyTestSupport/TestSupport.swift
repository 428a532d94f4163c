import BuddyCore
import Foundation

/// What every test target shares: the checkout's paths, the one rule for finding the default
/// model, one loader that reads it once per test process, and the seeded test helpers.
/// A regular library target that only the test targets depend on (never shipped).
public enum TestSupport {
    /// The checkout root (this file is Tests/BuddyTestSupport/TestSupport.swift).
    public static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    /// The checked-in fixtures (Tests/Fixtures).
    public static let fixtures = root.appendingPathComponent("Tests/Fixtures")
    /// The shared data sets: $BUDDY_DATA if set and non-empty, else ../shared/data from the checkout root.
    public static let sharedData: URL = {
        if let env = ProcessInfo.processInfo.environment["BUDDY_DATA"], !env.isEmpty { return URL(fileURLWithPath: env) }
        return root.appendingPathComponent("../shared/data").standardizedFileURL
    }()

    /// The default model: $BUDDY_MODEL if set and non-empty, else models/<ModelLocator.defaultFileName>.
    public static var modelPath: String {
        if let env = ProcessInfo.processInfo.environment["BUDDY_MODEL"], !env.isEmpty { return env }
        return root.appendingPathComponent("models/" + ModelLocator.defaultFileName).path
    }

    /// `modelPath`, after checking the file is there. A missing model is a failure, never a skip:
    /// the error names the path and how to get the model.
    public static func requireModelPath() throws -> String {
        let path = modelPath
        guard FileManager.default.fileExists(atPath: path) else {
            throw TestSupportError("the default model is missing at \(path): run scripts/fetch-model.sh (or set BUDDY_MODEL)")
        }
        return path
    }

    /// A scratch directory for one test's files, `buddy-<tag>-<pid>` under the system's temporary
    /// directory, created if missing. The caller removes it (`defer`) when its files must not outlive the test.
    public static func scratchDirectory(_ tag: String) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("buddy-\(tag)-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    nonisolated(unsafe) private static var cached: LanguageModel?
    private static let lock = NSLock()

    /// The default model, loaded once per test process (thread-safe). Throws a `TestSupportError`
    /// naming the path and scripts/fetch-model.sh when the file is missing.
    public static func model() throws -> LanguageModel {
        lock.lock(); defer { lock.unlock() }
        if let m = cached { return m }
        let m = try LanguageModel(path: try requireModelPath())
        cached = m
        return m
    }

    /// The default model's tokenizer.
    public static func tokenizer() throws -> BPETokenizer {
        guard let tok = try model().tokenizer as? BPETokenizer else { throw TestSupportError("the default model's tokenizer is not byte-level BPE") }
        return tok
    }

    /// A JSON fixture from Tests/Fixtures, as an object.
    public static func fixture(_ name: String) throws -> [String: Any] {
        let url = fixtures.appendingPathComponent(name)
        guard let data = try? Data(contentsOf: url) else {
            throw TestSupportError("fixture \(url.path) is missing: run scripts/make_fixtures.py")
        }
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    /// A text file from the shared data sets; a missing file is a failure naming the path.
    public static func sharedText(_ name: String) throws -> String {
        let url = sharedData.appendingPathComponent(name)
        guard let text = try? String(contentsOf: url, encoding: .utf8) else {
            throw TestSupportError("this test needs \(url.path) (../shared/data, or set BUDDY_DATA)")
        }
        return text
    }
}

/// An error that makes a test fail with a clear message (not a skip: missing inputs are failures).
public struct TestSupportError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Deterministic pseudo-random values for kernel and model tests.
public struct TestRandom {
    public var rng: SeededRNG
    public init(_ seed: UInt64) { rng = SeededRNG(seed: seed) }
    public mutating func float(_ lo: Float = -1, _ hi: Float = 1) -> Float { lo + (hi - lo) * rng.nextUnitFloat() }
    public mutating func floats(_ n: Int, _ lo: Float = -1, _ hi: Float = 1) -> [Float] { (0..<n).map { _ in float(lo, hi) } }
    public mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }
}

/// Skips a fixed set of layers for every token (prompt chunks and decode steps alike).
public final class FixedSkip: LayerSelector {
    public let runs: [Bool]
    public init(layers: Int, skip: Set<Int>) { runs = (0..<layers).map { !skip.contains($0) } }
    public func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] { runs }
    public func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool] { runs }
}

/// The Gemma 3 270M file and its tokenizer. Only the tokenizer is built (from the GGUF
/// metadata), so these tests do not depend on the model's architecture being supported.
public enum GemmaSupport {
    public static let fileName = "gemma-3-270m-q4_k_m.gguf"

    /// $BUDDY_GEMMA_MODEL, else models/gemma-3-270m-q4_k_m.gguf in the checkout.
    public static var modelPath: String {
        if let env = ProcessInfo.processInfo.environment["BUDDY_GEMMA_MODEL"], !env.isEmpty { return env }
        return TestSupport.root.appendingPathComponent("models/" + fileName).path
    }

    nonisolated(unsafe) private static var cached: (any Tokenizer)?
    private static let lock = NSLock()

    /// Fails (never skips) when the file is missing, and says how to get it.
    public static func file() throws -> GGUFFile {
        guard FileManager.default.fileExists(atPath: modelPath) else {
            throw TestSupportError("the Gemma 3 model is missing at \(modelPath): run scripts/fetch-model.sh gemma3 (or set BUDDY_GEMMA_MODEL)")
        }
        return try GGUFFile(path: modelPath)
    }

    nonisolated(unsafe) private static var cachedTransformer: Transformer?
    nonisolated(unsafe) private static var cachedFixture: [String: Any]?

    /// The Gemma weights (no tokenizer), loaded once per test process.
    public static func transformer() throws -> Transformer {
        lock.lock(); defer { lock.unlock() }
        if let t = cachedTransformer { return t }
        let t = try Transformer(file: file())
        cachedTransformer = t
        return t
    }

    /// Tests/Fixtures/gemma3-model.json (scripts/make_gemma_model_fixtures.py), read once.
    public static func modelFixture() throws -> [String: Any] {
        lock.lock(); defer { lock.unlock() }
        if let f = cachedFixture { return f }
        let url = TestSupport.fixtures.appendingPathComponent("gemma3-model.json")
        guard let data = try? Data(contentsOf: url), let f = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw TestSupportError("fixture \(url.path) is missing or unreadable: run scripts/make_gemma_model_fixtures.py")
        }
        cachedFixture = f
        return f
    }

    /// The Gemma tokenizer, built once per test process.
    public static func tokenizer() throws -> any Tokenizer {
        lock.lock(); defer { lock.unlock() }
        if let t = cached { return t }
        let t = try makeTokenizer(gguf: file())
        cached = t
        return t
    }
}

import BuddyCore
import Foundation
import XCTest

/// Paths and shared fixtures for the tests.
enum TestSupport {
    /// The checkout root (this file is Tests/BuddyCoreTests/TestSupport.swift).
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let fixtures = root.appendingPathComponent("Tests/Fixtures")
    /// The shared data sets: $BUDDY_DATA, else ../shared/data from the checkout root.
    static let sharedData: URL = {
        if let env = ProcessInfo.processInfo.environment["BUDDY_DATA"], !env.isEmpty { return URL(fileURLWithPath: env) }
        return root.appendingPathComponent("../shared/data").standardizedFileURL
    }()

    /// The default model. Tests that need it fail (never skip) when it is missing, and say how to get it.
    static var modelPath: String {
        if let env = ProcessInfo.processInfo.environment["BUDDY_MODEL"], !env.isEmpty { return env }
        return root.appendingPathComponent("models/" + ModelLocator.defaultFileName).path
    }

    nonisolated(unsafe) private static var cached: LanguageModel?
    private static let lock = NSLock()

    /// The default model, loaded once per test process.
    static func model() throws -> LanguageModel {
        lock.lock(); defer { lock.unlock() }
        if let m = cached { return m }
        guard FileManager.default.fileExists(atPath: modelPath) else {
            throw XCTSkipFailure("the default model is missing at \(modelPath): run scripts/fetch-model.sh (or set BUDDY_MODEL)")
        }
        let m = try LanguageModel(path: modelPath)
        cached = m
        return m
    }

    static func fixture(_ name: String) throws -> [String: Any] {
        let url = fixtures.appendingPathComponent(name)
        guard let data = try? Data(contentsOf: url) else {
            throw XCTSkipFailure("fixture \(url.path) is missing: run scripts/make_fixtures.py")
        }
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }
}

/// An error that makes a test fail with a clear message (not a skip: a missing model is a failure).
struct XCTSkipFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

func loadDefaultTokenizer() throws -> BPETokenizer {
    guard let tok = try TestSupport.model().tokenizer as? BPETokenizer else {
        throw XCTSkipFailure("the default model's tokenizer is not byte-level BPE")
    }
    return tok
}

/// Deterministic pseudo-random floats for kernel tests.
struct TestRandom {
    var rng: SeededRNG
    init(_ seed: UInt64) { rng = SeededRNG(seed: seed) }
    mutating func float(_ lo: Float = -1, _ hi: Float = 1) -> Float { lo + (hi - lo) * rng.nextUnitFloat() }
    mutating func floats(_ n: Int, _ lo: Float = -1, _ hi: Float = 1) -> [Float] { (0..<n).map { _ in float(lo, hi) } }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }
}

/// Skips a fixed set of layers for every token (prompt chunks and decode steps alike).
final class FixedSkip: LayerSelector {
    let runs: [Bool]
    init(layers: Int, skip: Set<Int>) { runs = (0..<layers).map { !skip.contains($0) } }
    func selectLayers(position: Int, state: DecodeState, cache: KVCache) -> [Bool] { runs }
    func selectLayers(chunkStart: Int, count: Int, batch: BatchState, cache: KVCache) -> [Bool] { runs }
}


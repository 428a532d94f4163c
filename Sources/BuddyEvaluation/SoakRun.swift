import BuddyCore
import BuddyRouting
import BuddyEngine
import Foundation

/// `buddy soak`: the chat engine driven through many turns with random mid-reply actions,
/// resident memory reported over time.
public enum SoakRun {
    public struct Options {
        public var turns: Int = 200
        public var context: Int = 1024
        public var maxTokens: Int = 64
        public var seed: UInt64 = 1
        public var reportEvery: Int = 20
        public var maxGrowth: Double = 16
        public var threads: Int = 2
        public init(turns: Int = 200, context: Int = 1024, maxTokens: Int = 64, seed: UInt64 = 1, reportEvery: Int = 20, maxGrowth: Double = 16, threads: Int = 2) {
            self.turns = turns
            self.context = context
            self.maxTokens = maxTokens
            self.seed = seed
            self.reportEvery = reportEvery
            self.maxGrowth = maxGrowth
            self.threads = threads
        }

        public func validate() throws {
            guard turns >= 1, context >= 128, maxTokens >= 1, reportEvery >= 1 else {
                throw ToolError("--turns, --max-tokens and --report-every must be positive and --context at least 128", usage: true)
            }
            try validateThreads(threads)
        }
    }

    /// Resident set size now, in MB (/proc/self/statm), or 0 where unavailable.
    public static func residentMegabytes() -> Double {
        guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let f = s.split(separator: " ")
        guard f.count > 1, let pages = Double(f[1]) else { return 0 }
        return pages * Double(sysconf(Int32(_SC_PAGESIZE))) / 1_048_576
    }

    final class Tally: @unchecked Sendable {
        let lock = NSLock()
        var tokens = 0, errors: [String] = [], contextUsed = 0, contextSize = 0, done = 0, stopped = 0
        var stopAt = Int.max, budgetAt = Int.max, budgetTo = 1.0
        weak var engine: ChatEngine?
        func with<T>(_ f: () -> T) -> T { lock.lock(); defer { lock.unlock() }; return f() }
    }

    /// Runs the turns, reporting a table of memory; false when an unexpected error event was seen
    /// or memory grew by more than --max-growth after the context filled.
    public static func run(_ o: Options, model: LanguageModel, report: Reporter) throws -> Bool {
        let (turns, maxTokens) = (o.turns, o.maxTokens)
        var opts = EngineOptions()
        opts.router = "buddy"
        opts.maxTokens = maxTokens
        opts.context = o.context
        opts.threads = o.threads
        var sampling = SamplingParameters()
        sampling.seed = o.seed
        sampling.repetitionPenalty = 1.1
        opts.sampling = sampling
        let tally = Tally()
        let engine: ChatEngine
        do {
            engine = try ChatEngine(model: model, options: opts) { e in
                tally.with {
                    switch e {
                    case .token:
                        tally.tokens += 1
                        let n = tally.tokens
                        // Mid-reply actions, as a user at the slider or Esc would.
                        if n == tally.budgetAt { tally.engine?.send(.setBudget(tally.budgetTo)) }
                        if n == tally.stopAt { tally.engine?.send(.stop) }
                    case let .stats(s): tally.contextUsed = s.contextUsed; tally.contextSize = s.contextSize
                    case let .error(s): tally.errors.append(s)
                    case let .done(r): tally.done += 1; if r.stopReason == .cancelled { tally.stopped += 1 }
                    default: break
                    }
                }
            }
        } catch { throw ToolError("\(error)") }
        tally.engine = engine
        let prompts = [
            "Tell me about the history of the bicycle.", "Write a short poem about rain.", "What is 17 times 23?",
            "Explain photosynthesis to a child.", "List five uses for a paperclip.", "Why is the sky blue?",
            "Summarise the plot of a detective story in three sentences.", "Give me a recipe for pancakes.",
            "What are the planets of the solar system?", "Translate 'good morning' into French and Spanish.",
        ]
        var rng = SeededRNG(seed: o.seed)
        func chance(_ p: Double) -> Bool { Double(rng.nextUnitFloat()) < p }
        let savePath = FileManager.default.temporaryDirectory.appendingPathComponent("buddy-soak-\(getpid()).json").path
        defer { try? FileManager.default.removeItem(atPath: savePath) }
        var rssAtFull: Double?
        var resets = 0, saves = 0, autoToggles = 0
        let start = monotonicSeconds()
        report.line("| turn | context used | resident MB | peak MB | tokens | stopped | errors |")
        report.line("|---|---|---|---|---|---|---|")
        for turn in 1...turns {
            tally.with {
                tally.tokens = 0
                tally.stopAt = chance(0.2) ? 1 + Int(rng.next() % UInt64(maxTokens)) : .max
                tally.budgetAt = chance(0.5) ? 1 + Int(rng.next() % UInt64(maxTokens)) : .max
                tally.budgetTo = [1, 0.95, 0.9, 0.85, 0.8, 0.7, 0.5][Int(rng.next() % 7)]
            }
            if chance(0.3) { engine.send(.setBudget([1, 0.95, 0.9, 0.8, 0.6][Int(rng.next() % 5)])) }
            if chance(0.05) { engine.send(.setAuto(chance(0.5))); autoToggles += 1 }
            engine.send(.send(prompts[Int(rng.next() % UInt64(prompts.count))] + " (turn \(turn))"))
            engine.drain()
            if chance(0.1) { engine.send(.save(path: savePath)); saves += 1 }
            if chance(0.03) { engine.send(.reset); resets += 1 }
            engine.drain()
            let (used, size) = tally.with { (tally.contextUsed, tally.contextSize) }
            if rssAtFull == nil && size > 0 && used + 2 * maxTokens >= size { rssAtFull = residentMegabytes() }
            if turn % o.reportEvery == 0 || turn == turns {
                let (stopped, errs) = tally.with { (tally.stopped, tally.errors.count) }
                report.line(String(format: "| %d | %d/%d | %.1f | %.1f | %d | %d | %d |", turn, used, size, residentMegabytes(), BenchRun.peakRSSMegabytes(),
                                   tally.with { tally.tokens }, stopped, errs))
            }
        }
        let end = residentMegabytes()
        let errors = tally.with { tally.errors }
        report.line(String(format: "\n%d turns in %.0f s: %d replies (%d stopped early), %d resets, %d saves, %d auto toggles; peak RSS %.1f MB; resident %.1f MB when the context first filled, %.1f MB at the end; %d error events",
                           turns, monotonicSeconds() - start, tally.with { tally.done }, tally.with { tally.stopped }, resets, saves, autoToggles,
                           BenchRun.peakRSSMegabytes(), rssAtFull ?? .nan, end, errors.count))
        for e in Set(errors).sorted() { report.line("error: \(e)") }
        // A full context is not an error here: the policy drops the oldest turns.
        let unexpected = errors.filter { !$0.contains("context") }
        if !unexpected.isEmpty { return false }
        if let full = rssAtFull, end - full > o.maxGrowth {
            report.line(String(format: "memory grew by %.1f MB after the context filled (allowed %.1f)", end - full, o.maxGrowth))
            return false
        }
        return true
    }
}

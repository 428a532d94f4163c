import BuddyCore
import BuddyTestSupport
import Foundation
import XCTest

/// Tests/Fixtures/requantized.json: llama.cpp's perplexity and greedy ids on the default model
/// requantised by llama.cpp (scripts/requantize.py, scripts/make_requantized_fixtures.py).
///
/// The requantised files are not in the repository (models/ is git-ignored and they need
/// llama-cpp-python to make), so the agreement of buddy with these numbers is checked by
/// scripts/check_requantized.sh, not here: a test that needed the files would have to fail or
/// skip wherever they are absent. What is tested here, always, is that the fixture is what the
/// script claims: its numbers are internally consistent, it belongs to the default model and
/// data set of the other fixtures, and its prompts are the ones `buddy generate` sends.
final class RequantizedFixtureTests: XCTestCase {
    func load() throws -> [String: Any] { try TestSupport.fixture("requantized.json") }

    func testCoversTheIssueTypesAndBelongsToTheDefaultFixtures() throws {
        let j = try load()
        let files = j["files"] as! [[String: Any]]
        XCTAssertEqual(Set(files.map { $0["type"] as! String }), ["Q4_K_M", "Q5_K_M", "Q6_K", "Q5_1", "F16"])
        let ppl = try TestSupport.fixture("perplexity.json")
        XCTAssertEqual(j["source_model_sha256"] as? String, ppl["model_sha256"] as? String, "requantised from the default model")
        XCTAssertEqual(j["dataset_sha256"] as? String, ppl["dataset_sha256"] as? String)
        XCTAssertEqual(j["n_ctx"] as? Int, 512)
        XCTAssertEqual(j["first"] as? Int, 256)
        let shas = files.map { $0["sha256"] as! String }
        XCTAssertEqual(Set(shas).count, files.count, "distinct files")
        for (f, sha) in zip(files, shas) {
            XCTAssertEqual(sha.count, 64)
            XCTAssertTrue(sha.allSatisfy { $0.isHexDigit && !$0.isUppercase }, sha)
            XCTAssertEqual(f["file"] as? String, "SmolLM2-135M-Instruct.\(f["type"] as! String).gguf")
        }
    }

    /// Perplexity is exp(Σ nll / Σ count) over the recorded chunks, 255 scored tokens each, and
    /// not far from the source model's: requantising the Q4_1 weights costs llama.cpp itself up
    /// to 15 % (Q5_1, and Q5_K_M whose 576-column tensors fall back to Q5_1; presumably the
    /// 16-level Q4_1 grid does not sit well on a 32-level grid over the same range), F16 almost
    /// nothing.
    func testPerplexityIsTheMeanOfTheRecordedChunks() throws {
        let j = try load()
        let chunksWanted = j["ppl_chunks"] as! Int
        let source = try TestSupport.fixture("perplexity.json")
        let sourcePPL = source["ppl_8"] as! Double
        let sourceChunks = source["chunks"] as! [[String: Any]]
        for f in j["files"] as! [[String: Any]] {
            let type = f["type"] as! String
            let chunks = f["chunks"] as! [[String: Any]]
            XCTAssertEqual(chunks.count, chunksWanted, type)
            XCTAssertEqual(chunks.map { $0["index"] as! Int }, Array(0..<chunksWanted), type)
            var nll = 0.0, count = 0
            for c in chunks {
                XCTAssertEqual(c["count"] as? Int, 255, type)
                nll += c["nll_sum"] as! Double
                count += c["count"] as! Int
            }
            let ppl = f["ppl"] as! Double
            XCTAssertEqual(ppl, exp(nll / Double(count)), accuracy: ppl * 1e-6, type)
            XCTAssertEqual(ppl / sourcePPL, 1, accuracy: 0.2, "\(type) perplexity \(ppl) vs the Q4_1 source's \(sourcePPL)")
            if type == "F16" {
                // F16 holds the Q4_1 weights almost exactly: chunk by chunk within 0.5 %.
                for (c, s) in zip(chunks, sourceChunks) {
                    XCTAssertEqual(c["nll_sum"] as! Double, s["nll_sum"] as! Double, accuracy: 0.005 * (s["nll_sum"] as! Double))
                }
            }
        }
    }

    /// Each greedy step's id is its top-1, margins are top1 - top2 and non-negative, the top list
    /// is sorted, and a run ends only at its length limit or at an end-of-turn id.
    func testGreedyStepsAreConsistent() throws {
        let j = try load()
        let names = Set((j["prompts"] as! [[String: Any]]).map { $0["name"] as! String })
        let tie = j["near_tie_margin"] as! Double
        XCTAssertEqual(tie, 0.5)
        var compared = 0
        for f in j["files"] as! [[String: Any]] {
            let type = f["type"] as! String
            let runs = f["greedy"] as! [[String: Any]]
            XCTAssertEqual(Set(runs.map { $0["name"] as! String }), names, type)
            for r in runs {
                let steps = r["steps"] as! [[String: Any]]
                XCTAssertFalse(steps.isEmpty)
                XCTAssertLessThanOrEqual(steps.count, 32)
                for (k, s) in steps.enumerated() {
                    let id = s["id"] as! Int, margin = s["margin"] as! Double
                    let top = s["top"] as! [[Double]]
                    XCTAssertEqual(Int(top[0][0]), id, "\(type) \(r["name"]!) step \(k)")
                    XCTAssertGreaterThanOrEqual(margin, 0)
                    XCTAssertEqual(margin, top[0][1] - top[1][1], accuracy: 2e-4)
                    XCTAssertEqual(top.map { $0[1] }, top.map { $0[1] }.sorted(by: >))
                    if k + 1 < steps.count { XCTAssertFalse([0, 2].contains(id), "a run stops at an end-of-turn id") }
                }
                if steps.count < 32 { XCTAssertTrue([0, 2].contains(steps.last!["id"] as! Int)) }
                compared += steps.firstIndex { ($0["margin"] as! Double) < tie } ?? steps.count
            }
        }
        XCTAssertGreaterThanOrEqual(compared, 40, "enough greedy ids before the near-ties to be a check")
    }

    /// The prompt ids llama.cpp saw are what `buddy generate` (scripts/check_requantized.sh)
    /// sends: the raw text, or one user turn in the model's chat template.
    func testPromptsAreWhatBuddyGenerateSends() throws {
        let m = try TestSupport.model()
        let j = try load()
        for p in j["prompts"] as! [[String: Any]] {
            let kind = p["kind"] as! String, message = p["message"] as! String
            let want = (p["prompt_ids"] as! [Int]).map(Int32.init)
            let text = kind == "chat" ? m.template.render([ChatMessage(role: .user, content: message)]) : message
            XCTAssertEqual(text, p["text"] as? String)
            XCTAssertEqual(m.tokenizer.encode(text, parseSpecial: kind == "chat"), want, p["name"] as! String)
        }
    }
}

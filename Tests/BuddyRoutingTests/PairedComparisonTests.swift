import BuddyCore
import BuddyEvaluation
import BuddyRouting
import BuddyTestSupport
import Foundation
import XCTest

/// Per-item results of `buddy eval perplexity|chat --items` and the paired comparison built on
/// them (`buddy eval paired`).
final class PairedComparisonTests: XCTestCase {
    private var scratch: URL?

    override func tearDown() {
        if let scratch { try? FileManager.default.removeItem(at: scratch) }
        super.tearDown()
    }

    private func write(_ name: String, _ text: String) throws -> String {
        let dir = try TestSupport.scratchDirectory("paired-tests")
        scratch = dir
        let path = dir.appendingPathComponent(name).path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Figures worked out by hand from the formulas in `PairedComparison`'s comment.
    func testPairedFiguresMatchHandComputedValues() throws {
        // Three chunks of 10 tokens. A's NLL 12, 9, 15; B's 10, 10, 13: D = (36 − 33) / 30 = 0.1,
        // residuals dᵢ − D·tᵢ = 1, −2, 1, s.e.(D) = √(3/2 · 6) / 30 = 0.1.
        let ppl = try write("ppl.csv", """
            method,budget,kv_policy,stand_ins,chunk,nll,tokens
            buddy,0.50,fill,on,7,12,10
            buddy,0.50,fill,on,8,9,10
            buddy,0.50,fill,on,9,15,10
            sleb,0.50,fill,on,7,10,10
            sleb,0.50,fill,on,8,10,10
            sleb,0.50,fill,on,9,13,10
            sleb,0.50,fill,off,7,99,10
            sleb,0.50,fill,off,8,99,10
            sleb,0.90,fill,on,7,5,10
            sleb,0.50,fill,V.bin,7,1,10
            sleb,0.50,fill,V.bin,8,1,10

            """)
        let (kind, rows) = try PairedComparison.compare(files: [ppl], a: "buddy+stand-ins", b: "sleb+stand-ins")
        XCTAssertEqual(kind, .perplexity)
        XCTAssertEqual(rows.count, 1, "only 0.5 has both methods")
        let r = try XCTUnwrap(rows.first)
        XCTAssertEqual(r.items, 3)
        XCTAssertEqual(r.a, exp(1.2), accuracy: 1e-9)
        XCTAssertEqual(r.b, exp(1.1), accuracy: 1e-9)
        XCTAssertEqual(r.percent, (exp(0.1) - 1) * 100, accuracy: 1e-9)
        XCTAssertEqual(r.standardError, exp(0.1) * 0.1 * 100, accuracy: 1e-9)
        // Without stand-ins "sleb" is another method: two chunks, A's 99 + 99 against B's 20.
        let off = try PairedComparison.compare(files: [ppl], a: "sleb", b: "sleb+stand-ins").rows
        XCTAssertEqual(off.first?.items, 2)
        XCTAssertEqual(off.first?.percent ?? 0, (exp(178.0 / 20) - 1) * 100, accuracy: 1e-6)
        // A stand-in file named by path is a method of its own too: 1 + 1 against 10 + 10.
        let file = try PairedComparison.compare(files: [ppl], a: "sleb+V.bin", b: "sleb+stand-ins").rows
        XCTAssertEqual(file.first?.percent ?? 0, (exp(-18.0 / 20) - 1) * 100, accuracy: 1e-9)

        // Three replies of 4, 5, 6 tokens. A's KL sums 2, 3, 1; B's 1, 2, 3: R = 1, uᵢ = 1, 1, −2,
        // s.e.(R) = √(3/2 · 6) / 6 = 0.5.
        let chat = try write("chat.csv", """
            method,budget,kv_policy,stand_ins,prompt,kl_sum,agreements,tokens
            buddy,0.80,fill,on,81,2,3,4
            sleb,0.80,fill,on,81,1,3,4
            buddy,0.80,fill,on,83,3,3,5
            sleb,0.80,fill,on,83,2,3,5
            buddy,0.80,fill,on,85,1,3,6
            sleb,0.80,fill,on,85,3,3,6
            buddy,1.00,fill,on,81,0,4,4
            sleb,1.00,fill,on,81,0,4,4
            buddy,1.00,fill,on,83,0,5,5
            sleb,1.00,fill,on,83,0,5,5
            """)
        XCTAssertEqual(try PairedComparison.compare(files: [chat], a: "buddy+stand-ins", b: "sleb+stand-ins").rows.map(\.budget), [0.8],
                       "full depth has no KL to compare with")
        let c = try XCTUnwrap(PairedComparison.compare(files: [chat], a: "buddy+stand-ins", b: "sleb+stand-ins").rows.first)
        XCTAssertEqual(c.a, 0.4, accuracy: 1e-12)
        XCTAssertEqual(c.b, 0.4, accuracy: 1e-12)
        XCTAssertEqual(c.percent, 0, accuracy: 1e-12)
        XCTAssertEqual(c.standardError, 50, accuracy: 1e-9)
        XCTAssertEqual(PairedComparison.markdown(.chat, [c], a: "A", b: "B").split(separator: "\n").last,
                       "| 0.80 | 3 | 0.4000 | 0.4000 | +0.0 % | 50.0 % | +0.0 |")
        XCTAssertEqual(PairedComparison.csv([c]), "budget,items,a,b,percent,standard_error\n0.80,3,0.4,0.4,0.0000,50.0000\n")
    }

    /// HellaSwag: accuracy difference, its paired s.e. and the discordant tasks, by hand.
    func testHellaSwagPairsMatchHandComputedValues() throws {
        // Four tasks at 0.7: A right on 0, 1, 2 and B on 1, 3, so d = 1, 0, 1, −1: mean 0.25,
        // mean(d²) 0.75, s.e. √((0.75 − 0.0625) / 3) = 0.47871; only A right on 2 tasks, only B on 1.
        let items = try write("hellaswag.csv", """
            \(HellaSwagRun.itemHeader)
            buddy,0.7,fill,0,3,3,on
            buddy,0.7,fill,1,2,2,on
            buddy,0.7,fill,2,1,1,on
            buddy,0.7,fill,3,0,2,on
            sleb,0.7,fill,0,3,1,on
            sleb,0.7,fill,1,2,2,on
            sleb,0.7,fill,2,1,0,on
            sleb,0.7,fill,3,0,0,on
            sleb,0.7,fill,0,3,3,off

            """)
        let (kind, rows) = try PairedComparison.compare(files: [items], a: "buddy+stand-ins", b: "sleb+stand-ins")
        XCTAssertEqual(kind, .hellaswag)
        let r = try XCTUnwrap(rows.first)
        XCTAssertEqual(rows.count, 1)
        XCTAssertEqual(r.items, 4)
        XCTAssertEqual(r.a, 0.75, accuracy: 1e-12)
        XCTAssertEqual(r.b, 0.5, accuracy: 1e-12)
        XCTAssertEqual(r.percent, 25, accuracy: 1e-9)
        XCTAssertEqual(r.standardError, 100 * (0.6875 / 3).squareRoot(), accuracy: 1e-9)
        XCTAssertEqual([r.onlyA, r.onlyB], [2, 1])
        XCTAssertEqual(PairedComparison.markdown(.hellaswag, rows, a: "A", b: "B"), """
            | budget | n | A | B | difference | paired s.e. | difference / s.e. | A only right | B only right |
            |---|---|---|---|---|---|---|---|---|
            | 0.70 | 4 | 0.7500 | 0.5000 | +0.2500 | 0.4787 | +0.5 | 2 | 1 |

            """)
        // Files from before stand-ins have no stand_ins column: their rows are plain skipping,
        // and they pair with new files' "off" rows (task 0 here agrees: both right).
        let old = try write("hellaswag-old.csv", "method,budget,kv_policy,task,gold,chosen\nsleb,0.7,fill,0,3,3\nbuddy,0.7,fill,0,3,1\nsleb,0.7,fill,1,3,3\nbuddy,0.7,fill,1,3,3\n")
        let mixed = try PairedComparison.compare(files: [items, old], a: "buddy", b: "sleb").rows
        XCTAssertEqual(mixed.first?.items, 2)
        XCTAssertEqual(mixed.first?.percent ?? 0, -50, accuracy: 1e-9)
        let conflicting = try write("hellaswag-conflict.csv", "\(HellaSwagRun.itemHeader)\nbuddy,0.7,fill,3,0,0,on\n")
        XCTAssertThrowsError(try PairedComparison.compare(files: [items, conflicting], a: "buddy+stand-ins", b: "sleb+stand-ins")) {
            XCTAssertTrue("\($0)".contains("conflicting results for buddy+stand-ins at 0.70, item 3"), "\($0)")
        }
        for line in ["buddy,0.7,fill,0,3,x,on", "buddy,0.7,fill,0,-1,2,on", "buddy,0.7,fill,,3,2,on", "buddy,0.7,fill,0,3,2"] {
            let bad = try write("hellaswag-bad.csv", "\(HellaSwagRun.itemHeader)\n\(line)\n")
            XCTAssertThrowsError(try PairedComparison.compare(files: [bad], a: "buddy", b: "sleb")) {
                XCTAssertTrue("\($0)".contains("line 2 is not a valid hellaswag item"), "\(line): \($0)")
            }
        }
    }

    func testBadItemFilesAreRefusedWithTheProblemNamed() throws {
        let header = PerplexityRun.itemHeader
        func refusal(_ files: [String], a: String = "buddy", b: String = "sleb") -> String {
            do { _ = try PairedComparison.compare(files: files, a: a, b: b); return "accepted" } catch { return "\(error)" }
        }
        let good = try write("good.csv", "\(header)\nbuddy,0.50,fill,off,1,3,10\nsleb,0.50,fill,off,1,2,10\nbuddy,0.50,fill,off,2,3,10\nsleb,0.50,fill,off,2,2,10\n")
        XCTAssertEqual(refusal([good]), "accepted")
        let chat = try write("chat-items.csv", "\(ChatFidelityRun.itemHeader)\nbuddy,0.50,fill,off,81,1,1,4\n")
        XCTAssertTrue(refusal([good, chat]).contains("holds chat items, the other files perplexity items"), refusal([good, chat]))
        let other = try write("other.csv", "method,budget,kv_policy,task,gold\n")
        XCTAssertTrue(refusal([other]).contains("is not an items file"), refusal([other]))
        for (i, line) in ["buddy,0.50,fill,off,1,nan,10", "buddy,0.50,fill,off,1,-1,10", "buddy,2,fill,off,1,3,10",
                          "buddy,0.50,fill,off,1,3,0", "buddy,0.50,fill,off,1,3", "buddy,0.50,fill,off,1,3,10,4"].enumerated() {
            let bad = try write("bad\(i).csv", "\(header)\n\(line)\n")
            XCTAssertTrue(refusal([bad]).contains("line 2 is not a valid perplexity item"), "\(line): \(refusal([bad]))")
        }
        let conflicting = try write("conflict.csv", "\(header)\nbuddy,0.50,fill,off,1,4,10\n")
        XCTAssertTrue(refusal([good, conflicting]).contains("conflicting results for buddy at 0.50, item 1"), refusal([good, conflicting]))
        let mismatch = try write("mismatch.csv", "\(header)\nbuddy,0.50,fill,off,1,3,10\nsleb,0.50,fill,off,1,2,11\nbuddy,0.50,fill,off,2,3,10\nsleb,0.50,fill,off,2,2,10\n")
        XCTAssertTrue(refusal([mismatch]).contains("not the same item"), refusal([mismatch]))
        XCTAssertTrue(refusal([good], a: "shortgpt").contains("no rows for method 'shortgpt' (methods present: buddy, sleb)"), refusal([good], a: "shortgpt"))
        XCTAssertTrue(refusal([good + ".missing"]).contains("cannot read items file"))
    }

    /// The per-item rows of a real run add up to the figures of its table, and budget 1 gives
    /// every method the full model's rows.
    func testItemsOfARealRunAddUpToItsTable() throws {
        let model = try TestSupport.model()
        let text = try TestSupport.sharedText("wikitext2_valid.txt")
        let data = try write("text.txt", String(text.prefix(6000)))
        let grid = EvalGrid(budgets: "1,0.5", methods: "buddy,sleb", standIns: "on")
        let (table, chunks, _, items) = try PerplexityRun.run(.init(data: data, chunks: 2, skipChunks: 1, ctx: 128, grid: grid),
                                                             model: { model }, report: .silent)
        XCTAssertEqual(chunks, 2)
        XCTAssertEqual(items.first, PerplexityRun.itemHeader)
        XCTAssertEqual(items.count, 1 + table.rows.count * 2)
        let fields: [[String]] = items.dropFirst().map { line in line.split(separator: ",").map(String.init) }
        for row in table.rows {
            let mine: [[String]] = fields.filter { f in f[0] == row.method && Double(f[1]) == row.budget && f[3] == row.standIns }
            XCTAssertEqual(mine.map { f in f[4] }, ["1", "2"], "chunks numbered from the file's start")
            let nll: Double = mine.reduce(0.0) { s, f in s + Double(f[5])! }
            let tokens: Int = mine.reduce(0) { s, f in s + Int(f[6])! }
            XCTAssertEqual(exp(nll / Double(tokens)), row.values[0], accuracy: row.values[0] * 1e-5, "\(row.method) \(row.budget)")
        }
        let full = try PairedComparison.compare(files: [try write("run-ppl.csv", items.joined(separator: "\n") + "\n")],
                                                a: "buddy+stand-ins", b: "sleb+stand-ins").rows
        XCTAssertEqual(full.map(\.budget), [1, 0.5])
        XCTAssertEqual(full.first?.percent, 0, "budget 1 is the full model for both")

        let prompts = try write("prompts.jsonl", """
            {"question_id": 1, "turns": ["Name a colour."]}
            {"question_id": 2, "turns": ["What is two plus two?"]}

            """)
        let (chatTable, count, chatItems, positionRows) = try ChatFidelityRun.run(
            prompts: ChatPromptSelection(data: prompts, split: "all", maxReply: 8), grid: EvalGrid(budgets: "0.5", methods: "buddy,sleb", standIns: "on"),
            threads: 2, positions: true, model: { model }, report: .silent)
        XCTAssertEqual(count, 2)
        XCTAssertEqual(chatItems.count, 1 + 2 * 2)
        let chatFields: [[String]] = chatItems.dropFirst().map { line in line.split(separator: ",").map(String.init) }
        for row in chatTable.rows {
            let mine: [[String]] = chatFields.filter { f in f[0] == row.method }
            XCTAssertEqual(mine.map { f in f[4] }, ["1", "2"])
            let kl: Double = mine.reduce(0.0) { s, f in s + Double(f[5])! }
            let tokens: Int = mine.reduce(0) { s, f in s + Int(f[7])! }
            XCTAssertEqual(kl / Double(tokens), row.values[0], accuracy: 1e-5, row.method)
            XCTAssertEqual(Double(tokens), row.values[2])
            // --positions: one row per reply position, numbered from 0, summing to the prompt's KL.
            for f in mine {
                let rows = positionRows.dropFirst().map { $0.split(separator: ",").map(String.init) }.filter { $0[0] == row.method && $0[3] == f[4] }
                XCTAssertEqual(rows.map { Int($0[4])! }, Array(0..<Int(f[7])!))
                XCTAssertEqual(rows.reduce(0.0) { $0 + Double($1[6])! }, Double(f[5])!, accuracy: 1e-4)
            }
        }
        XCTAssertEqual(positionRows.first, ChatFidelityRun.positionHeader)
    }

    /// `--turn follow-up`: the prompt is the question, the full model's own greedy reply to it and
    /// the follow-up, in the chat template; a file without follow-ups is refused.
    func testFollowUpTurnAsksTheSecondQuestionAfterTheModelsOwnReply() throws {
        let model = try TestSupport.model()
        let file = try write("follow.jsonl", "{\"question_id\": 7, \"turns\": [\"Name a fruit.\", \"Now name a vegetable.\"]}\n")
        let selection = ChatPromptSelection(data: file, split: "all", maxReply: 12, turn: .followUp)
        let prompts = try selection.load()
        let evaluator = ChatEvaluator(session: Session(model: model, capacity: 256, threads: 2, batchSize: 64))
        let (ids, reference) = try selection.reference(to: prompts[0], evaluator: evaluator)
        let first = try evaluator.reference(prompt: evaluator.promptTokens("Name a fruit."), maxTokens: 12).reply
        XCTAssertFalse(first.isEmpty)
        let text = String(decoding: ids.flatMap { model.tokenizer.decodeBytes($0, includeSpecial: true) }, as: UTF8.self)
        let firstText = model.tokenizer.decode(first)
        let question = try XCTUnwrap(text.range(of: "Name a fruit.")), answer = try XCTUnwrap(text.range(of: firstText)),
            followUp = try XCTUnwrap(text.range(of: "Now name a vegetable."))
        XCTAssertTrue(question.upperBound <= answer.lowerBound && answer.upperBound <= followUp.lowerBound, text)
        XCTAssertEqual(text.components(separatedBy: "<|im_start|>assistant").count, 3, "the first reply and the turn now due: \(text)")
        XCTAssertEqual(reference.prompt, ids)
        XCTAssertEqual(selection.itemKey(prompts[0]), "7-follow-up", "pooled with first turns, a follow-up is another item")
        XCTAssertEqual(try ChatPromptSelection(data: file, split: "all", maxReply: 12).reference(to: prompts[0], evaluator: evaluator).ids,
                       evaluator.promptTokens("Name a fruit."))
        let single = try write("single.jsonl", "{\"question_id\": 8, \"turns\": [\"Hi\"]}\n")
        XCTAssertThrowsError(try ChatPromptSelection(data: single, split: "all", turn: .followUp).load()) {
            XCTAssertTrue("\($0)".contains("prompt 8 in '\(single)' has no follow-up turn"), "\($0)")
        }
    }

    /// `buddy eval auto`'s paired line: per prompt, the auto run against the fixed runs
    /// interpolated to the same mean k, worked out by hand. Three prompts of 10 tokens choose
    /// 0.5, 0.8, 0.8 (k 14, 22, 22: mean 58/3, weight 2/3 between k 14 and 22); KL sums at 0.5 /
    /// 0.8: 6 / 3, 8 / 4, 5 / 2. Auto 6 + 4 + 2 = 12, interpolated 4 + 16/3 + 3 = 37/3:
    /// −2.7 % with s.e. √(3/2 · Σ(aᵢ − R·bᵢ)²) / (37/3) = 25.7 %.
    func testAutoAgainstFixedIsPairedOverThePrompts() throws {
        let prompts = try ChatPromptSet.parse("""
            {"question_id": 1, "turns": ["a"]}
            {"question_id": 2, "turns": ["b"]}
            {"question_id": 3, "turns": ["c"]}
            """)
        let fixed: [[Double]] = [[6, 3], [8, 4], [5, 2]]
        let fixedRows = fixed.map { $0.map { ChatDivergence(klSum: $0, agreements: 5, tokens: 10) } }
        let chosen = [0, 1, 1]
        let rows: [AutoBudgetRun.Row] = prompts.indices.map { (prompts[$0], [0.5, 0.8][chosen[$0]], fixedRows[$0][chosen[$0]]) }
        var lines: [String] = []
        AutoBudgetRun.summary(rule: .tolerance(0.25), lowestChoice: 0.5, rows: rows, fixedRows: fixedRows, grid: [0.5, 0.8], layers: 30, split: "all",
                              report: Reporter(line: { lines.append($0) }, note: { _ in }, progress: { SilentProgress(total: $1) }))
        XCTAssertEqual(lines.last, "\nAuto against the interpolated fixed budget, paired over the 3 prompts: KL -2.7 % ± 25.7 % (s.e.); within 2 s.e.")
        XCTAssertTrue(lines.contains("| fixed, same mean k (interpolated) | — | 19.33 | 0.4111 | 0.5000 |"), lines.joined(separator: "\n"))
        // Mean KL per token at k 14, 22, 28: 19/30, 9/30, 0. The middle point lies above the chord
        // from 14 to full depth, so the best prompt-blind mix at 58/3 is 19/30 · (28 − 58/3) / 14 = 0.3921.
        XCTAssertTrue(lines.contains("| best prompt-blind mix of fixed budgets, same mean k | — | 19.33 | 0.3921 | — |"), lines.joined(separator: "\n"))
    }

    /// `eval auto --budgets` runs a subset of the grid, which must hold what the rules can choose:
    /// the share rule only the lowest choice, a tolerance rule every choice.
    func testAutoEvaluationRunsTheFixedBudgetsTheRulesNeed() throws {
        let p = try BudgetPredictor(budgets: [0.5, 0.8, 0.9], choices: [0.8, 0.9], featureDim: 1, mean: [0], scale: [1], weights: [0, 0, 0],
                                    bias: [0, 0, 0], router: "t")
        var o = AutoBudgetRun.Options(prompts: ChatPromptSelection(data: "x"))
        XCTAssertEqual(try o.fixedBudgets(p, rules: [.share(0.5)]), [0.5, 0.8, 0.9], "no --budgets: the whole grid")
        o.budgets = "0.9,0.8"
        XCTAssertEqual(try o.fixedBudgets(p, rules: [.share(0.5), .tolerance(0.2)]), [0.8, 0.9])
        o.budgets = "0.8"
        XCTAssertEqual(try o.fixedBudgets(p, rules: [.share(0.5)]), [0.8])
        XCTAssertThrowsError(try o.fixedBudgets(p, rules: [.tolerance(0.2)])) { XCTAssertTrue("\($0)".contains("every budget the rules can choose (0.8,0.9)"), "\($0)") }
        o.budgets = "0.8,0.85"
        XCTAssertThrowsError(try o.fixedBudgets(p, rules: [.share(0.5)])) { XCTAssertTrue("\($0)".contains("the predictor's grid (0.5,0.8,0.9)"), "\($0)") }
        o.budgets = "0.8,x"
        XCTAssertThrowsError(try o.validate()) { XCTAssertTrue("\($0)".contains("--budgets"), "\($0)") }
    }

    /// Under the share rule the report adds a coin that sends the same share to full depth and
    /// the rest to the lowest choice (0.8 here), by hand: prompt 2 (KL sum 4 at 0.8) runs at full
    /// depth, so auto is 3 + 0 + 2 = 5; the coin's expected sums are 2/3 of 3, 4, 2 (6 in all):
    /// −16.7 %, s.e. √(3/2 · Σ(aᵢ − 5/6 · bᵢ)²) / 6 = √(3/2 · 608/81) / 6 = 55.9 %; its mean KL
    /// 2/3 · 9/30 = 0.2.
    func testShareRuleIsComparedWithACoinOfTheSameShare() throws {
        let prompts = try ChatPromptSet.parse("""
            {"question_id": 1, "turns": ["a"]}
            {"question_id": 2, "turns": ["b"]}
            {"question_id": 3, "turns": ["c"]}
            """)
        let fixedRows = [[6, 3], [8, 4], [5, 2]].map { $0.map { ChatDivergence(klSum: $0, agreements: 5, tokens: 10) } }
        let rows: [AutoBudgetRun.Row] = [(prompts[0], 0.8, fixedRows[0][1]), (prompts[1], 1, ChatDivergence(klSum: 0, agreements: 10, tokens: 10)),
                                         (prompts[2], 0.8, fixedRows[2][1])]
        var lines: [String] = []
        let comparisons = AutoBudgetRun.summary(rule: .share(0.3), lowestChoice: 0.8, rows: rows, fixedRows: fixedRows, grid: [0.5, 0.8], layers: 30, split: "all",
                              report: Reporter(line: { lines.append($0) }, note: { _ in }, progress: { SilentProgress(total: $1) }))
        XCTAssertEqual(lines.first, "### Full-depth share 0.3 (the rest at 0.8)\n")
        XCTAssertEqual(lines.last, "Auto against a coin sending the same share (33.3 %) to full depth and the rest to 0.80 (expected KL 0.2000), paired: "
                       + "KL -16.7 % ± 55.9 % (s.e.); within 2 s.e.", lines.joined(separator: "\n"))
        // Per prompt (the CSV's coin_kl): 2/3 of 0.3, 0.4, 0.2.
        for (got, want) in zip(comparisons.map(\.coin), [0.2, 0.4 * 2 / 3, 0.2 * 2 / 3]) { XCTAssertEqual(try XCTUnwrap(got), want, accuracy: 1e-12) }
    }

    /// `buddy eval pool-auto`, by hand. Share rule: auto's KL sums 3, 0, 4 (7 over 40 tokens),
    /// the fixed budget's 2, 4, 2 (8): R = 7/8, −12.5 %, s.e. √(3/2 · (1.25² + 3.5² + 2.25²)) / 8
    /// = 66.5 %; the coin's 2.5, 2, 2 (6.5): +7.7 %, s.e. 53.8 %. Tolerance rule (no coin): 1, 2
    /// against 1, 1: +50 %, s.e. √(2 · 0.5) / 2 = 50 %.
    func testPooledAutoFilesMatchHandComputedValues() throws {
        let a = try write("a-auto.csv", """
            \(AutoBudgetRun.csvHeader)
            full-depth share 0.5,p1,x,0.8,0.3,0.5,10,22.0,0.2,0.25
            tolerance 0.3,p1,x,0.9,0.1,0.5,10,25.0,0.1,
            full-depth share 0.5,p2,x,1.0,0,1,10,28.0,0.4,0.2
            tolerance 0.3,p2,x,0.9,0.2,0.5,10,25.0,0.1,

            """)
        let b = try write("b-auto.csv", "\(AutoBudgetRun.csvHeader)\nfull-depth share 0.5,p3,y,0.8,0.2,0.5,20,22.0,0.1,0.1\n")
        XCTAssertEqual(try AutoBudgetRun.pooled(files: [a, b]), """
            full-depth share 0.5: 3 prompts, 1 at full depth, auto KL 0.1750; fixed, same mean compute 0.2000: -12.5 % ± 66.5 %; coin, same share 0.1625: +7.7 % ± 53.8 %
            tolerance 0.3: 2 prompts, 0 at full depth, auto KL 0.1500; fixed, same mean compute 0.1000: +50.0 % ± 50.0 %

            """)
        // Untrusted files: the problem is named.
        for (text, problem) in [("rule,id\n", "is not a CSV of buddy eval auto"),
                                ("\(AutoBudgetRun.csvHeader)\nr,p1,x,0.8,nan,0.5,10,22.0,0.2,\n", "line 2 is not a valid eval auto row"),
                                ("\(AutoBudgetRun.csvHeader)\nr,p1,x,1.5,0.1,0.5,10,22.0,0.2,\n", "line 2 is not a valid eval auto row"),
                                ("\(AutoBudgetRun.csvHeader)\nr,p1,x,0.8,0.1,0.5,10,22.0\n", "line 2 is not a valid eval auto row")] {
            let bad = try write("bad-auto.csv", text)
            XCTAssertThrowsError(try AutoBudgetRun.pooled(files: [bad])) { XCTAssertTrue("\($0)".contains(problem), "\($0)") }
        }
        XCTAssertThrowsError(try AutoBudgetRun.pooled(files: [b, b])) { XCTAssertTrue("\($0)".contains("prompt p3 under rule 'full-depth share 0.5' is already in the pool"), "\($0)") }
        XCTAssertThrowsError(try AutoBudgetRun.pooled(files: [])) { XCTAssertTrue("\($0)".contains("no eval auto CSV files"), "\($0)") }
    }

    /// The pooled held-out figures EVAL.md publishes for the share rule come out of the committed
    /// CSVs: with the entropy steering, and measured again with the chat's steering by sentence ends.
    func testPublishedPooledAutoFiguresComeFromTheCommittedFiles() throws {
        let dir = TestSupport.root.appendingPathComponent("eval")
        func pooled(_ prefix: String) throws -> String {
            let files = try FileManager.default.contentsOfDirectory(atPath: dir.path)
                .filter { $0.hasPrefix(prefix) && $0.hasSuffix("-auto.csv") }.sorted()
            XCTAssertEqual(files.count, 5, prefix)
            return try AutoBudgetRun.pooled(files: files.map { dir.appendingPathComponent($0).path })
        }
        XCTAssertEqual(try pooled("share-predictor-"),
                       "full-depth share 0.25: 400 prompts, 82 at full depth, auto KL 0.2772; fixed, same mean compute 0.3126: -11.3 % ± 2.5 %; "
                       + "coin, same share 0.2780: -0.3 % ± 2.8 %\n")
        XCTAssertEqual(try pooled("sentence-share-"),
                       "full-depth share 0.25: 400 prompts, 82 at full depth, auto KL 0.2798; fixed, same mean compute 0.3132: -10.7 % ± 2.5 %; "
                       + "coin, same share 0.2799: -0.0 % ± 2.8 %\n")
    }
}

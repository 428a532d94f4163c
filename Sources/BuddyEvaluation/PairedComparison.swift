import BuddyCore
import BuddyRouting
import Foundation

/// Two methods compared on the same items (perplexity chunks, chat prompts or HellaSwag tasks)
/// from the rows `buddy eval perplexity|chat|hellaswag --items` write: the ratio (or, for
/// accuracy, the difference) of their figures and its standard error from the per-item
/// differences.
///
/// Why paired: two layer sets scored on the same 16 chunks differ far less from each other
/// than either differs between text samples, so the s.e. of the *difference* is what says
/// whether "1.7 % behind" is a finding or noise. Items are the sampling units (clusters):
/// tokens inside a chunk or a reply are not independent.
///
/// * Perplexity: log(pplA / pplB) = Σ(nllA − nllB) / Σtokens = D. Its s.e. is the cluster
///   (ratio-estimator) formula √(n/(n−1) · Σ(dᵢ − D·tᵢ)²) / Σtᵢ with dᵢ the chunk's NLL
///   difference; reported as the percentage exp(D) − 1 with s.e. exp(D)·s.e.(D).
/// * Chat KL: R = ΣklA / ΣklB over the same replies (each prompt's reply has the same tokens
///   for both); by the delta method s.e.(R) = √(n/(n−1) · Σ(klAᵢ − R·klBᵢ)²) / ΣklB,
///   reported as the percentage R − 1.
/// * HellaSwag: the difference of the accuracies, mean(rA − rB) over tasks with r = 1 where
///   the method chose the gold ending; s.e. √((mean(d²) − mean(d)²) / (n − 1)), reported in
///   percentage points, with the discordant tasks (only A right, only B right) beside it.
public enum PairedComparison {
    public enum Kind: String, Sendable { case perplexity, chat, hellaswag }

    /// One item's figures for one cell: the summed loss (NLL or KL) and its tokens; for a
    /// HellaSwag task 1 (gold ending chosen) or 0, over one "token".
    struct Item { var loss: Double; var tokens: Int }

    public struct Row: Equatable, Sendable {
        public var budget: Double
        public var items: Int
        /// Each method's figure over the shared items: perplexity, or mean KL per token.
        public var a: Double
        public var b: Double
        /// A against B in percent (negative: A is better) and its standard error in percent;
        /// for HellaSwag the accuracy difference A − B in percentage points (positive: A is better).
        public var percent: Double
        public var standardError: Double
        /// HellaSwag only: tasks that only A (only B) got right.
        public var onlyA = 0
        public var onlyB = 0
    }

    /// Reads item files (every file of one kind) and compares methods `a` and `b` at every
    /// budget both were scored at. A method with stand-ins on is named `NAME+stand-ins`, with a
    /// stand-in file given by path `NAME+PATH`, with stand-ins off `NAME`.
    public static func compare(files: [String], a: String, b: String) throws -> (kind: Kind, rows: [Row]) {
        var kind: Kind?
        // [method: [budget: [item: Item]]]
        var cells: [String: [Double: [String: Item]]] = [:]
        for file in files {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw ToolError("cannot read items file '\(file)'") }
            let (fileKind, items) = try parse(text, name: file)
            if let kind, kind != fileKind { throw ToolError("'\(file)' holds \(fileKind.rawValue) items, the other files \(kind.rawValue) items") }
            kind = fileKind
            for (method, budget, key, item) in items {
                if let old = cells[method]?[budget]?[key], old.loss != item.loss || old.tokens != item.tokens {
                    throw ToolError("'\(file)': conflicting results for \(method) at \(String(format: "%.2f", budget)), item \(key)")
                }
                cells[method, default: [:]][budget, default: [:]][key] = item
            }
        }
        guard let kind else { throw ToolError("no items files given") }
        for m in [a, b] where cells[m] == nil {
            throw ToolError("no rows for method '\(m)' (methods present: \(cells.keys.sorted().joined(separator: ", ")))")
        }
        var rows: [Row] = []
        for budget in Set(cells[a]!.keys).intersection(cells[b]!.keys).sorted(by: >) {
            let ia = cells[a]![budget]!, ib = cells[b]![budget]!
            let keys = Set(ia.keys).intersection(ib.keys).sorted()
            if let bad = keys.first(where: { ia[$0]!.tokens != ib[$0]!.tokens }) {
                throw ToolError("item \(bad) at \(String(format: "%.2f", budget)) has \(ia[bad]!.tokens) tokens for \(a) and \(ib[bad]!.tokens) for \(b): not the same item")
            }
            if let r = row(kind, budget: budget, keys.map { (ia[$0]!, ib[$0]!) }) { rows.append(r) }
        }
        return (kind, rows)
    }

    /// The comparison over paired items (same tokens for both methods); nil with fewer than two
    /// items (no standard error) or, for chat, when B has no KL to compare with (full depth).
    static func row(_ kind: Kind, budget: Double, _ pairs: [(Item, Item)]) -> Row? {
        guard pairs.count >= 2 else { return nil }
        let n = Double(pairs.count)
        let tokens = Double(pairs.reduce(0) { $0 + $1.0.tokens })
        let lossA = pairs.reduce(0.0) { $0 + $1.0.loss }, lossB = pairs.reduce(0.0) { $0 + $1.1.loss }
        switch kind {
        case .perplexity:
            let d = (lossA - lossB) / tokens
            let spread = pairs.reduce(0.0) { s, p in let r = (p.0.loss - p.1.loss) - d * Double(p.0.tokens); return s + r * r }
            let se = (n / (n - 1) * spread).squareRoot() / tokens
            return Row(budget: budget, items: pairs.count, a: exp(lossA / tokens), b: exp(lossB / tokens),
                       percent: (exp(d) - 1) * 100, standardError: exp(d) * se * 100)
        case .chat:
            guard lossB > 0 else { return nil }
            let r = lossA / lossB
            let spread = pairs.reduce(0.0) { s, p in let u = p.0.loss - r * p.1.loss; return s + u * u }
            let se = (n / (n - 1) * spread).squareRoot() / lossB
            return Row(budget: budget, items: pairs.count, a: lossA / tokens, b: lossB / tokens,
                       percent: (r - 1) * 100, standardError: se * 100)
        case .hellaswag:
            let d = pairs.map { $0.0.loss - $0.1.loss }
            let mean = d.reduce(0, +) / n, meanSquare = d.reduce(0) { $0 + $1 * $1 } / n
            let se = (max(0, meanSquare - mean * mean) / (n - 1)).squareRoot()
            return Row(budget: budget, items: pairs.count, a: lossA / n, b: lossB / n, percent: mean * 100, standardError: se * 100,
                       onlyA: d.filter { $0 > 0 }.count, onlyB: d.filter { $0 < 0 }.count)
        }
    }

    /// `HellaSwagRun.itemHeader` as files from before stand-ins wrote it (no last column).
    static let hellaSwagHeaderWithoutStandIns = "method,budget,kv_policy,task,gold,chosen"

    /// Rows of one items file: (method, budget, item key, item). Untrusted text: every line is
    /// checked and a bad one is named.
    static func parse(_ text: String, name: String) throws -> (Kind, [(String, Double, String, Item)]) {
        var lines = text.split(whereSeparator: \.isNewline).map { $0.hasSuffix("\r") ? String($0.dropLast()) : String($0) }
        guard let header = lines.first else { throw ToolError("'\(name)' is empty") }
        lines.removeFirst()
        // Per kind: the columns, and where the stand-in mode, the item key and the figures are.
        let kind: Kind, columns: Int, standIns: Int?, key: Int
        switch header {
        case PerplexityRun.itemHeader: (kind, columns, standIns, key) = (.perplexity, 7, 3, 4)
        case ChatFidelityRun.itemHeader: (kind, columns, standIns, key) = (.chat, 8, 3, 4)
        case HellaSwagRun.itemHeader: (kind, columns, standIns, key) = (.hellaswag, 7, 6, 3)
        case hellaSwagHeaderWithoutStandIns: (kind, columns, standIns, key) = (.hellaswag, 6, nil, 3)
        default: throw ToolError("'\(name)' is not an items file of buddy eval perplexity, chat or hellaswag (header '\(header.prefix(80))')")
        }
        var out: [(String, Double, String, Item)] = []
        for (i, line) in lines.enumerated() where !line.isEmpty {
            let f = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            func item() -> Item? {
                guard f.count == columns, !f[key].isEmpty else { return nil }
                if kind == .hellaswag {
                    guard let gold = Int(f[4]), let chosen = Int(f[5]), gold >= 0, chosen >= 0 else { return nil }
                    return Item(loss: gold == chosen ? 1 : 0, tokens: 1)
                }
                guard let loss = Double(f[5]), loss.isFinite, loss >= 0, let tokens = Int(f[columns - 1]), tokens > 0 else { return nil }
                return Item(loss: loss, tokens: tokens)
            }
            guard let budget = Double(f[1]), budget > 0, budget <= 1, let item = item() else {
                throw ToolError("'\(name)' line \(i + 2) is not a valid \(kind.rawValue) item: '\(line.prefix(80))'")
            }
            // Stand-ins on: NAME+stand-ins; off (or not recorded): NAME; a stand-in file given by path: NAME+PATH.
            let mode = standIns.map { f[$0] } ?? "off"
            let method = mode == "on" ? f[0] + "+stand-ins" : mode == "off" ? f[0] : f[0] + "+" + mode
            out.append((method, budget, f[key], item))
        }
        return (kind, out)
    }

    /// The rows as CSV (budget,items,a,b,percent,standard_error).
    public static func csv(_ rows: [Row]) -> String {
        "budget,items,a,b,percent,standard_error\n" + rows.map {
            String(format: "%.2f,%d,%.6g,%.6g,%.4f,%.4f\n", $0.budget, $0.items, $0.a, $0.b, $0.percent, $0.standardError)
        }.joined()
    }

    /// A markdown table of the rows.
    public static func markdown(_ kind: Kind, _ rows: [Row], a: String, b: String) -> String {
        if kind == .hellaswag {
            var s = "| budget | n | \(a) | \(b) | difference | paired s.e. | difference / s.e. | \(a) only right | \(b) only right |\n"
            s += "|---|---|---|---|---|---|---|---|---|\n"
            for r in rows {
                let z = r.standardError > 0 ? String(format: "%+.1f", r.percent / r.standardError) : "-"
                s += String(format: "| %.2f | %d | %.4f | %.4f | %+.4f | %.4f | %@ | %d | %d |\n",
                            r.budget, r.items, r.a, r.b, r.percent / 100, r.standardError / 100, z, r.onlyA, r.onlyB)
            }
            return s
        }
        let what = kind == .perplexity ? "ppl" : "KL"
        var s = "| budget | \(kind == .perplexity ? "chunks" : "prompts") | \(what) \(a) | \(what) \(b) | \(a) against \(b) | paired s.e. | difference / s.e. |\n"
        s += "|---|---|---|---|---|---|---|\n"
        for r in rows {
            let z = r.standardError > 0 ? String(format: "%+.1f", r.percent / r.standardError) : "-"
            s += String(format: kind == .perplexity ? "| %.2f | %d | %.3f | %.3f | %+.1f %% | %.1f %% | %@ |\n" : "| %.2f | %d | %.4f | %.4f | %+.1f %% | %.1f %% | %@ |\n",
                        r.budget, r.items, r.a, r.b, r.percent, r.standardError, z)
        }
        return s
    }
}

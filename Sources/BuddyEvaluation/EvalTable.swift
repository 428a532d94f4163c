import BuddyCore
import BuddyRouting
import Foundation

/// Results of one `buddy eval` grid: one row per method and budget with named metrics.
/// Prints as Markdown, writes CSV (method,budget,kv_policy,<metrics…>) and plots the
/// headline metric against budget as SVG.
public struct EvalTable {
    public struct Row {
        public var method: String
        public var budget: Double
        public var standIns: String
        public var values: [Double]
    }
    /// CSV column names of the metrics, in order; the first is the one plotted.
    public let metrics: [String]
    /// Markdown header per metric (may add units).
    public let headers: [String]
    /// printf formats per metric.
    public let formats: [String]
    public let kvPolicy: String
    /// Extra Markdown-only columns computed from a row's metrics (e.g. a standard error).
    public var derived: [(header: String, cell: ([Double]) -> String)] = []
    public var rows: [Row] = []

    public init(metrics: [String], headers: [String], formats: [String], kvPolicy: String) {
        self.metrics = metrics
        self.headers = headers
        self.formats = formats
        self.kvPolicy = kvPolicy
    }

    public mutating func add(_ method: String, _ budget: Double, _ values: [Double], standIns: String = "off") {
        rows.append(Row(method: method, budget: budget, standIns: standIns, values: values))
    }

    /// The full-depth row already measured (budget 1 runs every layer: the same for every
    /// method and stand-in mode).
    public var fullDepth: Row? { rows.first { $0.budget >= 1 } }

    public func markdown() -> String {
        let all = headers + derived.map(\.header)
        var s = "| method | budget | kv_policy | stand_ins | " + all.joined(separator: " | ") + " |\n"
        s += "|---|---|---|---|" + String(repeating: "---|", count: all.count) + "\n"
        for r in rows {
            let cells = zip(formats, r.values).map { String(format: $0, $1) } + derived.map { $0.cell(r.values) }
            s += String(format: "| %@ | %.2f | %@ | %@ | ", r.method, r.budget, kvPolicy, r.standIns) + cells.joined(separator: " | ") + " |\n"
        }
        return s
    }

    public func csv() -> String {
        var s = "method,budget,kv_policy,stand_ins," + metrics.joined(separator: ",") + "\n"
        for r in rows {
            s += String(format: "%@,%.2f,%@,%@,", r.method, r.budget, kvPolicy, r.standIns) + r.values.map { v in
                v == v.rounded() && abs(v) < 1e15 ? String(Int(v)) : String(format: "%.6g", v)
            }.joined(separator: ",") + "\n"
        }
        return s
    }

    /// Writes the CSV and the plot if asked for.
    public func save(csv csvPath: String?, plot plotPath: String?, title: String, logScale: Bool) throws {
        if let csvPath { try AtomicFile.write(Data(csv().utf8), to: csvPath) }
        if let plotPath {
            var series: [(String, [(Double, Double)])] = []
            for r in rows {
                // One line per method and stand-in mode when the table holds both modes.
                let name = Set(rows.map(\.standIns)).count > 1 ? "\(r.method) (stand-ins \(r.standIns))" : r.method
                if let i = series.firstIndex(where: { $0.0 == name }) { series[i].1.append((r.budget, r.values[0])) } else {
                    series.append((name, [(r.budget, r.values[0])]))
                }
            }
            let svg = SVGPlot(title: title, xLabel: "compute budget (fraction of routable layers run)", yLabel: headers[0],
                              logY: logScale, series: series).render()
            try AtomicFile.write(Data(svg.utf8), to: plotPath)
        }
    }
}

/// A small line chart as standalone SVG: quality against budget, one line per method.
public struct SVGPlot {
    public let title: String
    public let xLabel: String
    public let yLabel: String
    public let logY: Bool
    public let series: [(String, [(Double, Double)])]

    public init(title: String, xLabel: String, yLabel: String, logY: Bool, series: [(String, [(Double, Double)])]) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.logY = logY
        self.series = series
    }

    public static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]

    public func render(width: Double = 720, height: Double = 440) -> String {
        let left = 80.0, right = 150.0, top = 40.0, bottom = 60.0
        let pw = width - left - right, ph = height - top - bottom
        let points = series.flatMap { $0.1 }.filter { $0.1.isFinite && (!logY || $0.1 > 0) }
        let xs = points.map(\.0), ys = points.map { logY ? log10($0.1) : $0.1 }
        var x0 = xs.min() ?? 0, x1 = xs.max() ?? 1
        var y0 = ys.min() ?? 0, y1 = ys.max() ?? 1
        if x1 - x0 < 1e-9 { x0 -= 0.05; x1 += 0.05 }
        if y1 - y0 < 1e-9 { y0 -= 0.5; y1 += 0.5 }
        let pad = (y1 - y0) * 0.05
        y0 -= pad; y1 += pad
        func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * pw }
        func py(_ y: Double) -> Double { top + ph - ((logY ? log10(y) : y) - y0) / (y1 - y0) * ph }
        func esc(_ s: String) -> String {
            s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
        }
        var s = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(width / 2)" y="22" text-anchor="middle" font-size="15">\(esc(title))</text>
            <rect x="\(left)" y="\(top)" width="\(pw)" height="\(ph)" fill="none" stroke="#444"/>

            """
        // X ticks at the measured budgets.
        for x in Set(xs).sorted() {
            s += "<line x1=\"\(px(x))\" y1=\"\(top + ph)\" x2=\"\(px(x))\" y2=\"\(top + ph + 5)\" stroke=\"#444\"/>"
            s += "<text x=\"\(px(x))\" y=\"\(top + ph + 18)\" text-anchor=\"middle\">\(String(format: "%.2f", x))</text>\n"
        }
        // Y ticks: powers of ten (and 2×, 5×) on a log axis, five even steps otherwise.
        var ticks: [Double] = []
        if logY {
            var p = floor(y0)
            while p <= ceil(y1) {
                for m in [1.0, 2.0, 5.0] { let v = m * pow(10, p); if log10(v) >= y0 && log10(v) <= y1 { ticks.append(v) } }
                p += 1
            }
        } else {
            ticks = (0...5).map { y0 + (y1 - y0) * Double($0) / 5 }
        }
        for v in ticks {
            let y = py(v)
            s += "<line x1=\"\(left)\" y1=\"\(y)\" x2=\"\(left + pw)\" y2=\"\(y)\" stroke=\"#ddd\"/>"
            s += "<text x=\"\(left - 6)\" y=\"\(y + 4)\" text-anchor=\"end\">\(String(format: v >= 100 ? "%.0f" : (v >= 1 ? "%.1f" : "%.3f"), v))</text>\n"
        }
        s += "<text x=\"\(left + pw / 2)\" y=\"\(height - 15)\" text-anchor=\"middle\">\(esc(xLabel))</text>\n"
        s += "<text transform=\"translate(18 \(top + ph / 2)) rotate(-90)\" text-anchor=\"middle\">\(esc(yLabel))\(logY ? " (log scale)" : "")</text>\n"
        for (i, (name, pts)) in series.enumerated() {
            let colour = SVGPlot.palette[i % SVGPlot.palette.count]
            let valid = pts.filter { $0.1.isFinite && (!logY || $0.1 > 0) }.sorted { $0.0 < $1.0 }
            let path = valid.map { String(format: "%.1f,%.1f", px($0.0), py($0.1)) }.joined(separator: " ")
            s += "<polyline points=\"\(path)\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"2\"/>\n"
            for p in valid { s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%@\"/>", px(p.0), py(p.1), colour) }
            let ly = top + 10 + Double(i) * 20
            s += "<line x1=\"\(left + pw + 15)\" y1=\"\(ly)\" x2=\"\(left + pw + 40)\" y2=\"\(ly)\" stroke=\"\(colour)\" stroke-width=\"2\"/>"
            s += "<text x=\"\(left + pw + 46)\" y=\"\(ly + 4)\">\(esc(name))</text>\n"
        }
        return s + "</svg>\n"
    }
}

extension EvalTable {
    /// The table of one metric read back from the eval CSV at `path` (see `read(csv:metric:path:)`).
    public static func read(csvAt path: String, metric: String?) throws -> (table: EvalTable, metric: String) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw ToolError("cannot read '\(path)'") }
        return try read(csv: text, metric: metric, path: path)
    }

    /// The table of one metric read back from an eval CSV (method,budget,kv_policy[,stand_ins],<metrics…>),
    /// `metric` by default the first metric column; `path` names the file in errors.
    public static func read(csv text: String, metric: String?, path: String) throws -> (table: EvalTable, metric: String) {
        let lines = text.split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        guard let header = lines.first, header.count >= 4, header[0] == "method", header[1] == "budget" else {
            throw ToolError("'\(path)' is not an eval CSV (expected a header starting method,budget,kv_policy)")
        }
        // CSVs from before stand-ins have no stand_ins column.
        let standInColumn = header.firstIndex(of: "stand_ins")
        let firstMetric = standInColumn.map { $0 + 1 } ?? 3
        guard header.count > firstMetric else { throw ToolError("'\(path)' has no metric columns") }
        let name = metric ?? header[firstMetric]
        guard let col = header.firstIndex(of: name), col >= firstMetric else { throw ToolError("'\(path)' has no column '\(name)' (columns: \(header.dropFirst(firstMetric).joined(separator: ", ")))") }
        var table = EvalTable(metrics: [name], headers: [name], formats: ["%g"], kvPolicy: "")
        for (i, row) in lines.dropFirst().enumerated() {
            guard row.count == header.count, let b = Double(row[1]), let v = Double(row[col]) else {
                throw ToolError("'\(path)' line \(i + 2): expected \(header.count) fields with numbers for budget and \(name)")
            }
            table.add(row[0], b, [v], standIns: standInColumn.map { row[$0] } ?? "off")
        }
        return (table, name)
    }
}

/// Minimal JSON string escaping (RFC 8259).
public func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}

/// A JSON number with three decimals, null when not finite.
public func jsonNumber(_ x: Double) -> String { x.isFinite ? String(format: "%.3f", x) : "null" }

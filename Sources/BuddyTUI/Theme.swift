import Foundation

/// Semantic roles the widgets draw with; themes give each a colour.
public enum Role: Hashable, Sendable {
    case text, user, assistant, system, notice, error, border, title, dim
    case layerOn, layerOff, layerFixed, marker
    case heat(Int)
    case slider, sliderZone, sliderKnob, sliderWarn
    case status, statusKey
    case input, inputPrompt

    /// Shades of the router-score heat scale.
    public static let heatLevels = 6
    public static let all: [Role] = [.text, .user, .assistant, .system, .notice, .error, .border, .title, .dim,
                                     .layerOn, .layerOff, .layerFixed, .marker,
                                     .slider, .sliderZone, .sliderKnob, .sliderWarn, .status, .statusKey, .input, .inputPrompt]
        + (0..<Role.heatLevels).map { Role.heat($0) }
}

/// A colour as a theme writes it.
public enum ThemeColor: Equatable, Sendable {
    case terminalDefault
    case rgb(UInt8, UInt8, UInt8)
    /// xterm palette index 0–255 (0–15 are the ANSI colours).
    case index(Int)

    static let ansiNames = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"]

    /// "#RRGGBB", "0".."255", an ANSI name ("red", "bright-blue", "brightblue"), or "default"/"none".
    public static func parse(_ s: String) -> ThemeColor? {
        let v = s.trimmingCharacters(in: .whitespaces).lowercased()
        if v == "default" || v == "none" || v == "" { return .terminalDefault }
        if v.hasPrefix("#") {
            let hex = v.dropFirst()
            guard hex.count == 6, let n = UInt32(hex, radix: 16) else { return nil }
            return .rgb(UInt8(n >> 16), UInt8((n >> 8) & 0xff), UInt8(n & 0xff))
        }
        if let n = Int(v) { return (0...255).contains(n) ? .index(n) : nil }
        var name = v
        var bright = false
        for p in ["bright-", "bright_", "bright"] where name.hasPrefix(p) { name.removeFirst(p.count); bright = true; break }
        if name == "grey" || name == "gray" { return .index(bright ? 7 : 8) }
        guard let i = ansiNames.firstIndex(of: name) else { return nil }
        return .index(i + (bright ? 8 : 0))
    }

    /// The standard xterm RGB of a palette index.
    public static func rgbOf(index n: Int) -> (Int, Int, Int) {
        let ansi: [(Int, Int, Int)] = [(0, 0, 0), (205, 0, 0), (0, 205, 0), (205, 205, 0), (0, 0, 238), (205, 0, 205), (0, 205, 205), (229, 229, 229),
                                       (127, 127, 127), (255, 0, 0), (0, 255, 0), (255, 255, 0), (92, 92, 255), (255, 0, 255), (0, 255, 255), (255, 255, 255)]
        if n < 16 { return ansi[max(0, n)] }
        if n >= 232 { let g = 8 + (n - 232) * 10; return (g, g, g) }
        let c = n - 16
        let step = [0, 95, 135, 175, 215, 255]
        return (step[c / 36], step[(c / 6) % 6], step[c % 6])
    }

    var rgb: (Int, Int, Int)? {
        switch self {
        case .terminalDefault: return nil
        case let .rgb(r, g, b): return (Int(r), Int(g), Int(b))
        case let .index(n): return ThemeColor.rgbOf(index: n)
        }
    }
}

/// What the terminal can show.
public enum ColorDepth: Int, Comparable, Sendable {
    case mono = 0, ansi8 = 8, ansi16 = 16, palette256 = 256, truecolor = 16_777_216
    public static func < (a: ColorDepth, b: ColorDepth) -> Bool { a.rawValue < b.rawValue }

    /// From the number of colours curses reports and the environment (NO_COLOR wins).
    public static func detect(colors: Int, hasColors: Bool, environment: [String: String]) -> ColorDepth {
        if let nc = environment["NO_COLOR"], !nc.isEmpty { return .mono }
        guard hasColors else { return .mono }
        if colors >= 16_777_216 { return .truecolor }
        if colors >= 256 { return .palette256 }
        if colors >= 16 { return .ansi16 }
        if colors >= 8 { return .ansi8 }
        return .mono
    }

    /// The colour number to hand curses for `c` at this depth: -1 = terminal default, nil = no colour.
    public func cursesColor(_ c: ThemeColor) -> Int? {
        if self == .mono { return nil }
        if c == .terminalDefault { return -1 }
        switch (self, c) {
        case let (.truecolor, .rgb(r, g, b)): return Int(r) << 16 | Int(g) << 8 | Int(b)
        case let (.truecolor, .index(n)) where n >= 16:
            let (r, g, b) = ThemeColor.rgbOf(index: n); return r << 16 | g << 8 | b
        case let (.truecolor, .index(n)), let (.palette256, .index(n)): return n
        case (.palette256, .rgb): return ColorDepth.nearest256(c.rgb!)
        case let (.ansi16, .index(n)) where n < 16: return n
        case let (.ansi8, .index(n)) where n < 16: return n % 8
        default:
            return ColorDepth.nearest(c.rgb!, among: self == .ansi16 ? 16 : 8)
        }
    }

    static func dist(_ a: (Int, Int, Int), _ b: (Int, Int, Int)) -> Int {
        let dr = a.0 - b.0, dg = a.1 - b.1, db = a.2 - b.2
        return 2 * dr * dr + 4 * dg * dg + 3 * db * db
    }

    static func nearest(_ c: (Int, Int, Int), among n: Int) -> Int {
        (0..<n).min { dist(c, ThemeColor.rgbOf(index: $0)) < dist(c, ThemeColor.rgbOf(index: $1)) }!
    }

    /// Nearest of the 6×6×6 cube and the grey ramp (the first 16 vary between terminals).
    static func nearest256(_ c: (Int, Int, Int)) -> Int {
        (16..<256).min { dist(c, ThemeColor.rgbOf(index: $0)) < dist(c, ThemeColor.rgbOf(index: $1)) }!
    }
}

/// A theme: a colour per key. Files are flat `key = "value"` lines; `#` starts a comment.
public struct Theme: Equatable, Sendable {
    public var name: String
    public var colors: [String: ThemeColor]

    /// Every key a theme may set, with the built-in default (the `default` theme).
    public static let keys: [(String, String)] = [
        ("background", "default"), ("foreground", "default"),
        ("user", "#7aa2f7"), ("assistant", "default"), ("system", "#9aa5ce"),
        ("notice", "#a0a8b8"), ("error", "#f7768e"), ("border", "#565f89"), ("title", "#bb9af7"), ("dim", "#6b7089"),
        ("layer_on", "#9ece6a"), ("layer_off", "#3b4261"), ("layer_fixed", "#7dcfff"), ("marker", "#ff9e64"),
        ("heat_start", "#2f5d50"), ("heat_mid", "#9ece6a"), ("heat_end", "#e0af68"),
        ("slider", "#7aa2f7"), ("slider_zone", "#9ece6a"), ("slider_knob", "#ffffff"), ("slider_warn", "#e0af68"),
        ("status_fg", "#c0caf5"), ("status_bg", "#24283b"), ("status_key", "#ff9e64"),
        ("input", "default"), ("input_prompt", "#7aa2f7"),
    ]

    public static let builtin: Theme = {
        var c: [String: ThemeColor] = [:]
        for (k, v) in keys { c[k] = ThemeColor.parse(v)! }
        return Theme(name: "default", colors: c)
    }()

    /// Parses a theme file. Unknown keys, bad lines and bad colours become warnings; a
    /// missing key takes the default theme's colour.
    public static func parse(_ text: String, name: String) -> (Theme, [String]) {
        var theme = builtin
        theme.name = name
        var warnings: [String] = []
        let known = Set(keys.map(\.0))
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = Substring(raw)
            // A comment starts at a '#' outside quotes.
            var inQuotes = false
            for idx in line.indices {
                if line[idx] == "\"" { inQuotes.toggle() }
                if line[idx] == "#" && !inQuotes { line = line[..<idx]; break }
            }
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.isEmpty { continue }
            guard let eq = t.firstIndex(of: "=") else {
                warnings.append("\(name).theme line \(i + 1): expected key = \"value\""); continue
            }
            let key = t[..<eq].trimmingCharacters(in: .whitespaces)
            var value = t[t.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2 && value.hasPrefix("\"") && value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            guard known.contains(key) else { warnings.append("\(name).theme line \(i + 1): unknown key '\(key)'"); continue }
            guard let c = ThemeColor.parse(value) else {
                warnings.append("\(name).theme line \(i + 1): bad colour '\(value)' for \(key) (use #RRGGBB, 0-255 or an ANSI name)"); continue
            }
            theme.colors[key] = c
        }
        return (theme, warnings)
    }

    /// Directories searched for NAME.theme: $BUDDY_THEMES, ./themes, then themes/ next to
    /// the executable and up to four levels above it (the checkout).
    public static func searchPath() -> [String] {
        var dirs: [String] = []
        if let e = ProcessInfo.processInfo.environment["BUDDY_THEMES"], !e.isEmpty { dirs.append(e) }
        dirs.append(FileManager.default.currentDirectoryPath + "/themes")
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<5 { dirs.append(dir.appendingPathComponent("themes").path); dir = dir.deletingLastPathComponent() }
        return dirs
    }

    /// Loads a theme by name or path. A missing or unreadable theme gives the built-in
    /// default and a warning; never throws.
    public static func load(_ nameOrPath: String, searchPath: [String] = Theme.searchPath()) -> (Theme, [String]) {
        let fm = FileManager.default
        var path: String?
        if nameOrPath.contains("/") || nameOrPath.hasSuffix(".theme") {
            path = nameOrPath
        } else {
            path = searchPath.map { "\($0)/\(nameOrPath).theme" }.first { fm.fileExists(atPath: $0) }
        }
        guard let p = path, let data = fm.contents(atPath: p), let text = String(data: data, encoding: .utf8) else {
            if nameOrPath == "default" { return (builtin, []) }
            return (builtin, ["theme '\(nameOrPath)' not found (looked in \(searchPath.first ?? "themes/") and themes/ next to buddy); using the default"])
        }
        let n = URL(fileURLWithPath: p).deletingPathExtension().lastPathComponent
        return parse(text, name: n)
    }

    /// True when every colour is the terminal's own (the mono theme): attributes only.
    public var isMonochrome: Bool { colors.values.allSatisfy { $0 == .terminalDefault } }

    func color(_ key: String) -> ThemeColor { colors[key] ?? Theme.builtin.colors[key] ?? .terminalDefault }

    /// A colour between heat_start, heat_mid and heat_end for level 0 ..< heatLevels.
    public func heat(_ level: Int) -> ThemeColor {
        let a = color("heat_start"), m = color("heat_mid"), b = color("heat_end")
        let t = Double(level) / Double(max(1, Role.heatLevels - 1))
        guard let ca = a.rgb, let cm = m.rgb, let cb = b.rgb else { return t < 0.5 ? a : b }
        func mix(_ x: (Int, Int, Int), _ y: (Int, Int, Int), _ f: Double) -> ThemeColor {
            func ch(_ p: Int, _ q: Int) -> UInt8 { UInt8(max(0, min(255, Int((Double(p) + (Double(q) - Double(p)) * f).rounded())))) }
            return .rgb(ch(x.0, y.0), ch(x.1, y.1), ch(x.2, y.2))
        }
        return t <= 0.5 ? mix(ca, cm, t * 2) : mix(cm, cb, (t - 0.5) * 2)
    }

    /// Foreground and background colour of a role.
    public func colors(for role: Role) -> (fg: ThemeColor, bg: ThemeColor) {
        let bg = color("background")
        let fg: ThemeColor
        switch role {
        case .text: fg = color("foreground")
        case .user: fg = color("user")
        case .assistant: fg = color("assistant") == .terminalDefault ? color("foreground") : color("assistant")
        case .system: fg = color("system")
        case .notice: fg = color("notice")
        case .error: fg = color("error")
        case .border: fg = color("border")
        case .title: fg = color("title")
        case .dim: fg = color("dim")
        case .layerOn: fg = color("layer_on")
        case .layerOff: fg = color("layer_off")
        case .layerFixed: fg = color("layer_fixed")
        case .marker: fg = color("marker")
        case let .heat(l): fg = heat(l)
        case .slider: fg = color("slider")
        case .sliderZone: fg = color("slider_zone")
        case .sliderKnob: fg = color("slider_knob")
        case .sliderWarn: fg = color("slider_warn")
        case .status: return (color("status_fg"), color("status_bg"))
        case .statusKey: return (color("status_key"), color("status_bg"))
        case .input: fg = color("input") == .terminalDefault ? color("foreground") : color("input")
        case .inputPrompt: fg = color("input_prompt")
        }
        return (fg, bg)
    }
}

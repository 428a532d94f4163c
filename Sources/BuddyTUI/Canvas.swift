/// A rectangle of terminal cells.
public struct Rect: Equatable, Sendable {
    public var x, y, width, height: Int
    public init(x: Int, y: Int, width: Int, height: Int) {
        self.x = x; self.y = y; self.width = max(0, width); self.height = max(0, height)
    }
    public var maxX: Int { x + width }
    public var maxY: Int { y + height }
    public var isEmpty: Bool { width <= 0 || height <= 0 }
}

/// Where widgets draw: the curses screen, or a grid of characters in tests.
public protocol Canvas: AnyObject {
    var width: Int { get }
    var height: Int { get }
    /// Text at (x, y), clipped to the canvas; `s` holds no newlines.
    func put(_ x: Int, _ y: Int, _ s: String, _ role: Role)
}

extension Canvas {
    /// `s` clipped to `columns` columns starting at x.
    public func put(_ x: Int, _ y: Int, _ s: String, _ role: Role, columns: Int) {
        guard columns > 0 else { return }
        put(x, y, TextWidth.prefix(s, columns: columns), role)
    }
    public func fill(_ r: Rect, _ role: Role = .text) {
        guard !r.isEmpty else { return }
        let blank = String(repeating: " ", count: r.width)
        for y in r.y..<r.maxY { put(r.x, y, blank, role) }
    }
}

/// A canvas of characters and roles, for tests and for rendering without a terminal.
public final class TextCanvas: Canvas {
    public let width: Int
    public let height: Int
    /// Cells: a character, or "" for the right half of a wide one.
    public private(set) var cells: [[String]]
    public private(set) var roles: [[Role]]

    public init(width: Int, height: Int) {
        self.width = width
        self.height = height
        cells = Array(repeating: Array(repeating: " ", count: width), count: height)
        roles = Array(repeating: Array(repeating: .text, count: width), count: height)
    }

    public func put(_ x: Int, _ y: Int, _ s: String, _ role: Role) {
        guard y >= 0, y < height else { return }
        var cx = x
        for c in s {
            let w = TextWidth.width(c)
            if w == 0 { continue }
            if cx + w > width { break }
            if cx >= 0 {
                cells[y][cx] = String(c)
                roles[y][cx] = role
                if w == 2 { cells[y][cx + 1] = ""; roles[y][cx + 1] = role }
            }
            cx += w
        }
    }

    public func line(_ y: Int) -> String { cells[y].joined() }
    public var text: String { (0..<height).map { line($0) }.joined(separator: "\n") }
}

/// Where each part of the screen goes for a terminal size. Pure: tested without a terminal.
public struct Layout: Equatable, Sendable {
    public static let minWidth = 50
    public static let minHeight = 12

    public var conversation: Rect
    public var panel: Rect
    public var slider: Rect
    public var input: Rect
    public var status: Rect
    public var tooSmall: Bool

    /// - inputLines: lines the input box wants (it gets at most a quarter of the screen).
    public init(width: Int, height: Int, inputLines: Int = 1) {
        tooSmall = width < Layout.minWidth || height < Layout.minHeight
        let inH = max(1, min(inputLines, max(1, height / 4)))
        status = Rect(x: 0, y: height - 1, width: width, height: 1)
        input = Rect(x: 0, y: height - 1 - inH, width: width, height: inH)
        slider = Rect(x: 0, y: input.y - 1, width: width, height: 1)
        let mainH = max(0, slider.y)
        // The routing panel: enough for a label, a usable grid and a usage bar; wider
        // terminals give it about 40% of the width.
        let panelW = width >= 120 ? max(44, width * 2 / 5) : min(32, max(26, width * 3 / 8))
        panel = Rect(x: width - panelW, y: 0, width: panelW, height: mainH)
        conversation = Rect(x: 0, y: 0, width: width - panelW, height: mainH)
    }
}

import BuddyTUI
import XCTest

final class TextWidthTests: XCTestCase {
    override func setUp() { TextWidth.prepareLocale() }

    func testWidths() {
        XCTAssertEqual(TextWidth.width("a"), 1)
        XCTAssertEqual(TextWidth.width("日"), 2)
        XCTAssertEqual(TextWidth.width("한"), 2)
        XCTAssertEqual(TextWidth.width("👍"), 2)
        XCTAssertEqual(TextWidth.width("👍🏽"), 2)
        XCTAssertEqual(TextWidth.width("👨‍👩‍👧"), 2)
        XCTAssertEqual(TextWidth.width("e\u{301}"), 1, "a combining accent adds no width")
        XCTAssertEqual(TextWidth.width("日本語 ok"), 9)
        XCTAssertEqual(TextWidth.width("\u{1}"), 0)
    }

    func testWrapRespectsWidthAndKeepsWords() {
        let text = "The quick brown fox jumps over the lazy dog and keeps running far away."
        for cols in [7, 10, 17, 40] {
            let lines = TextWidth.wrap(text, columns: cols)
            XCTAssertTrue(lines.allSatisfy { TextWidth.width($0) <= cols }, "\(cols): \(lines)")
            XCTAssertEqual(lines.joined(separator: " ").split(separator: " "), text.split(separator: " "))
        }
        XCTAssertEqual(TextWidth.wrap("aaa bbb ccc", columns: 7), ["aaa bbb", "ccc"])
        XCTAssertEqual(TextWidth.wrap("abcdefghij", columns: 4), ["abcd", "efgh", "ij"])
        XCTAssertEqual(TextWidth.wrap("one\n\ntwo", columns: 10), ["one", "", "two"])
        XCTAssertEqual(TextWidth.wrap("    indented code", columns: 40), ["    indented code"])
    }

    func testWrapWideCharacters() {
        // Eight CJK characters are sixteen columns: at 5 columns a wide character never straddles the edge.
        let lines = TextWidth.wrap("日本語のテキスト", columns: 5)
        XCTAssertEqual(lines, ["日本", "語の", "テキ", "スト"])
        let mixed = TextWidth.wrap("Hello 世界, emoji 👍🏽 fine", columns: 8)
        XCTAssertTrue(mixed.allSatisfy { TextWidth.width($0) <= 8 }, "\(mixed)")
        XCTAssertEqual(mixed.joined(separator: " ").filter { !$0.isWhitespace }, "Hello世界,emoji👍🏽fine")
        XCTAssertEqual(TextWidth.truncate("日本語テキスト", columns: 6), "日本…")
        XCTAssertEqual(TextWidth.pad("日本", columns: 6), "日本  ")
    }

    func testTextCanvasPlacesWideCharacters() {
        let c = TextCanvas(width: 6, height: 1)
        c.put(0, 0, "a日b", .text)
        XCTAssertEqual(c.line(0), "a日b  ")
        c.put(4, 0, "語x", .text)
        XCTAssertEqual(c.line(0), "a日b語", "clipped at the edge")
        let d = TextCanvas(width: 3, height: 1)
        d.put(2, 0, "日", .text)
        XCTAssertEqual(d.line(0), "   ", "a wide character that does not fit is not drawn")
    }
}

final class LayoutTests: XCTestCase {
    func check(_ l: Layout, _ w: Int, _ h: Int) {
        XCTAssertFalse(l.tooSmall)
        XCTAssertEqual(l.status.y, h - 1)
        XCTAssertEqual(l.input.maxY, l.status.y)
        XCTAssertEqual(l.slider.maxY, l.input.y)
        XCTAssertEqual(l.conversation.maxY, l.slider.y)
        XCTAssertEqual(l.panel.maxY, l.slider.y)
        XCTAssertEqual(l.conversation.maxX, l.panel.x)
        XCTAssertEqual(l.panel.maxX, w)
        for r in [l.status, l.input, l.slider] { XCTAssertEqual(r.width, w) }
    }

    func testStandardSizes() {
        let small = Layout(width: 80, height: 24)
        check(small, 80, 24)
        XCTAssertEqual(small.conversation.height, 21)
        XCTAssertGreaterThanOrEqual(small.conversation.width, 44)
        XCTAssertTrue(RoutingPanel.compact(layers: 30, height: small.panel.height), "30 layers fold into 15 rows at 80×24")
        let big = Layout(width: 160, height: 48)
        check(big, 160, 48)
        XCTAssertGreaterThan(big.panel.width, small.panel.width, "larger terminals give the panel more steps")
        XCTAssertFalse(RoutingPanel.compact(layers: 30, height: big.panel.height), "one row per layer at 160×48")
    }

    func testInputGrowsUpToAQuarter() {
        let l = Layout(width: 80, height: 24, inputLines: 3)
        check(l, 80, 24)
        XCTAssertEqual(l.input.height, 3)
        XCTAssertEqual(Layout(width: 80, height: 24, inputLines: 50).input.height, 6)
    }

    func testTooSmall() {
        XCTAssertTrue(Layout(width: 40, height: 24).tooSmall)
        XCTAssertTrue(Layout(width: 80, height: 8).tooSmall)
        let app = ChatApp()
        let c = TextCanvas(width: 30, height: 8)
        XCTAssertNil(app.draw(on: c))
        XCTAssertTrue(c.text.contains("Terminal too small"))
    }
}

import BuddyEngine
import BuddyTUI
import XCTest

/// Keys as the terminal layer decodes them from characters.
final class KeyDecoderTests: XCTestCase {
    func decode(_ codes: [UInt32]) -> Key {
        var rest = codes.dropFirst()
        return KeyDecoder.decode(codes[0]) { rest.popFirst() }
    }

    func testCharactersControlsAndAlt() {
        XCTAssertEqual(decode([13]), .enter)
        XCTAssertEqual(decode([10]), .newline)
        XCTAssertEqual(decode([9]), .tab)
        XCTAssertEqual(decode([127]), .backspace)
        XCTAssertEqual(decode([8]), .backspace)
        XCTAssertEqual(decode([1]), .ctrl("a"))
        XCTAssertEqual(decode([3]), .ctrl("c"))
        XCTAssertEqual(decode([26]), .ctrl("z"))
        XCTAssertEqual(decode([UInt32(UInt8(ascii: "x"))]), .char("x"))
        XCTAssertEqual(decode([0x4E16]), .char("世"))
        XCTAssertEqual(decode([0x1F600]), .char("😀"))
        // Esc alone, and Esc followed at once by a key (Alt).
        XCTAssertEqual(decode([27]), .escape)
        XCTAssertEqual(decode([27, UInt32(UInt8(ascii: "-"))]), .alt("-"))
        XCTAssertEqual(decode([27, 13]), .altEnter)
        XCTAssertEqual(decode([27, 10]), .altEnter)
        XCTAssertEqual(decode([27, 127]), .altBackspace)
        XCTAssertEqual(decode([27, KeyDecoder.pasteStartAfterEscape]), .pasteStart)
        // Codes that are no character (surrogates) never crash.
        XCTAssertEqual(decode([0xD800]), .escape)
        XCTAssertEqual(decode([27, 0xD800]), .escape)
    }

    /// The decoded keys drive the app: Alt-minus moves the slider even with text typed.
    func testDecodedKeysDriveTheApp() {
        let app = ChatApp()
        app.handle(.budget(1, k: 28, routable: 28))
        _ = app.handle(decode([UInt32(UInt8(ascii: "h"))]))
        XCTAssertEqual(app.handle(decode([27, UInt32(UInt8(ascii: "-"))])), [.engine(.setBudget(0.95))])
        XCTAssertEqual(app.input.string, "h")
    }
}

import BuddyCore
import BuddyEngine
import BuddyTUI
import XCTest

final class ChatAppTests: XCTestCase {
    func budgets(_ actions: [AppAction]) -> [Double] {
        actions.compactMap { if case let .engine(.setBudget(b)) = $0 { return b }; return nil }
    }

    func ready() -> ChatApp {
        let app = ChatApp()
        app.handle(.ready(model: "SmolLM2-135M-Instruct.Q4_1", layers: 30, contextSize: 2048, router: "even"))
        app.handle(.budget(1, k: 28, routable: 28))
        return app
    }

    func testSliderKeysActOnlyWhenInputIsEmptyOrWithAlt() {
        let app = ready()
        XCTAssertEqual(budgets(app.handle(.char("-"))), [0.95])
        XCTAssertEqual(budgets(app.handle(.char("-"))), [0.9])
        XCTAssertEqual(app.slider.k, 25)
        XCTAssertEqual(budgets(app.handle(.char("]"))), [26.0 / 28])
        XCTAssertEqual(budgets(app.handle(.char("+"))), [0.95])
        _ = app.handle(.char("x"))
        XCTAssertEqual(budgets(app.handle(.char("-"))), [], "with text in the box, - types")
        XCTAssertEqual(app.input.string, "x-")
        XCTAssertEqual(budgets(app.handle(.alt("-"))), [0.9], "Alt-- always moves the slider")
        let auto = app.handle(.alt("a"))
        guard case .engine(.setAuto(true))? = auto.first else { return XCTFail("Alt-a asks the engine for auto") }
        XCTAssertEqual(app.input.string, "x-")
        // The engine confirms; the slider and status show auto; moving the slider ends it.
        app.handle(.auto(true))
        XCTAssertTrue(app.slider.auto)
        XCTAssertTrue(app.status.auto)
        // Only the budget is sent: the engine, which owns the budget, ends auto itself.
        XCTAssertEqual(app.handle(.alt("-")), [.engine(.setBudget(0.85))])
        app.handle(.auto(false))
        XCTAssertFalse(app.slider.auto)
    }

    func testEnterSendsPasteDoesNotAndAltEnterAddsALine() {
        let app = ready()
        _ = app.handle(.pasteStart)
        for ch in "line one" { _ = app.handle(.char(ch)) }
        XCTAssertTrue(app.handle(.enter).isEmpty, "Enter inside a paste is a newline")
        for ch in "two" { _ = app.handle(.char(ch)) }
        _ = app.handle(.pasteEnd)
        _ = app.handle(.altEnter)
        _ = app.handle(.char("3"))
        XCTAssertEqual(app.input.string, "line one\ntwo\n3")
        let sent = app.handle(.enter)
        guard case let .engine(.send(text))? = sent.first else { return XCTFail("Enter sends") }
        XCTAssertEqual(text, "line one\ntwo\n3")
        XCTAssertTrue(app.input.isEmpty)
        XCTAssertTrue(app.generating)
    }

    func testStopAndQuitKeys() {
        let app = ready()
        _ = app.handle(.char("h"))
        _ = app.handle(.char("i"))
        _ = app.handle(.enter)
        app.handle(.replyStarted(prompt: "hi"))
        guard case .engine(.stop)? = app.handle(.escape).first else { return XCTFail("Esc stops a reply") }
        guard case .engine(.stop)? = app.handle(.ctrl("c")).first else { return XCTFail("Ctrl-C stops a reply") }
        app.handle(.done(ReplyRecord(text: "Hel", router: "even", budgets: [1], meanLayers: 30, totalLayers: 30,
                                     layerUsage: [], steps: 2, stopReason: .cancelled)))
        XCTAssertFalse(app.generating)
        XCTAssertTrue(app.handle(.ctrl("c")).isEmpty, "the first Ctrl-C when idle only hints")
        XCTAssertTrue(app.conversation.entries.last!.text.contains("Ctrl-C again"))
        guard case .quit(130)? = app.handle(.ctrl("c")).first else { return XCTFail("a second Ctrl-C quits with 130") }
        _ = app.handle(.char("x"))
        XCTAssertTrue(app.handle(.ctrl("d")).isEmpty, "Ctrl-D with text deletes")
        _ = app.handle(.backspace)
        guard case .quit(0)? = app.handle(.ctrl("d")).first else { return XCTFail("Ctrl-D on empty input quits") }
    }

    func testSlashCommandsBecomeActions() {
        let app = ready()
        func type(_ s: String) -> [AppAction] { for ch in s { _ = app.handle(.char(ch)) }; return app.handle(.enter) }
        XCTAssertEqual(budgets(type("/budget 80%")), [0.8])
        guard case .engine(.save(let p))? = type("/save /tmp/x.json").first, p == "/tmp/x.json" else { return XCTFail("/save") }
        guard case .setTheme("light")? = type("/theme light").first else { return XCTFail("/theme") }
        guard case .engine(.setRouter("last"))? = type("/router last").first else { return XCTFail("/router") }
        XCTAssertTrue(type("/nope").isEmpty)
        XCTAssertEqual(app.conversation.entries.last?.kind, .error)
        _ = type("/help")
        XCTAssertTrue(app.showHelp)
        _ = app.handle(.char("q"))  // closes the help
        let quit: AppAction? = type("/quit").first
        guard case .quit(0)? = quit else { return XCTFail("/quit") }
    }

    func testStreamingEventsDrawTheWholeScreen() {
        let app = ready()
        _ = app.handle(.char("h"))
        _ = app.handle(.enter)
        app.handle(.replyStarted(prompt: "Hello 世界"))
        var text = ""
        for (i, t) in ["The", " capital", " of", " France", " is", " Paris", "."].enumerated() {
            let b = i < 4 ? 1.0 : 0.9
            app.handle(.token(text: t, step: step(i, budget: b)))
            text += t
            app.handle(.stats(EngineStats(tokensPerSecond: 41.5, contextUsed: 40 + i, contextSize: 2048, routerOverhead: 0.004)))
        }
        for (w, h) in [(80, 24), (160, 48)] {
            let c = TextCanvas(width: w, height: h)
            let cursor = app.draw(on: c)
            XCTAssertNotNil(cursor)
            let screen = c.text
            XCTAssertTrue(screen.contains("› Hello 世界"), screen)
            XCTAssertTrue(screen.contains("The capital of France is Paris."), screen)
            XCTAssertTrue(screen.contains("41.5 tok/s"), screen)
            XCTAssertTrue(screen.contains("ctx 46/2048"), screen)
            XCTAssertTrue(screen.contains("Esc stop"), screen)
            let l = Layout(width: w, height: h)
            XCTAssertEqual(parsePanel(c, l.panel, layers: 30), [28, 28, 28, 28, 25, 25, 25], screen)
        }
    }

    func testLoadedConversationReplacesThePane() {
        let app = ready()
        app.handle(.notice("hello"))
        let rec = ReplyRecord(text: "Hi!", router: "even", budgets: [1, 0.9], meanLayers: 28.5, totalLayers: 30,
                              layerUsage: [], steps: 3, stopReason: .endOfTurn)
        app.handle(.loaded(path: "x.json", messages: [ChatMessage(role: .user, content: "Hey"), ChatMessage(role: .assistant, content: "Hi!")],
                           records: [nil, rec]))
        XCTAssertEqual(app.conversation.entries.map(\.kind), [.user, .assistant, .meta, .notice])
        XCTAssertTrue(app.conversation.entries[2].text.contains("100%→90%"))
    }
}

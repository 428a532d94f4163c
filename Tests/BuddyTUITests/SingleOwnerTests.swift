import BuddyCore
import BuddyEngine
import BuddyTUI
import BuddyTestSupport
import Foundation
import XCTest

/// The budget, its clamp and the slash commands each have one owner that the slider, the
/// full-screen chat, line mode and the engine share.
final class SingleOwnerTests: XCTestCase {
    func ready() -> ChatApp {
        let app = ChatApp()
        app.handle(.ready(model: "SmolLM2-135M-Instruct.Q4_1", layers: 30, contextSize: 2048, router: "even"))
        app.handle(.budget(1, k: 28, routable: 28))
        return app
    }

    func type(_ app: ChatApp, _ line: String) -> [AppAction] {
        for ch in line { _ = app.handle(.char(ch)) }
        return app.handle(.enter)
    }

    /// Line mode reads every line with `ChatInput.interpret`; the full-screen chat must come
    /// to the same actions for the same lines (help it opens itself; a message it sends).
    func testTheChatAndLineModeMapSlashCommandsAlike() {
        let now = Date(timeIntervalSince1970: 0)
        let lines = ["/budget 0.6", "/budget 85%", "/b 70", "/auto", "/router last", "/system be brief", "/system",
                     "/reset", "/clear", "/save /tmp/x.json", "/load /tmp/x.json", "/theme light", "/quit", "/exit"]
        for auto in [false, true] {
            for line in lines {
                let app = ready()
                if auto { app.handle(.auto(true)) }
                guard case let .action(action) = ChatInput.interpret(line, autoBudgetOn: auto, now: now) else {
                    XCTFail("\(line) is a command"); continue
                }
                XCTAssertEqual(type(app, line), [action], line)
                XCTAssertTrue(app.input.isEmpty, line)
            }
        }
        XCTAssertEqual(ChatInput.interpret("/auto", autoBudgetOn: false), .action(.engine(.setAuto(true))))
        XCTAssertEqual(ChatInput.interpret("/auto", autoBudgetOn: true), .action(.engine(.setAuto(false))))
        XCTAssertEqual(ChatInput.interpret("/save", autoBudgetOn: false, now: now),
                       .action(.engine(.save(path: SlashCommand.defaultSaveName(now)))))

        // /help: line mode prints the usage, the chat opens its help screen.
        XCTAssertEqual(ChatInput.interpret(" /help ", autoBudgetOn: false), .action(.showHelp))
        let app = ready()
        XCTAssertEqual(type(app, "/help"), [])
        XCTAssertTrue(app.showHelp)

        // Messages, with // escaping a leading slash; blanks; errors.
        XCTAssertEqual(ChatInput.interpret("  hello ", autoBudgetOn: false), .message("hello"))
        XCTAssertEqual(ChatInput.interpret("//etc/passwd is a path", autoBudgetOn: false), .message("/etc/passwd is a path"))
        XCTAssertEqual(type(ready(), "//etc/passwd is a path"), [.engine(.send("/etc/passwd is a path"))])
        XCTAssertEqual(ChatInput.interpret("   ", autoBudgetOn: false), .empty)
        XCTAssertEqual(ChatInput.interpret("/frobnicate", autoBudgetOn: false), .invalid(CommandError("unknown command /frobnicate (try /help)")))
        let bad = ready()
        XCTAssertEqual(type(bad, "/frobnicate"), [])
        XCTAssertEqual(bad.conversation.entries.last?.kind, .error)
    }

    /// Whatever the slider or /budget asks for is `Budget.clamp`ed, the engine clamps the same
    /// way, so the slider shows what the engine then announces and runs.
    func testSliderBudgetCommandAndEngineClampAlike() throws {
        for raw in [0.004, 0.01, 0.3, 1.0] {
            XCTAssertEqual(Budget.clamp(raw), min(1, max(0.01, raw)))
        }
        let app = ready()
        // Typed below the range: the command carries the clamped budget and the slider shows it.
        XCTAssertEqual(type(app, "/budget 0.4%"), [.engine(.setBudget(Budget.minimum))])
        XCTAssertEqual(app.slider.budget, Budget.minimum)
        XCTAssertEqual(app.slider.k, 1)
        // Stepping down from 5% reaches the same floor, and from there up the 5% grid again.
        app.handle(.budget(0.05, k: 1, routable: 28))
        XCTAssertEqual(app.handle(.char("-")), [.engine(.setBudget(Budget.minimum))])
        XCTAssertEqual(app.handle(.char("-")), [.engine(.setBudget(Budget.minimum))], "no lower than the floor")
        XCTAssertEqual(app.status.budgetPercent, 1)
        XCTAssertEqual(app.handle(.char("+")), [.engine(.setBudget(0.05))])

        // The engine, sent what the chat sends, announces exactly what the slider shows.
        let model = try TestSupport.model()
        final class Announced: @unchecked Sendable {
            let lock = NSLock()
            var budgets: [Double] = []
            func add(_ e: EngineEvent) { if case let .budget(b, _, _) = e { lock.lock(); budgets.append(b); lock.unlock() } }
        }
        let announced = Announced()
        var options = EngineOptions()
        options.router = "even"
        options.context = 64
        let engine = try ChatEngine(model: model, options: options, sink: { announced.add($0) })
        for line in ["/budget 0.4%", "/budget 0.5", "/budget 100%"] {
            let chat = ready()
            for case let .engine(command) in type(chat, line) { engine.send(command) }
            engine.drain()
            XCTAssertEqual(announced.budgets.last, chat.slider.budget, line)
        }
        XCTAssertEqual(announced.budgets, [1, Budget.minimum, 0.5, 1])
    }
}

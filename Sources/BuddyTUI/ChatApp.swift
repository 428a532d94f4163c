import BuddyCore
import BuddyEngine
import Foundation

/// A key as the app understands it (decoded from curses by the terminal layer).
public enum Key: Equatable, Sendable {
    case char(Character), alt(Character), ctrl(Character)
    case enter, altEnter, newline, backspace, altBackspace, delete, tab
    case left, right, up, down, home, end, pageUp, pageDown, ctrlLeft, ctrlRight
    case escape, f1, resize, pasteStart, pasteEnd
}

/// What the app asks the outside world to do.
public enum AppAction: Sendable, Equatable {
    case engine(EngineCommand)
    case quit(Int32)
    case setTheme(String)
    case redraw
    /// Show the key and command help (the full-screen chat opens it itself).
    case showHelp
}

/// The chat screen's state and behaviour, without curses: engine events and keys go in,
/// actions come out, and `draw` paints any Canvas. The terminal layer only feeds it.
public final class ChatApp {
    public var conversation = ConversationState()
    public var panel = RoutingPanelState(layers: 30)
    public var slider = SliderState(routable: 28)
    public var status = StatusState()
    public var input = InputEditor()
    public private(set) var generating = false
    public private(set) var pasting = false
    public private(set) var quitPending = false
    public var showHelp = false
    public var width = 80
    public var height = 24
    public static let maxInputLines = 6

    public init() {}

    // MARK: engine events

    public func handle(_ e: EngineEvent) {
        switch e {
        case let .ready(model, layers, ctx, router):
            status.model = model
            status.router = router
            status.stats.contextSize = ctx
            panel = RoutingPanelState(layers: layers)
            panel.router = router
            slider.routable = max(0, layers - 2)
        case let .budget(b, _, routable):
            slider.budget = b
            slider.routable = routable
            status.budgetPercent = slider.percent
        case let .auto(on):
            slider.auto = on
            status.auto = on
        case let .router(name):
            panel.router = name
            status.router = name
            conversation.append(.notice, "router: \(name)")
        case let .notice(s):
            conversation.append(.notice, s)
        case let .replyStarted(prompt):
            generating = true
            status.generating = true
            conversation.append(.user, prompt)
            conversation.append(.assistant, "")
            panel.startReply()
        case let .token(text, step):
            conversation.appendStreaming(text)
            panel.record(step)
        case let .stats(s):
            status.stats = s
        case let .done(r):
            generating = false
            status.generating = false
            conversation.append(.meta, ChatApp.describe(r))
        case let .error(s):
            generating = false
            status.generating = false
            conversation.append(.error, s)
        case let .systemPrompt(s):
            conversation.append(.notice, s.map { "system prompt: \($0)" } ?? "system prompt: the model's default")
        case .conversationReset:
            conversation.clear()
            panel.clear()
            conversation.append(.notice, "conversation reset")
        case let .saved(path):
            conversation.append(.notice, "saved to \(path)")
        case let .loaded(path, messages, records):
            conversation.clear()
            panel.clear()
            for (i, m) in messages.enumerated() {
                conversation.append(m.role == .user ? .user : .assistant, m.content)
                if i < records.count, let r = records[i] { conversation.append(.meta, ChatApp.describe(r)) }
            }
            conversation.append(.notice, "loaded \(path) (\(messages.count) messages)")
        }
    }

    static func describe(_ r: ReplyRecord) -> String {
        let budgets = r.budgets.map { "\(Budget.percent($0))%" }.joined(separator: "→")
        let stop: String
        switch r.stopReason {
        case .endOfTurn: stop = ""
        case .maxTokens: stop = " · hit max tokens"
        case .contextFull: stop = " · context full"
        case .cancelled: stop = " · stopped"
        }
        return "\(r.router) \(budgets) · \(String(format: "%.1f", r.meanLayers))/\(r.totalLayers) layers · \(r.steps) tokens\(stop)"
    }

    // MARK: keys

    var layout: Layout {
        Layout(width: width, height: height, inputLines: min(ChatApp.maxInputLines, input.layout(columns: width - 3).lines.count))
    }

    public func handle(_ key: Key) -> [AppAction] {
        if key == .resize { return [.redraw] }
        if key == .f1 { showHelp.toggle(); return [] }
        if showHelp, !(key == .ctrl("c") || key == .ctrl("d")) { showHelp = false; return [] }
        if key != .ctrl("c") { quitPending = false }

        switch key {
        case .pasteStart: pasting = true; return []
        case .pasteEnd: pasting = false; return []
        case .ctrl("c"):
            if generating { return [.engine(.stop)] }
            if quitPending { return [.quit(130)] }
            quitPending = true
            input.clear()
            conversation.append(.notice, "press Ctrl-C again (or Ctrl-D, or /quit) to quit")
            return []
        case .ctrl("d"):
            if input.isEmpty { return [.quit(0)] }
            input.deleteForward(); return []
        case .escape:
            return generating ? [.engine(.stop)] : []
        default: break
        }

        // Slider keys: bare when the input is empty, with Alt always.
        var sliderKey: Character?
        if case let .alt(c) = key { sliderKey = c }
        if case let .char(c) = key, input.isEmpty, !pasting { sliderKey = c }
        if let c = sliderKey {
            var nb: Double?
            switch c {
            case "+", "=": nb = slider.stepped(percentSteps: 1)
            case "-", "_": nb = slider.stepped(percentSteps: -1)
            case "]": nb = slider.stepped(layers: 1)
            case "[": nb = slider.stepped(layers: -1)
            case "a", "A": return [.engine(.setAuto(!slider.auto))]
            case "?" where key == .char("?"): showHelp = true; return []
            default: break
            }
            if let b = nb { return [moveSlider(to: b)] }
        }

        let l = layout
        let convH = l.conversation.height
        switch key {
        case let .char(c): input.insert(String(c))
        case .tab: input.insert("    ")
        case .enter:
            if pasting { input.insert("\n") } else { return submit() }
        case .altEnter, .newline: input.insert("\n")
        case .backspace: input.backspace()
        case .altBackspace, .ctrl("w"): input.killWordBack()
        case .delete: input.deleteForward()
        case .left, .ctrl("b"): input.left()
        case .right, .ctrl("f"): input.right()
        case .ctrlLeft, .alt("b"): input.wordLeft()
        case .ctrlRight, .alt("f"): input.wordRight()
        case .alt("d"): input.killWordForward()
        case .ctrl("a"): input.home()
        case .ctrl("e"): input.end()
        case .ctrl("k"): input.killToEnd()
        case .ctrl("u"): input.killToStart()
        case .ctrl("y"): input.yank()
        case .ctrl("l"): return [.redraw]
        case .up, .ctrl("p"): if !input.lineUp() { input.historyPrevious() }
        case .down, .ctrl("n"): if !input.lineDown() { input.historyNext() }
        case .home: if input.isEmpty { conversation.scrollHome() } else { input.home() }
        case .end: if input.isEmpty { conversation.scrollEnd() } else { input.end() }
        case .pageUp: conversation.pageUp(height: convH, total: conversation.lines(width: l.conversation.width - 1).count)
        case .pageDown: conversation.pageDown(height: convH, total: conversation.lines(width: l.conversation.width - 1).count)
        default: break
        }
        return []
    }

    /// Shows `b` on the slider at once and asks the engine for it (which also ends the
    /// automatic budget); the engine's `.budget` answer then confirms or corrects it.
    private func moveSlider(to b: Double) -> AppAction {
        slider.budget = Budget.clamp(b)
        status.budgetPercent = slider.percent
        return .engine(.setBudget(b))
    }

    func submit() -> [AppAction] {
        switch ChatInput.interpret(input.string, autoBudgetOn: slider.auto) {
        case .empty:
            return []
        case let .invalid(error):
            _ = input.commit()
            conversation.append(.error, error.description)
            return []
        case let .action(action):
            _ = input.commit()
            switch action {
            case .showHelp: showHelp = true; return []
            case let .engine(.setBudget(b)): return [moveSlider(to: b)]
            default: return [action]
            }
        case let .message(message):
            if generating {
                conversation.append(.notice, "a reply is still streaming: press Esc to stop it, then send")
                return []
            }
            _ = input.commit()
            generating = true
            status.generating = true
            return [.engine(.send(message))]
        }
    }

    public static let helpText: [String] = [
        "Buddy — help (any key closes)",
        "",
        "Enter send · Alt-Enter or Ctrl-J new line · ↑/↓ history",
        "Esc or Ctrl-C stop a reply (the partial reply is kept)",
        "Ctrl-C twice or Ctrl-D on empty input: quit",
        "PgUp/PgDn scroll · Home/End (empty input) top/bottom",
        "Ctrl-A/E line start/end · Ctrl-K/U kill · Ctrl-W word · Ctrl-Y yank",
        "",
        "Depth budget (when the input is empty; with Alt always):",
        "  - / +   5% steps      [ / ]   one layer      a   auto",
        "  \(SliderState.recommendedPercent)–100% is the recommended zone for this small model",
        "  it sets the reply's depth; your messages run every layer (--prompt-depth)",
        "",
    ] + SlashCommand.usage.split(separator: "\n").map(String.init)

    // MARK: drawing

    /// Paints the whole screen; returns where the cursor belongs.
    @discardableResult
    public func draw(on c: Canvas) -> (x: Int, y: Int)? {
        width = c.width
        height = c.height
        let l = layout
        if l.tooSmall {
            let msg = ["Terminal too small", "\(c.width)×\(c.height), need \(Layout.minWidth)×\(Layout.minHeight)", "enlarge it, or Ctrl-D to quit"]
            for (i, m) in msg.enumerated() {
                let y = c.height / 2 - 1 + i
                c.put(max(0, (c.width - TextWidth.width(m)) / 2), y, m, i == 0 ? .error : .text)
            }
            return nil
        }
        ConversationPane.draw(&conversation, in: l.conversation, on: c, overlay: showHelp ? ChatApp.helpText : nil)
        RoutingPanel.draw(panel, in: l.panel, on: c)
        BudgetSlider.draw(slider, in: l.slider, on: c)
        StatusBar.draw(status, in: l.status, on: c)
        // Input box: a prompt, then the text; long texts scroll to keep the cursor shown.
        let lay = input.layout(columns: c.width - 3)
        let first = max(0, lay.cursorRow - (l.input.height - 1))
        for row in 0..<l.input.height {
            let y = l.input.y + row
            let i = first + row
            c.put(0, y, row == 0 && first == 0 ? "› " : "  ", .inputPrompt)
            if i < lay.lines.count { c.put(2, y, lay.lines[i], .input, columns: c.width - 3) }
        }
        if input.isEmpty && !generating {
            c.put(2, l.input.y, "message, or /help", .dim, columns: c.width - 3)
        }
        return (2 + lay.cursorCol, l.input.y + lay.cursorRow - first)
    }
}

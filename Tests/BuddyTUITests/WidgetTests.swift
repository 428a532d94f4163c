import BuddyCore
import BuddyEngine
import BuddyFuzzSupport
import BuddyTUI
import BuddyTestSupport
import XCTest

final class SliderTests: XCTestCase {
    func testPercentAndLayerSteps() {
        var s = SliderState(budget: 1, routable: 28)
        XCTAssertEqual(s.k, 28)
        XCTAssertEqual(s.stepped(percentSteps: 1), 1, "stays at 100%")
        s.budget = s.stepped(percentSteps: -1)
        XCTAssertEqual(s.budget, 0.95, accuracy: 1e-9)
        XCTAssertEqual(s.k, 27)
        s.budget = s.stepped(percentSteps: -1)
        XCTAssertEqual(s.percent, 90)
        XCTAssertEqual(s.k, 25)
        s.budget = s.stepped(layers: 1)
        XCTAssertEqual(s.k, 26)
        s.budget = s.stepped(layers: -1)
        s.budget = s.stepped(layers: -1)
        XCTAssertEqual(s.k, 24)
        // Off-grid budgets move to the next 5% mark in the direction of travel.
        s.budget = 0.83
        XCTAssertEqual(s.stepped(percentSteps: 1), 0.85, accuracy: 1e-9)
        XCTAssertEqual(s.stepped(percentSteps: -1), 0.8, accuracy: 1e-9)
        s.budget = 0.05
        XCTAssertEqual(s.stepped(percentSteps: -3), Budget.minimum, "the engine's smallest budget, not 0")
        s.budget = Budget.minimum
        XCTAssertEqual(s.stepped(percentSteps: 1), 0.05, accuracy: 1e-9)
        s.budget = 1 / 28
        XCTAssertEqual(s.k, 1)
        XCTAssertEqual(s.stepped(layers: -1), 1 / 28, "at least one routable layer")
    }

    func testRecommendedZoneIsShown() {
        // The zone starts at 80%: with the shipped router and stand-ins held-out perplexity is
        // 1.42× full depth at 0.8 and 1.64× at 0.7 (EVAL.md).
        var s = SliderState(budget: 0.8, routable: 28)
        XCTAssertTrue(s.inRecommendedZone)
        let c = TextCanvas(width: 80, height: 1)
        BudgetSlider.draw(s, in: Rect(x: 0, y: 0, width: 80, height: 1), on: c)
        XCTAssertTrue(c.line(0).contains(" 80%  22/28 layers"), c.line(0))
        XCTAssertTrue(c.line(0).contains("80–100%"), c.line(0))
        s.budget = 0.75
        XCTAssertFalse(s.inRecommendedZone)
        BudgetSlider.draw(s, in: Rect(x: 0, y: 0, width: 80, height: 1), on: c)
        XCTAssertTrue(c.line(0).contains("⚠"), c.line(0))
        // The knob sits left of the zone marker.
        XCTAssertTrue(c.line(0).contains("●") && c.line(0).contains("┊"), c.line(0))
        XCTAssertEqual(c.roles[0][c.cells[0].firstIndex(of: "●")!], .sliderKnob)
    }
}

func step(_ i: Int, budget: Double, layers: Int = 30, scores: Bool = false) -> StepInfo {
    let k = LayerBudget.routableCount(budget: budget, layers: layers)
    let chosen = Array(1...k)
    return StepInfo(step: i, layers: [0] + chosen + [layers - 1],
                    scores: scores ? (0..<(layers - 2)).map { Float($0) } : nil, budget: budget, k: k)
}

/// Reads the grid back from a drawn panel: executed routable layers per non-empty column.
func parsePanel(_ c: TextCanvas, _ r: Rect, layers: Int) -> [Int] {
    var rows: [(Int, [String])] = []
    for y in r.y..<r.maxY {
        let cells = Array(c.cells[y][(r.x + 1)..<r.maxX])
        let label = cells[0..<3].joined()
        guard let n = Int(label.trimmingCharacters(in: CharacterSet(charactersIn: " *"))), label.count == 3 else { continue }
        guard let sep = cells.firstIndex(of: "┆") else { continue }
        rows.append((n, Array(cells[4..<sep])))
    }
    guard rows.count >= 2 else { return [] }
    let compact = rows[1].0 - rows[0].0 == 2
    let width = rows[0].1.count
    var out: [Int] = []
    for col in 0..<width {
        var ran = Set<Int>()
        var blank = true
        for (upper, cells) in rows {
            let g = cells[col]
            if g != " " { blank = false }
            if compact {
                if g == "█" || g == "▀" { ran.insert(upper) }
                if g == "█" || g == "▄" { ran.insert(upper + 1) }
            } else if g == "█" { ran.insert(upper) }
        }
        if !blank { out.append(ran.filter { $0 > 0 && $0 < layers - 1 }.count) }
    }
    return out
}

final class RoutingPanelTests: XCTestCase {
    func testStateRecordsStepsUsageAndBudgetChanges() {
        var p = RoutingPanelState(layers: 30)
        p.startReply()
        XCTAssertTrue(p.columns.isEmpty, "no gap before the first reply")
        for i in 0..<4 { p.record(step(i, budget: 1)) }
        for i in 4..<6 { p.record(step(i, budget: 0.5)) }
        XCTAssertEqual(p.columns.map(RoutingPanelState.executedRoutable), [28, 28, 28, 28, 14, 14])
        XCTAssertEqual(p.columns.map(\.budgetChanged), [false, false, false, false, true, false])
        XCTAssertEqual(p.usage.counts[0], 6)
        XCTAssertEqual(p.usage.counts[20], 4)
        XCTAssertEqual(p.replySteps, 6)
        p.startReply()
        XCTAssertTrue(p.columns.last!.isGap)
        XCTAssertEqual(p.usage.counts.reduce(0, +), 0)
        XCTAssertEqual(p.replySteps, 0)
        p.record(step(0, budget: 0.5, scores: true))
        XCTAssertEqual(p.columns.last?.heat?[1], 0)
        XCTAssertEqual(p.columns.last?.heat?[28], Role.heatLevels - 1)
        for i in 0..<(RoutingPanelState.keep + 10) { p.record(step(i, budget: 1)) }
        XCTAssertEqual(p.columns.count, RoutingPanelState.keep)
    }

    func testDrawnGridShowsExactlyKPerStep() {
        for (w, h) in [(80, 24), (160, 48)] {
            var p = RoutingPanelState(layers: 30)
            p.router = "even"
            for i in 0..<5 { p.record(step(i, budget: 1)) }
            for i in 5..<9 { p.record(step(i, budget: 0.9, scores: true)) }
            let l = Layout(width: w, height: h)
            let c = TextCanvas(width: w, height: h)
            RoutingPanel.draw(p, in: l.panel, on: c)
            XCTAssertEqual(parsePanel(c, l.panel, layers: 30), [28, 28, 28, 28, 28, 25, 25, 25, 25], "\(w)×\(h):\n\(c.text)")
            XCTAssertTrue(c.text.contains("▾"), "budget-change marker")
            XCTAssertTrue(c.text.contains(" 0*") && c.text.contains("29*") || c.text.contains("28*"), "fixed layers marked")
            guard w >= 160 else { continue }   // the narrow panel cuts the line short
            XCTAssertTrue(c.text.contains("last step: 25/28 routable + 2 fixed"), "\(w)×\(h):\n\(c.text)")
            XCTAssertFalse(c.text.contains("set:"), "a static router names no set")
            var chosen = step(9, budget: 0.9)
            chosen.layerSets = "search"
            p.record(chosen)
            let c2 = TextCanvas(width: w, height: h)
            RoutingPanel.draw(p, in: l.panel, on: c2)
            XCTAssertTrue(c2.text.contains("last step: 25/28 routable + 2 fixed · set: search"), "\(w)×\(h):\n\(c2.text)")
        }
    }

    /// The title names the router whole: with the caption when both fit, alone when not.
    func testTitleKeepsTheRoutersNameWhole() {
        for (w, h) in [(100, 30), (160, 48)] {
            var p = RoutingPanelState(layers: 30)
            p.router = "buddy+sentence"
            p.record(step(0, budget: 0.7))
            let l = Layout(width: w, height: h)
            let c = TextCanvas(width: w, height: h)
            RoutingPanel.draw(p, in: l.panel, on: c)
            let titleRow = c.text.split(separator: "\n", omittingEmptySubsequences: false)[l.panel.y]
            let fits = TextWidth.width(" layers × steps · buddy+sentence") <= l.panel.width - 1
            XCTAssertTrue(titleRow.contains(fits ? "layers × steps · buddy+sentence" : " buddy+sentence"), "\(w)×\(h): \(titleRow)")
            XCTAssertEqual(titleRow.contains("layers × steps"), fits, "\(w)×\(h): \(titleRow)")
            if w == 100 { XCTAssertFalse(fits, "the chat's 100-column panel is too narrow for both") }
            if w == 160 { XCTAssertTrue(fits) }
        }
    }
}

final class ThemeTests: XCTestCase {

    func testColourSyntax() {
        XCTAssertEqual(ThemeColor.parse("#FF8000"), .rgb(255, 128, 0))
        XCTAssertEqual(ThemeColor.parse("42"), .index(42))
        XCTAssertEqual(ThemeColor.parse("red"), .index(1))
        XCTAssertEqual(ThemeColor.parse("bright-blue"), .index(12))
        XCTAssertEqual(ThemeColor.parse("default"), .terminalDefault)
        XCTAssertNil(ThemeColor.parse("#12345"))
        XCTAssertNil(ThemeColor.parse("256"))
        XCTAssertNil(ThemeColor.parse("chartreuse"))
    }

    func testParseWithFallbacksAndWarnings() {
        let text = """
            # comment
            user = "#ff0000"   # trailing comment
            error = "bright-red"
            layer_on = "not-a-colour"
            bogus = "1"
            this line is wrong
            """
        let (t, warnings) = Theme.parse(text, name: "x")
        XCTAssertEqual(t.colors["user"], .rgb(255, 0, 0))
        XCTAssertEqual(t.colors["error"], .index(9))
        XCTAssertEqual(t.colors["layer_on"], Theme.builtin.colors["layer_on"], "a bad colour keeps the default")
        XCTAssertEqual(t.colors["slider"], Theme.builtin.colors["slider"], "a missing key takes the default")
        XCTAssertEqual(warnings.count, 3, "\(warnings)")
    }

    func testShippedThemesParseCleanly() {
        let dir = TestSupport.root.appendingPathComponent("themes").path
        for name in ["default", "light", "mono", "ansi16"] {
            let (t, w) = Theme.load(name, searchPath: [dir])
            XCTAssertEqual(w, [], name)
            XCTAssertEqual(t.name, name)
            XCTAssertEqual(Set(t.colors.keys), Set(Theme.keys.map(\.0)), "\(name) sets every key")
        }
        XCTAssertEqual(Theme.load("default", searchPath: [dir]).0.colors, Theme.builtin.colors, "default.theme matches the built-in fallback")
        XCTAssertTrue(Theme.load("mono", searchPath: [dir]).0.isMonochrome)
        let (missing, w) = Theme.load("no-such-theme", searchPath: [dir])
        XCTAssertEqual(missing.colors, Theme.builtin.colors)
        XCTAssertEqual(w.count, 1)
    }

    /// Mutated theme files (and raw bytes that are not UTF-8) always give a usable theme:
    /// every role has a colour, and each colour maps to something at every colour depth.
    func testMutatedThemesNeverCrashAndAlwaysGiveEveryRole() throws {
        let dir = TestSupport.root.appendingPathComponent("themes")
        let seeds = try ["default", "light", "mono", "ansi16"].map { [UInt8](try Data(contentsOf: dir.appendingPathComponent("\($0).theme"))) }
        let budget = FuzzBudget(defaultIterations: 2000)
        var mutator = Mutator(seed: budget.seed, dictionary: textFuzzDictionary)
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("buddy-theme-fuzz-\(getpid()).theme").path
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        var warned = 0
        let (n, secs) = budget.run { i in
            let b = mutator.mutate(seeds[i % seeds.count])
            XCTAssertTrue(FileManager.default.createFile(atPath: tmp, contents: Data(b)), "could not write \(tmp)")
            let (t, w) = Theme.load(tmp, searchPath: [])
            if !w.isEmpty { warned += 1 }
            for (key, _) in Theme.keys { XCTAssertNotNil(t.colors[key], key) }
            for role in Role.all {
                let c = t.colors(for: role)
                for depth in [ColorDepth.mono, .ansi8, .ansi16, .palette256, .truecolor] { _ = depth.cursesColor(c.fg); _ = depth.cursesColor(c.bg) }
            }
        }
        print(String(format: "fuzz themes: %d executions in %.1f s, %d with warnings", n, secs, warned))
        XCTAssertGreaterThan(warned, n / 4)
    }

    func testColourDepthFallback() {
        XCTAssertEqual(ColorDepth.detect(colors: 256, hasColors: true, environment: ["NO_COLOR": "1"]), .mono)
        XCTAssertEqual(ColorDepth.detect(colors: 256, hasColors: true, environment: ["NO_COLOR": ""]), .palette256)
        XCTAssertEqual(ColorDepth.detect(colors: 16_777_216, hasColors: true, environment: [:]), .truecolor)
        XCTAssertEqual(ColorDepth.detect(colors: 16, hasColors: true, environment: [:]), .ansi16)
        XCTAssertEqual(ColorDepth.detect(colors: 8, hasColors: true, environment: [:]), .ansi8)
        XCTAssertEqual(ColorDepth.detect(colors: 256, hasColors: false, environment: [:]), .mono)
        let red = ThemeColor.rgb(255, 0, 0)
        XCTAssertEqual(ColorDepth.truecolor.cursesColor(red), 0xff0000)
        XCTAssertEqual(ColorDepth.palette256.cursesColor(red), 196)
        XCTAssertEqual(ColorDepth.ansi16.cursesColor(red), 9)
        XCTAssertEqual(ColorDepth.ansi8.cursesColor(red), 1)
        XCTAssertNil(ColorDepth.mono.cursesColor(red))
        XCTAssertEqual(ColorDepth.palette256.cursesColor(.terminalDefault), -1)
        XCTAssertEqual(ColorDepth.ansi16.cursesColor(.index(12)), 12)
        XCTAssertEqual(ColorDepth.ansi8.cursesColor(.index(12)), 4)
        XCTAssertEqual(ColorDepth.ansi16.cursesColor(.index(231)), 15, "palette white to bright white")
        XCTAssertEqual(ColorDepth.palette256.cursesColor(.rgb(0x80, 0x80, 0x80)), 244)
    }

    func testHeatScaleRunsStartToEnd() {
        let t = Theme.builtin
        XCTAssertEqual(t.heat(0), t.colors["heat_start"])
        XCTAssertEqual(t.heat(Role.heatLevels - 1), t.colors["heat_end"])
    }
}

final class CommandTests: XCTestCase {
    func testParse() {
        func ok(_ s: String) -> SlashCommand? { if case let .success(c)? = SlashCommand.parse(s) { return c }; return nil }
        XCTAssertEqual(ok("/budget 0.6"), .budget(0.6))
        XCTAssertEqual(ok("/budget 85%"), .budget(0.85))
        XCTAssertEqual(ok("/budget 70"), .budget(0.7))
        XCTAssertEqual(ok("/auto"), .auto)
        XCTAssertEqual(ok("/router shortgpt"), .router("shortgpt"))
        XCTAssertEqual(ok("/system You are terse."), .system("You are terse."))
        XCTAssertEqual(ok("/system"), .system(nil))
        XCTAssertEqual(ok("/reset"), .reset)
        XCTAssertEqual(ok("/save"), .save(nil))
        XCTAssertEqual(ok("/save a b.json"), .save("a b.json"))
        XCTAssertEqual(ok("/load x.json"), .load("x.json"))
        XCTAssertEqual(ok("/theme light"), .theme("light"))
        XCTAssertEqual(ok("/help"), .help)
        XCTAssertEqual(ok(" /quit "), .quit)
        XCTAssertNil(SlashCommand.parse("hello"))
        XCTAssertNil(SlashCommand.parse("//not a command"))
        for bad in ["/budget", "/budget 0", "/budget 150%", "/budget x", "/load", "/frobnicate"] {
            guard case .failure? = SlashCommand.parse(bad) else { return XCTFail(bad) }
        }
        XCTAssertTrue(SlashCommand.defaultSaveName().hasPrefix("buddy-chat-"))
    }
}

final class InputEditorTests: XCTestCase {
    func testEditingKillYankAndHistory() {
        var e = InputEditor()
        e.insert("hello world")
        e.killWordBack()
        XCTAssertEqual(e.string, "hello ")
        e.yank()
        XCTAssertEqual(e.string, "hello world")
        e.home()
        e.killToEnd()
        XCTAssertEqual(e.string, "")
        e.yank()
        e.wordLeft()
        e.insert("big ")
        XCTAssertEqual(e.string, "hello big world")
        XCTAssertEqual(e.commit(), "hello big world")
        e.insert("second")
        _ = e.commit()
        e.insert("draft")
        e.historyPrevious()
        XCTAssertEqual(e.string, "second")
        e.historyPrevious()
        XCTAssertEqual(e.string, "hello big world")
        e.historyNext()
        e.historyNext()
        XCTAssertEqual(e.string, "draft", "the draft comes back")
    }

    func testMultiLineLayoutAndCursor() {
        var e = InputEditor()
        e.insert("ab\ncdefgh")
        var l = e.layout(columns: 4)
        XCTAssertEqual(l.lines, ["ab", "cdef", "gh"])
        XCTAssertEqual(l.cursorRow, 2)
        XCTAssertEqual(l.cursorCol, 2)
        XCTAssertTrue(e.lineUp())
        l = e.layout(columns: 40)
        XCTAssertEqual(l.cursorRow, 0)
        XCTAssertEqual(l.cursorCol, 2)
        XCTAssertFalse(e.lineUp())
        e.set("日本")
        XCTAssertEqual(e.layout(columns: 10).cursorCol, 4)
    }
}

final class ConversationTests: XCTestCase {
    func testScrollbackDoesNotJumpWhileReading() {
        var c = ConversationState()
        for i in 0..<40 { c.append(.notice, "line \(i)") }
        let h = 10
        var total = c.lines(width: 40).count
        XCTAssertEqual(c.firstLine(height: h, total: total), total - h)
        c.pageUp(height: h, total: total)
        let reading = c.firstLine(height: h, total: total)
        XCTAssertEqual(reading, total - h - (h - 1))
        c.appendStreaming("new text arrives\nand more\nand more")
        total = c.lines(width: 40).count
        XCTAssertEqual(c.firstLine(height: h, total: total), reading, "the view stays put")
        c.pageDown(height: h, total: total)
        c.pageDown(height: h, total: total)
        XCTAssertTrue(c.isFollowing)
        c.scrollHome()
        XCTAssertEqual(c.firstLine(height: h, total: total), 0)
        c.scrollEnd()
        XCTAssertEqual(c.firstLine(height: h, total: total), total - h)
    }

    func testRewrapOnResize() {
        var c = ConversationState()
        c.append(.assistant, String(repeating: "word ", count: 40))
        let narrow = c.lines(width: 20).count
        let wide = c.lines(width: 100).count
        XCTAssertGreaterThan(narrow, wide)
        XCTAssertTrue(c.lines(width: 20).allSatisfy { TextWidth.width($0.text) <= 20 })
    }
}

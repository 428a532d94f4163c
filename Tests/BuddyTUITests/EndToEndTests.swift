import BuddyTestSupport
import Foundation
import XCTest

/// Runs scripts/e2e_tmux.sh against the buddy binary built next to this test bundle: the
/// full-screen chat under tmux (streaming, panel k per step, '-' mid-reply, resize, Esc,
/// /save, quit and SIGTERM restoring the terminal). Fails, never skips, when tmux or the
/// model is missing.
final class EndToEndTests: XCTestCase {
    /// The products directory (.build/release or another --scratch-path): where the test bundle lives.
    static var productsDirectory: URL {
        for b in Bundle.allBundles where b.bundlePath.hasSuffix(".xctest") { return b.bundleURL.deletingLastPathComponent() }
        return Bundle.main.bundleURL
    }

    func testChatUnderTmux() throws {
        let bin = EndToEndTests.productsDirectory.appendingPathComponent("buddy").path
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: bin), "no buddy binary at \(bin)")
        let model = try TestSupport.requireModelPath()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["bash", TestSupport.root.appendingPathComponent("scripts/e2e_tmux.sh").path, bin]
        var env = ProcessInfo.processInfo.environment
        env["BUDDY_MODEL"] = model
        p.environment = env
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let output = String(decoding: data, as: UTF8.self)
        print(output)
        XCTAssertEqual(p.terminationStatus, 0, "scripts/e2e_tmux.sh failed:\n\(output)")
        XCTAssertTrue(output.contains("E2E OK"), output)
    }
}

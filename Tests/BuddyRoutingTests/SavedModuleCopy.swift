import BuddyCore
import BuddyRouting
import Foundation
import XCTest

/// A decision module saved in a temporary directory, and edited copies of its JSON for
/// checking what the loader refuses. The directory goes away with the value's `remove()`.
struct SavedModuleCopy {
    let dir: URL
    let path: String

    init(_ module: DecisionModule, model: LanguageModel, tag: String) throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("buddy-\(tag)-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        path = dir.appendingPathComponent("r.json").path
        try RouterFile.save(module, model: model, notes: "test", to: path)
    }

    /// A copy written at the current format version, with `edit` applied to its JSON object.
    func edited(_ edit: (inout [String: Any]) -> Void) throws -> String {
        var j = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        XCTAssertEqual(j["version"] as? Int, RouterFile.version)
        edit(&j)
        let p = dir.appendingPathComponent("edit-\(UUID().uuidString).json").path
        try JSONSerialization.data(withJSONObject: j).write(to: URL(fileURLWithPath: p))
        return p
    }

    func remove() { try? FileManager.default.removeItem(at: dir) }
}

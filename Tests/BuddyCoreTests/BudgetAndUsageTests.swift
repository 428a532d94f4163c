import BuddyCore
import XCTest

final class BudgetAndUsageTests: XCTestCase {
    func testBudgetClampAndPercent() {
        XCTAssertEqual(Budget.clamp(0.5), 0.5)
        XCTAssertEqual(Budget.clamp(0), Budget.minimum)
        XCTAssertEqual(Budget.clamp(-1), Budget.minimum)
        XCTAssertEqual(Budget.clamp(1.7), 1)
        XCTAssertEqual(Budget.clamp(.nan), 1, "no budget is the full model")
        XCTAssertEqual(Budget.clamp(.infinity), 1)
        XCTAssertEqual(Budget.clamp(-.infinity), 1)
        XCTAssertTrue(Budget.range.contains(Budget.clamp(0.004)))
        XCTAssertEqual(Budget.percent(0.855), 86)
        XCTAssertEqual(Budget.percent(Budget.minimum), 1)
        // The smallest budget still runs one routable layer.
        XCTAssertEqual(LayerBudget.routableCount(budget: Budget.minimum, layers: 30), 1)
    }

    func testLayerUsageRecordsForgetsAndResets() {
        var u = LayerUsage(layers: 4)
        XCTAssertEqual(u.meanLayers, 0)
        XCTAssertEqual(u.fraction(0), 0)
        u.record([0, 1, 3])
        u.record([0, 2, 3])
        u.record([0, 3, 7])  // 7 is outside the model: counted in the sum, not per layer
        XCTAssertEqual(u.counts, [3, 1, 1, 3])
        XCTAssertEqual(u.steps, 3)
        XCTAssertEqual(u.layerSum, 9)
        XCTAssertEqual(u.meanLayers, 3)
        XCTAssertEqual(u.fraction(1), 1.0 / 3)
        u.forget([0, 3, 7])
        XCTAssertEqual(u.counts, [2, 1, 1, 2])
        XCTAssertEqual(u.steps, 2)
        XCTAssertEqual(u.layerSum, 6)
        u.reset()
        XCTAssertEqual(u, LayerUsage(layers: 4))
        u.forget([0])
        XCTAssertEqual(u.steps, 0, "nothing to take back")
    }
}

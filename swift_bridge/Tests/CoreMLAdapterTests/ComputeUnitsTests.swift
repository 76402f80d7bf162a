import XCTest
@_spi(StandIn) import CoreMLStandIn
@testable import ANEDiffusion

final class ComputeUnitsTests: XCTestCase {
    func testEveryCaseMapsToItsCoreMLValue() {
        let expected: [ComputeUnits: MLComputeUnits] = [
            .all: .all, .cpuAndNeuralEngine: .cpuAndNeuralEngine, .cpuAndGPU: .cpuAndGPU, .cpuOnly: .cpuOnly,
        ]
        XCTAssertEqual(Set(expected.keys), Set(ComputeUnits.allCases))
        for (units, ml) in expected {
            XCTAssertEqual(units.mlComputeUnits, ml, "\(units)")
            XCTAssertEqual(units.configuration().computeUnits, ml, "\(units)")
        }
    }
}

import XCTest
@testable import ANEDiffusion

/// One recorded UNet call of the Python pipeline.
struct RecordedPredict: Decodable {
    let t: Int
    let sample_shape: [Int]
    let sample: [Double]
    let w: [Double]?
    let hidden_shape: [Int]
    let hidden_row_sums: [Double]
    let output: [Double]
}

/// A UNet that checks each call against the Python recording and answers with the recorded
/// output: the Swift pipeline must send the same latents, timestep, w and text states.
final class ReplayUNet: DenoisingModel {
    let calls: [RecordedPredict]
    let label: String
    private(set) var index = 0
    /// Largest relative error of the latents the Swift side sent.
    private(set) var worstError = 0.0

    init(_ calls: [RecordedPredict], label: String) {
        self.calls = calls
        self.label = label
    }

    func predict(sample: Tensor, timestep: Int, hiddenStates: Tensor, guidanceWeights: [Float]?) throws -> Tensor {
        guard index < calls.count else {
            XCTFail("\(label): more UNet calls than the \(calls.count) recorded")
            throw PipelineError.badModelOutput("unexpected call")
        }
        let call = calls[index]
        let where_ = "\(label) call \(index) (t=\(call.t))"
        index += 1
        XCTAssertEqual(timestep, call.t, where_)
        XCTAssertEqual(sample.shape, call.sample_shape, where_)
        worstError = max(worstError, assertClose(sample.scalars, call.sample, "\(where_) latents"))
        XCTAssertEqual(guidanceWeights, call.w?.float32, "\(where_) w")
        XCTAssertEqual(hiddenStates.shape, call.hidden_shape, where_)
        let rows = hiddenStates.batchSize
        let sums = (0..<rows).map { hiddenStates.rows($0..<($0 + 1)).scalars.reduce(0.0) { $0 + Double($1) } }
        assertClose(sums, call.hidden_row_sums, relative: 1e-9, absolute: 1e-9, "\(where_) text states")
        return Tensor(shape: call.sample_shape, scalars: call.output.float32)
    }

    func assertAllCallsMade(file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(index, calls.count, "\(label): UNet calls made", file: file, line: line)
    }
}

extension Tensor {
    init(shape: [Int], doubles: [Double]) {
        self.init(shape: shape, scalars: doubles.float32)
    }
}

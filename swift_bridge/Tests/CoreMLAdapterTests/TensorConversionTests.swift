import XCTest
@_spi(StandIn) import CoreMLStandIn
import ANEDiffusion

/// `MLMultiArray+Tensor.swift`: tensors to model inputs of each contract dtype, and model outputs
/// of any element type or strides back to tensors.
final class TensorConversionTests: XCTestCase {
    let tensor = Tensor(shape: [2, 3], scalars: [0.1, -1.0 / 3.0, 2.5, 1000.7, -65504, 3.9])

    func testFloat32InputKeepsShapeAndValues() {
        let array = tensor.multiArray(.float32)
        XCTAssertEqual(array.dataType, .float32)
        XCTAssertEqual(array.shape, [2, 3])
        XCTAssertEqual(array.standInValues, tensor.scalars.map(Double.init))
        XCTAssertEqual(Tensor(array), tensor)
    }

    func testFloat16InputRoundsToNearestHalf() {
        let array = tensor.multiArray(.float16)
        XCTAssertEqual(array.dataType, .float16)
        XCTAssertEqual(array.shape, [2, 3])
        let halves = tensor.scalars.map { Double(Float16($0)) }
        XCTAssertEqual(array.standInValues, halves)
        XCTAssertEqual(array.standInValues[0], 0.0999755859375)  // 0.1 in float16
        XCTAssertEqual(array.standInValues[3], 1000.5)           // float16 spacing is 0.5 at 1000
        // Back to a tensor: the float16 values, exactly, as float32.
        XCTAssertEqual(Tensor(array), Tensor(shape: [2, 3], scalars: halves.map(Float.init)))
    }

    func testInt32InputRoundsTowardZero() {
        let array = Tensor(shape: [1, 4], scalars: [49406, 3.9, -2.7, 49407]).multiArray(.int32)
        XCTAssertEqual(array.dataType, .int32)
        XCTAssertEqual(array.standInValues, [49406, 3, -2, 49407])
        XCTAssertEqual(Tensor(array).scalars, [49406, 3, -2, 49407])
    }

    func testFeatureValueWrapsTheConvertedArray() {
        let value = tensor.featureValue(.float16)
        XCTAssertEqual(value.type, .multiArray)
        XCTAssertEqual(value.multiArrayValue?.dataType, .float16)
        XCTAssertEqual(value.multiArrayValue?.shape, [2, 3])
    }

    func testDoubleOutputBecomesFloat32() {
        let array = MLMultiArray(standInShape: [3], dataType: .double, values: [0.1, 1e-40, -7])
        XCTAssertEqual(Tensor(array).scalars, [Float(0.1), Float(1e-40), -7])
    }

    /// Neural Engine outputs can have padded rows; the conversion must follow the strides.
    func testStridedFloat16OutputIsReadInLogicalOrder() throws {
        // shape (2, 3) stored with a row stride of 4 elements: the 4th element of each row is padding.
        var memory: [Float16] = [1, 2, 3, 99, 4, 5, 6, 99]
        let array = try memory.withUnsafeMutableBytes { bytes in
            try MLMultiArray(dataPointer: bytes.baseAddress!, shape: [2, 3], dataType: .float16, strides: [4, 1])
        }
        XCTAssertEqual(array.strides, [4, 1])
        let converted = Tensor(array)
        XCTAssertEqual(converted.shape, [2, 3])
        XCTAssertEqual(converted.scalars, [1, 2, 3, 4, 5, 6])
    }
}

import Foundation
import XCTest
@_spi(StandIn) import CoreMLStandIn
import ANEDiffusion

// Helpers for running the Core ML adapters (compiled into this target from
// Sources/ANEDiffusion/CoreML) against fake models of the Core ML stand-in.

extension TensorDType {
    var multiArrayType: MLMultiArrayDataType {
        switch self {
        case .float16: return .float16
        case .float32: return .float32
        case .int32: return .int32
        }
    }
}

extension TensorSpec {
    /// The Core ML description a model exported with this contract entry has.
    var featureDescription: MLFeatureDescription {
        MLFeatureDescription(name: name, shape: shape, dataType: dtype.multiArrayType, enumeratedShapes: shapes ?? [])
    }
}

/// `value` as stored in an element of `dtype` (float16 and float32 round to nearest).
func rounded(_ value: Double, _ dtype: TensorDType) -> Double {
    switch dtype {
    case .float16: return Double(Float16(value))
    case .float32: return Double(Float(value))
    case .int32: return Double(Int32(value.rounded(.towardZero)))
    }
}

/// The elements of input or output `name`, in row-major order.
func values(_ provider: MLFeatureProvider, _ name: String, file: StaticString = #filePath, line: UInt = #line) -> [Double] {
    guard let array = provider.featureValue(for: name)?.multiArrayValue else {
        XCTFail("no multiarray \"\(name)\"", file: file, line: line)
        return []
    }
    return array.standInValues
}

/// A feature provider of multiarrays built from `(shape, dtype, values)`.
func outputs(_ arrays: [String: (shape: [Int], dtype: TensorDType, values: [Double])]) throws -> MLFeatureProvider {
    try MLDictionaryFeatureProvider(dictionary: arrays.mapValues {
        MLFeatureValue(multiArray: MLMultiArray(standInShape: $0.shape, dataType: $0.dtype.multiArrayType, values: $0.values))
    })
}

/// A fresh temporary folder, removed at the end of the test.
func temporaryFolder(_ test: XCTestCase) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("ane-diffusion-coreml-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
    return url
}

/// Install a fake model at `url` whose inputs and outputs are the contract's `component`.
func installModel(at url: URL, _ component: ComponentSpec, prediction: @escaping StandInModels.Prediction) {
    StandInModels.install(at: url, inputs: component.inputs.map(\.featureDescription),
                          outputs: component.outputs.map(\.featureDescription), prediction: prediction)
}

/// The golden vectors of the main test target (written by swift_bridge/make_fixtures.py).
enum GoldenFixtures {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("ANEDiffusionTests/Fixtures")
}

/// The error `body` throws, as text (`nil` if it does not throw).
func thrownMessage<T>(_ body: () throws -> T) -> String? {
    do {
        _ = try body()
        return nil
    } catch {
        return "\(error)"
    }
}

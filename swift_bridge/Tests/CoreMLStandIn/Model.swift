// TEST-ONLY stand-in for Core ML's features, model descriptions and models (see MultiArray.swift).
// Public declarations follow Apple's Core ML documentation. What Core ML builds from a model file
// (descriptions, the model's behaviour) is supplied by tests through `@_spi(StandIn)` API, which
// the adapters cannot see: they import this module without the SPI, as they import CoreML.
import Foundation

/// Where Core ML may run a model (Core ML's `MLComputeUnits`; raw values as in Apple's headers).
public enum MLComputeUnits: Int, Sendable {
    case cpuOnly = 0
    case cpuAndGPU = 1
    case all = 2
    case cpuAndNeuralEngine = 3
}

/// Settings for loading a model (Core ML's `MLModelConfiguration`); `computeUnits` defaults to `.all`.
open class MLModelConfiguration {
    public var computeUnits: MLComputeUnits = .all
    public init() {}
}

/// Kinds of feature value (Core ML's `MLFeatureType`, the cases the stand-in models).
public enum MLFeatureType: Int, Sendable {
    case invalid = 0
    case int64 = 1
    case double = 2
    case string = 3
    case multiArray = 5
}

/// One input or output value (Core ML's `MLFeatureValue`).
open class MLFeatureValue {
    public let type: MLFeatureType
    /// The multiarray, or `nil` when the value is not one.
    public let multiArrayValue: MLMultiArray?
    /// The number, or 0 when the value is not a double.
    public let doubleValue: Double

    public init(multiArray: MLMultiArray) {
        (type, multiArrayValue, doubleValue) = (.multiArray, multiArray, 0)
    }

    public init(double: Double) {
        (type, multiArrayValue, doubleValue) = (.double, nil, double)
    }
}

/// A set of named feature values (Core ML's `MLFeatureProvider`).
public protocol MLFeatureProvider {
    var featureNames: Set<String> { get }
    func featureValue(for featureName: String) -> MLFeatureValue?
}

/// Feature values from a dictionary (Core ML's `MLDictionaryFeatureProvider`).
open class MLDictionaryFeatureProvider: MLFeatureProvider {
    public let dictionary: [String: MLFeatureValue]

    /// Values may be `MLFeatureValue`s, `MLMultiArray`s or `Double`s here; anything else throws,
    /// as Core ML does for a type it cannot convert.
    public init(dictionary: [String: Any]) throws {
        var values: [String: MLFeatureValue] = [:]
        for (name, value) in dictionary {
            switch value {
            case let feature as MLFeatureValue: values[name] = feature
            case let array as MLMultiArray: values[name] = MLFeatureValue(multiArray: array)
            case let number as Double: values[name] = MLFeatureValue(double: number)
            default: throw coreMLError("feature \"\(name)\": unsupported value of type \(type(of: value))")
            }
        }
        self.dictionary = values
    }

    public var featureNames: Set<String> { Set(dictionary.keys) }
    public func featureValue(for featureName: String) -> MLFeatureValue? { dictionary[featureName] }
    public subscript(featureName: String) -> MLFeatureValue? { dictionary[featureName] }
}

/// The allowed shape and element type of a multiarray feature (Core ML's `MLMultiArrayConstraint`).
open class MLMultiArrayConstraint {
    public let shape: [NSNumber]
    public let dataType: MLMultiArrayDataType
    /// The flexible shapes a model takes besides `shape` (Core ML: `MLMultiArrayShapeConstraint`).
    public let shapeConstraint: MLMultiArrayShapeConstraint

    @_spi(StandIn) public init(shape: [Int], dataType: MLMultiArrayDataType, enumeratedShapes: [[Int]] = []) {
        self.shape = shape.map { NSNumber(value: $0) }
        self.dataType = dataType
        self.shapeConstraint = MLMultiArrayShapeConstraint(enumeratedShapes: enumeratedShapes)
    }
}

/// Kinds of shape flexibility (Core ML's `MLMultiArrayShapeConstraintType`).
public enum MLMultiArrayShapeConstraintType: Int {
    case unspecified, enumerated, range
}

/// Which shapes a multiarray feature takes (Core ML's `MLMultiArrayShapeConstraint`; only
/// `.enumerated` and `.unspecified` are modelled).
open class MLMultiArrayShapeConstraint {
    public let type: MLMultiArrayShapeConstraintType
    public let enumeratedShapes: [[NSNumber]]

    init(enumeratedShapes: [[Int]]) {
        self.type = enumeratedShapes.isEmpty ? .unspecified : .enumerated
        self.enumeratedShapes = enumeratedShapes.map { $0.map { NSNumber(value: $0) } }
    }
}

/// One input or output of a model (Core ML's `MLFeatureDescription`).
open class MLFeatureDescription {
    public let name: String
    public let type: MLFeatureType
    public let isOptional: Bool
    public let multiArrayConstraint: MLMultiArrayConstraint?

    /// A multiarray feature (Core ML reads these from the model file).
    @_spi(StandIn) public init(name: String, shape: [Int], dataType: MLMultiArrayDataType,
                               enumeratedShapes: [[Int]] = []) {
        self.name = name
        self.type = .multiArray
        self.isOptional = false
        self.multiArrayConstraint = MLMultiArrayConstraint(shape: shape, dataType: dataType,
                                                           enumeratedShapes: enumeratedShapes)
    }
}

/// A model's inputs and outputs (Core ML's `MLModelDescription`).
open class MLModelDescription {
    public let inputDescriptionsByName: [String: MLFeatureDescription]
    public let outputDescriptionsByName: [String: MLFeatureDescription]

    @_spi(StandIn) public init(inputs: [MLFeatureDescription], outputs: [MLFeatureDescription]) {
        inputDescriptionsByName = Dictionary(uniqueKeysWithValues: inputs.map { ($0.name, $0) })
        outputDescriptionsByName = Dictionary(uniqueKeysWithValues: outputs.map { ($0.name, $0) })
    }
}

/// A loaded model (Core ML's `MLModel`).
///
/// Stand-in model: `init(contentsOf:configuration:)` loads only a compiled `.mlmodelc` URL that
/// a test installed with ``StandInModels/install(at:inputs:outputs:prediction:)`` (Core ML, too,
/// loads only compiled models); `prediction(from:)` checks the inputs against the description as
/// Core ML does (every input present, multiarray shapes equal) and, stricter than Core ML, which
/// converts element types, also requires each multiarray's element type to be the declared one.
open class MLModel {
    public let modelDescription: MLModelDescription
    public let configuration: MLModelConfiguration
    private let predict: StandInModels.Prediction

    public convenience init(contentsOf url: URL, configuration: MLModelConfiguration) throws {
        guard url.pathExtension == "mlmodelc" else {
            throw coreMLError("\(url.lastPathComponent) is not a compiled model (.mlmodelc); compile it first")
        }
        guard let installed = StandInModels.installed[url.standardizedFileURL.path] else {
            throw coreMLError("no compiled model at \(url.path)")
        }
        let copy = MLModelConfiguration()
        copy.computeUnits = configuration.computeUnits
        StandInModels.loads.append(.init(url: url, computeUnits: configuration.computeUnits))
        self.init(description: installed.description, configuration: copy, predict: installed.prediction)
    }

    public convenience init(contentsOf url: URL) throws {
        try self.init(contentsOf: url, configuration: MLModelConfiguration())
    }

    init(description: MLModelDescription, configuration: MLModelConfiguration, predict: @escaping StandInModels.Prediction) {
        self.modelDescription = description
        self.configuration = configuration
        self.predict = predict
    }

    open func prediction(from input: MLFeatureProvider) throws -> MLFeatureProvider {
        for (name, description) in modelDescription.inputDescriptionsByName.sorted(by: { $0.key < $1.key }) {
            guard let value = input.featureValue(for: name) else {
                throw coreMLError("required input feature \"\(name)\" was not provided")
            }
            guard let constraint = description.multiArrayConstraint else { continue }
            guard let array = value.multiArrayValue else {
                throw coreMLError("input feature \"\(name)\" must be a multiarray")
            }
            let flexible = constraint.shapeConstraint.type == .enumerated
                && constraint.shapeConstraint.enumeratedShapes.contains(array.shape)
            guard array.shape == constraint.shape || flexible else {
                throw coreMLError("input feature \"\(name)\" has shape \(array.shape), the model takes \(constraint.shape)")
            }
            guard array.dataType == constraint.dataType else {
                throw coreMLError("input feature \"\(name)\" holds \(array.dataType), the model declares \(constraint.dataType)")
            }
        }
        return try predict(input, configuration)
    }

    /// Compiles a model file into a `.mlmodelc` in a temporary folder and returns its URL
    /// (unavailable on watchOS, as in Core ML). The stand-in records the call and makes the
    /// installed model loadable from the returned URL.
    @available(watchOS, unavailable)
    open class func compileModel(at modelURL: URL) throws -> URL {
        guard let installed = StandInModels.installed[modelURL.standardizedFileURL.path] else {
            throw coreMLError("no model to compile at \(modelURL.path)")
        }
        StandInModels.compilations.append(modelURL)
        let compiled = FileManager.default.temporaryDirectory
            .appendingPathComponent(UUID().uuidString)
            .appendingPathComponent(modelURL.deletingPathExtension().lastPathComponent + ".mlmodelc")
        StandInModels.installed[compiled.standardizedFileURL.path] = installed
        return compiled
    }
}

/// Objective-C's `autoreleasepool(invoking:)`, which Foundation re-exports on Apple platforms
/// (Linux has no autorelease pools): runs `body`.
public func autoreleasepool<Result>(invoking body: () throws -> Result) rethrows -> Result {
    try body()
}

/// Stand-in only (no Core ML API): the fake models tests install, and a record of what the
/// adapters asked Core ML to do.
@_spi(StandIn) public enum StandInModels {
    /// A fake model's behaviour: its outputs for validated inputs, under the load's configuration.
    public typealias Prediction = (MLFeatureProvider, MLModelConfiguration) throws -> MLFeatureProvider

    public struct Load: Equatable {
        public let url: URL
        public let computeUnits: MLComputeUnits
    }

    struct Installed {
        let description: MLModelDescription
        let prediction: Prediction
    }

    static var installed: [String: Installed] = [:]
    /// Every `MLModel(contentsOf:configuration:)` that succeeded, in order.
    public internal(set) static var loads: [Load] = []
    /// Every `MLModel.compileModel(at:)` that succeeded, in order.
    public internal(set) static var compilations: [URL] = []

    /// Make `url` (a `.mlmodelc` to load, or a `.mlpackage` / `.mlmodel` to compile) a model with
    /// these multiarray inputs and outputs that answers with `prediction`.
    public static func install(at url: URL, inputs: [MLFeatureDescription], outputs: [MLFeatureDescription],
                               prediction: @escaping Prediction) {
        installed[url.standardizedFileURL.path] = Installed(
            description: MLModelDescription(inputs: inputs, outputs: outputs), prediction: prediction)
    }

    /// Forget every installed model, load and compilation.
    public static func reset() {
        installed = [:]
        loads = []
        compilations = []
    }
}

@_spi(StandIn) extension MLMultiArray {
    /// A contiguous array of `dataType` holding `values` (rounded to the type) in row-major order.
    public convenience init(standInShape shape: [Int], dataType: MLMultiArrayDataType, values: [Double]) {
        self.init(shapeInts: shape, dataType: dataType, values: values)
    }

    /// The elements in logical row-major order, whatever the strides.
    public var standInValues: [Double] { values }
}

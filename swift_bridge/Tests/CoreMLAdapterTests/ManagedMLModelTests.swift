import XCTest
@_spi(StandIn) import CoreMLStandIn
import ANEDiffusion

/// `ManagedMLModel.swift`: lazy loading, unloading, compiling `.mlpackage` files once, and the
/// compute units a model is loaded with.
final class ManagedMLModelTests: XCTestCase {
    var folder: URL!
    let spec = ComponentSpec(file: "Model.mlpackage", inputs: [TensorSpec(name: "x", shape: [2], dtype: .float32)],
                             outputs: [TensorSpec(name: "y", shape: [2], dtype: .float32)])

    override func setUpWithError() throws {
        StandInModels.reset()
        folder = try temporaryFolder(self)
    }

    func install(_ name: String) -> URL {
        let url = folder.appendingPathComponent(name)
        installModel(at: url, spec) { input, _ in try outputs(["y": ([2], .float32, values(input, "x").map { -$0 })]) }
        return url
    }

    func run(_ model: ManagedMLModel) throws -> [Double] {
        let input = try MLDictionaryFeatureProvider(dictionary: ["x": Tensor(shape: [2], scalars: [1, 2]).featureValue(.float32)])
        return try model.perform { values(try $0.prediction(from: input), "y") }
    }

    func testCompiledModelLoadsOnFirstUseAndStaysLoaded() throws {
        let url = install("Model.mlmodelc")
        let model = ManagedMLModel(url: url, configuration: ComputeUnits.cpuAndNeuralEngine.configuration())
        XCTAssertEqual(StandInModels.loads, [], "nothing is loaded before first use")
        XCTAssertEqual(try run(model), [-1, -2])
        XCTAssertEqual(try run(model), [-1, -2])
        XCTAssertEqual(StandInModels.loads.map(\.url), [url])
        XCTAssertEqual(StandInModels.loads.map(\.computeUnits), [.cpuAndNeuralEngine])
        XCTAssertEqual(StandInModels.compilations, [], "a .mlmodelc is not compiled again")
    }

    func testUnloadDropsTheModelAndTheNextUseLoadsItAgain() throws {
        let url = install("Model.mlmodelc")
        let model = ManagedMLModel(url: url, configuration: ComputeUnits.cpuOnly.configuration())
        try model.loadResources()
        try model.loadResources()
        XCTAssertEqual(StandInModels.loads.count, 1, "loadResources of a loaded model does nothing")
        model.unloadResources()
        XCTAssertEqual(try run(model), [-1, -2])
        XCTAssertEqual(StandInModels.loads.count, 2)
    }

    func testPackageIsCompiledOncePerInstance() throws {
        let url = install("Model.mlpackage")
        let model = ManagedMLModel(url: url, configuration: MLModelConfiguration())
        XCTAssertEqual(try run(model), [-1, -2])
        model.unloadResources()
        XCTAssertEqual(try run(model), [-1, -2])
        XCTAssertEqual(StandInModels.compilations, [url], "compiled once, loaded twice")
        XCTAssertEqual(StandInModels.loads.count, 2)
        XCTAssertTrue(StandInModels.loads.allSatisfy { $0.url.pathExtension == "mlmodelc" })
    }

    func testLoadFailureIsThrownAndRetried() throws {
        let url = folder.appendingPathComponent("Missing.mlmodelc")
        let model = ManagedMLModel(url: url, configuration: MLModelConfiguration())
        XCTAssertThrowsError(try model.loadResources()) {
            XCTAssertEqual(($0 as NSError).domain, MLModelErrorDomain)
        }
        installModel(at: url, spec) { _, _ in try outputs(["y": ([2], .float32, [0, 0])]) }
        XCTAssertEqual(try run(model), [0, 0], "a failed load is not cached")
    }
}

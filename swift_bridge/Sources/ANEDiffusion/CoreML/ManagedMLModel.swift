#if canImport(CoreML) || APPLE_STAND_INS
#if canImport(CoreML)
import CoreML
#else  // Linux tests: compiled into CoreMLAdapterTests against a stand-in (README.md, "Core ML adapters on Linux")
import ANEDiffusion
import CoreMLStandIn
#endif
import Foundation

extension ComputeUnits {
    /// The Core ML value.
    public var mlComputeUnits: MLComputeUnits {
        switch self {
        case .all: return .all
        case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
        case .cpuAndGPU: return .cpuAndGPU
        case .cpuOnly: return .cpuOnly
        }
    }

    /// A model configuration using these compute units.
    public func configuration() -> MLModelConfiguration {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = mlComputeUnits
        return configuration
    }
}

/// A Core ML model that is loaded on first use (or by ``loadResources()``) and can be dropped
/// to free memory (``unloadResources()``); after Apple's ml-stable-diffusion `ManagedMLModel`.
///
/// A compiled `.mlmodelc` loads directly. An `.mlpackage` (or `.mlmodel`) is compiled on the
/// device first with `MLModel.compileModel(at:)`, once per instance, into a temporary folder:
/// slow for a UNet, so apps should ship the `.mlmodelc` files (watchOS cannot compile at all).
public final class ManagedMLModel: ResourceManaging {
    public let url: URL
    public let configuration: MLModelConfiguration
    private var model: MLModel?
    private var compiledURL: URL?
    private let lock = NSLock()

    public init(url: URL, configuration: MLModelConfiguration) {
        self.url = url
        self.configuration = configuration
    }

    public func loadResources() throws {
        lock.lock()
        defer { lock.unlock() }
        _ = try loadedModel()
    }

    public func unloadResources() {
        lock.lock()
        defer { lock.unlock() }
        model = nil
    }

    /// Run `body` with the loaded model (loading it if needed); calls are serialised.
    public func perform<R>(_ body: (MLModel) throws -> R) throws -> R {
        lock.lock()
        defer { lock.unlock() }
        let model = try loadedModel()
        return try autoreleasepool { try body(model) }
    }

    private func loadedModel() throws -> MLModel {
        if let model = model { return model }
        let loaded = try MLModel(contentsOf: try compiledModelURL(), configuration: configuration)
        model = loaded
        return loaded
    }

    private func compiledModelURL() throws -> URL {
        if url.pathExtension == "mlmodelc" { return url }
        if let compiledURL = compiledURL { return compiledURL }
        #if os(watchOS)
        // MLModel.compileModel(at:) is unavailable on watchOS (Apple's Core ML documentation).
        throw ContractError(field: "", message: "\(url.lastPathComponent) is not compiled, and watchOS cannot compile "
                                + "models on the device: ship \(url.deletingPathExtension().lastPathComponent).mlmodelc")
        #else
        let compiled = try MLModel.compileModel(at: url)
        compiledURL = compiled
        return compiled
        #endif
    }
}
#endif

#if canImport(CoreML) || APPLE_STAND_INS
#if canImport(CoreML)
import CoreML
#else  // Linux tests: compiled into CoreMLAdapterTests against a stand-in (README.md, "Core ML adapters on Linux")
import ANEDiffusion
import CoreMLStandIn
#endif
import Foundation

extension DiffusionPipeline {
    /// A pipeline for a Core ML export folder (`ane_diffusion_coreml.json`, the models,
    /// `vocab.json`, `merges.txt`).
    ///
    /// - Parameters:
    ///   - url: The export folder. Compiled `.mlmodelc` files are used when present, else the
    ///     `.mlpackage` files are compiled on first use (slow).
    ///   - computeUnits: Where the text encoder and UNet run; `.cpuAndNeuralEngine` for the
    ///     ANE-optimised exports.
    ///   - decoderComputeUnits: Where the VAE decoder runs (default: `computeUnits`).
    ///   - reduceMemory: Keep at most one model loaded (load, run, unload each in turn), as
    ///     iPhones need; slower, since every generation loads every model again.
    /// - Throws: ``ContractError`` naming the missing or inconsistent field or file.
    public convenience init(exportFolder url: URL, computeUnits: ComputeUnits = .cpuAndNeuralEngine,
                            decoderComputeUnits: ComputeUnits? = nil, reduceMemory: Bool = false) throws {
        let folder = try ExportFolder(url: url)
        let components = folder.contract.components
        let configuration = computeUnits.configuration()
        func models(_ spec: ComponentSpec, _ configuration: MLModelConfiguration) throws -> [ManagedMLModel] {
            try folder.modelURLs(for: spec).map { ManagedMLModel(url: $0, configuration: configuration) }
        }
        let textEncoder = try CoreMLTextEncoder(model: try models(components.textEncoder, configuration)[0],
                                                component: components.textEncoder)
        let unet = try CoreMLUNet(stages: try models(components.unet, configuration), component: components.unet)
        let decoder = try CoreMLImageDecoder(
            model: try models(components.vaeDecoder, (decoderComputeUnits ?? computeUnits).configuration())[0],
            component: components.vaeDecoder)
        self.init(configuration: try PipelineConfiguration(contract: folder.contract), tokenizer: try folder.tokenizer(),
                  textEncoder: textEncoder, unet: unet, decoder: decoder, reduceMemory: reduceMemory)
    }
}
#endif

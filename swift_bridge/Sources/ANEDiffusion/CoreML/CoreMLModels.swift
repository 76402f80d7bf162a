#if canImport(CoreML) || APPLE_STAND_INS
#if canImport(CoreML)
import CoreML
#else  // Linux tests: compiled into CoreMLAdapterTests against a stand-in (README.md, "Core ML adapters on Linux")
import ANEDiffusion
import CoreMLStandIn
#endif
import Foundation

/// A Core ML model returned something the contract did not promise.
func missingOutput(_ name: String, _ model: ManagedMLModel) -> PipelineError {
    .badModelOutput("\(model.url.lastPathComponent) returned no multi-array output \"\(name)\"")
}

/// The contract input or output called `name` (or the first one), or an error naming it.
func contractEntry(_ specs: [TensorSpec], _ name: String?, _ field: String) throws -> TensorSpec {
    let found = name == nil ? specs.first : specs.first { $0.name == name }
    guard let found else {
        throw ContractError(field: field, message: "missing \(name.map { "\"\($0)\"" } ?? "entry")")
    }
    return found
}

/// The exported text encoder: `input_ids (1, L)` int32 -> `last_hidden_state (1, L, C)`.
public final class CoreMLTextEncoder: TextEncoding {
    public let model: ManagedMLModel
    public let input: TensorSpec
    public let output: TensorSpec

    public init(model: ManagedMLModel, component: ComponentSpec) throws {
        self.model = model
        input = try contractEntry(component.inputs, "input_ids", "components.TextEncoder.inputs")
        output = try contractEntry(component.outputs, "last_hidden_state", "components.TextEncoder.outputs")
        // float16 holds integers exactly only up to 2048: CLIP's ids (up to 49407) would change.
        guard input.dtype != .float16 else {
            throw ContractError(field: "components.TextEncoder.inputs.input_ids.dtype",
                                message: "float16 cannot hold token ids above 2048 exactly; expected int32 or float32")
        }
    }

    public func loadResources() throws { try model.loadResources() }
    public func unloadResources() { model.unloadResources() }

    public func encode(tokens: [Int]) throws -> Tensor {
        guard tokens.count == input.shape.reduce(1, *) else {
            throw PipelineError.invalidRequest("the text encoder takes \(input.shape) ids, got \(tokens.count)")
        }
        let ids: MLMultiArray
        switch input.dtype {
        case .int32: ids = MLMultiArray(MLShapedArray<Int32>(scalars: tokens.map { Int32($0) }, shape: input.shape))
        case .float16, .float32: ids = Tensor(shape: input.shape, scalars: tokens.map { Float($0) }).multiArray(input.dtype)
        }
        let features = try MLDictionaryFeatureProvider(dictionary: [input.name: MLFeatureValue(multiArray: ids)])
        let result = try model.perform { try $0.prediction(from: features) }
        guard let hidden = result.featureValue(for: output.name)?.multiArrayValue else {
            throw missingOutput(output.name, model)
        }
        return Tensor(hidden)
    }
}

/// The exported UNet, whole or in chunks: `sample`, `timestep`, `encoder_hidden_states`
/// (`(B, C, 1, L)`, transposed here from the text encoder's `(B, L, C)`) and, for a student,
/// the raw `guidance_weight` w; one output in the card's prediction type (`noise_pred`).
///
/// The model's batch is fixed (1 for a student, 2 for a teacher's guided pair): larger batches
/// are run in slices of that size and a short last slice is padded by repeating its last row.
public final class CoreMLUNet: DenoisingModel {
    /// The model, or its chunks in order; each chunk gets the original inputs plus the outputs
    /// of the chunks before it.
    public let stages: [ManagedMLModel]
    public let sample: TensorSpec
    public let timestep: TensorSpec
    public let hiddenStates: TensorSpec
    public let guidanceWeight: TensorSpec?
    public let output: TensorSpec

    public init(stages: [ManagedMLModel], component: ComponentSpec) throws {
        precondition(!stages.isEmpty, "CoreMLUNet needs at least one model")
        self.stages = stages
        sample = try contractEntry(component.inputs, "sample", "components.Unet.inputs")
        timestep = try contractEntry(component.inputs, "timestep", "components.Unet.inputs")
        hiddenStates = try contractEntry(component.inputs, "encoder_hidden_states", "components.Unet.inputs")
        guidanceWeight = component.input(ExportContract.guidanceInput)
        output = try contractEntry(component.outputs, nil, "components.Unet.outputs")
    }

    /// Rows per model call.
    public var modelBatch: Int { sample.shape[0] }

    public func loadResources() throws { try stages.forEach { try $0.loadResources() } }
    public func unloadResources() { stages.forEach { $0.unloadResources() } }

    public func predict(sample z: Tensor, timestep t: Int, hiddenStates text: Tensor, guidanceWeights: [Float]?) throws -> Tensor {
        let states = text.textStatesForUnet()
        guard states.batchSize == z.batchSize else {
            throw PipelineError.invalidRequest("\(z.batchSize) latent rows but \(states.batchSize) text-state rows")
        }
        if guidanceWeight != nil && guidanceWeights?.count != z.batchSize {
            throw PipelineError.invalidRequest("this student UNet needs one guidance weight w per latent row")
        }
        var outputs: [Tensor] = []
        var start = 0
        while start < z.batchSize {
            let rows = start..<min(start + modelBatch, z.batchSize)
            var features: [String: MLFeatureValue] = [
                sample.name: padded(z.rows(rows)).featureValue(sample.dtype),
                timestep.name: Tensor(shape: timestep.shape, repeating: Float(t)).featureValue(timestep.dtype),
                hiddenStates.name: padded(states.rows(rows)).featureValue(hiddenStates.dtype),
            ]
            if let guidanceWeight, let weights = guidanceWeights {
                let w = Tensor(shape: [rows.count], scalars: Array(weights[rows]))
                features[guidanceWeight.name] = padded(w).featureValue(guidanceWeight.dtype)
            }
            let prediction = try run(features)
            // The sample's shape: a multi-size export (enumerated shapes) answers at the size fed.
            let expected = [modelBatch] + Array(z.shape.dropFirst())
            guard prediction.count == expected.reduce(1, *) else {
                throw PipelineError.badModelOutput("the UNet returned \(prediction.shape), expected \(expected)")
            }
            outputs.append(prediction.reshaped(expected).rows(0..<rows.count))
            start = rows.upperBound
        }
        return Tensor.concatenate(outputs)
    }

    /// Pad a short batch to the model's batch by repeating its last row.
    private func padded(_ rows: Tensor) -> Tensor {
        guard rows.batchSize < modelBatch else { return rows }
        let last = rows.rows((rows.batchSize - 1)..<rows.batchSize)
        return Tensor.concatenate([rows] + Array(repeating: last, count: modelBatch - rows.batchSize))
    }

    private func run(_ inputs: [String: MLFeatureValue]) throws -> Tensor {
        var available = inputs
        var result: MLFeatureProvider?
        for stage in stages {
            let outputs = try stage.perform { model -> MLFeatureProvider in
                var feed: [String: Any] = [:]
                for name in model.modelDescription.inputDescriptionsByName.keys {
                    guard let value = available[name] else {
                        throw PipelineError.badModelOutput("\(stage.url.lastPathComponent) needs an input \"\(name)\" "
                                                               + "that neither the contract nor an earlier chunk provides")
                    }
                    feed[name] = value
                }
                return try model.prediction(from: try MLDictionaryFeatureProvider(dictionary: feed))
            }
            for name in outputs.featureNames {
                if let value = outputs.featureValue(for: name) { available[name] = value }
            }
            result = outputs
        }
        guard let array = result?.featureValue(for: output.name)?.multiArrayValue else {
            throw missingOutput(output.name, stages[stages.count - 1])
        }
        return Tensor(array)
    }
}

/// The exported VAE decoder: latents `(1, C, h, w)` (already divided by the scaling factor)
/// to pixels `(1, 3, H, W)` in `[-1, 1]`.
public final class CoreMLImageDecoder: ImageDecoding {
    public let model: ManagedMLModel
    public let input: TensorSpec
    public let output: TensorSpec

    public init(model: ManagedMLModel, component: ComponentSpec) throws {
        self.model = model
        input = try contractEntry(component.inputs, nil, "components.VAEDecoder.inputs")
        output = try contractEntry(component.outputs, nil, "components.VAEDecoder.outputs")
    }

    public func loadResources() throws { try model.loadResources() }
    public func unloadResources() { model.unloadResources() }

    public func decode(latents: Tensor) throws -> Tensor {
        let features = try MLDictionaryFeatureProvider(dictionary: [input.name: latents.featureValue(input.dtype)])
        let result = try model.perform { try $0.prediction(from: features) }
        guard let pixels = result.featureValue(for: output.name)?.multiArrayValue else {
            throw missingOutput(output.name, model)
        }
        return Tensor(pixels)
    }
}
#endif

import Foundation

/// Element type of a Core ML model input or output.
public enum TensorDType: String, Codable, CaseIterable, Sendable {
    case float16, float32, int32
}

/// One named model input or output: `{"name", "shape", "dtype", "description"?}`.
public struct TensorSpec: Codable, Equatable, Sendable {
    public var name: String
    public var shape: [Int]
    public var dtype: TensorDType
    public var description: String?
    /// Every shape a multi-size export's package takes (Core ML enumerated shapes), `shape` first.
    public var shapes: [[Int]]?

    public init(name: String, shape: [Int], dtype: TensorDType, description: String? = nil, shapes: [[Int]]? = nil) {
        (self.name, self.shape, self.dtype, self.description, self.shapes) = (name, shape, dtype, description, shapes)
    }
}

/// One exported model: its file (an `.mlpackage`; a compiled `.mlmodelc` of the same name is
/// preferred when present), optional chunk files, and its inputs and outputs.
public struct ComponentSpec: Codable, Equatable, Sendable {
    public var file: String
    /// Files of a chunked model, in execution order (`UnetChunk1.mlpackage`, ...).
    public var chunks: [String]?
    public var inputs: [TensorSpec]
    public var outputs: [TensorSpec]
    /// Optional, VAE halves only: `"tiny"` (a distilled tiny autoencoder) or `"full"` (the VAE).
    /// Absent in exports made before tiny decoders: those hold the full VAE.
    public var variant: String?

    public init(file: String, chunks: [String]? = nil, inputs: [TensorSpec], outputs: [TensorSpec],
                variant: String? = nil) {
        (self.file, self.chunks, self.inputs, self.outputs, self.variant) = (file, chunks, inputs, outputs, variant)
    }

    public func input(_ name: String) -> TensorSpec? { inputs.first { $0.name == name } }
    public func output(_ name: String) -> TensorSpec? { outputs.first { $0.name == name } }
}

/// The JSON contract `ane_diffusion_coreml.json` of a Core ML export folder: what the models
/// are, their inputs and outputs, and everything the sampler needs (card, schedule, latent
/// geometry, tokenizer files). Unknown fields are ignored.
public struct ExportContract: Codable, Equatable, Sendable {
    public static let fileName = "ane_diffusion_coreml.json"
    public static let supportedFormatVersion = 1

    public struct Image: Codable, Equatable, Sendable {
        public var height: Int
        public var width: Int
    }

    public struct Latent: Codable, Equatable, Sendable {
        public var channels: Int
        public var height: Int
        public var width: Int
        /// The VAE's scaling factor: latents are divided by it before decoding.
        public var scalingFactor: Double

        enum CodingKeys: String, CodingKey {
            case channels, height, width
            case scalingFactor = "scaling_factor"
        }
    }

    public struct Tokenizer: Codable, Equatable, Sendable {
        public var vocab: String
        public var merges: String
        public var maxLength: Int
        /// Optional: the padding token when it is not the end token (Stable Diffusion 2.x: `!`).
        public var padToken: String?

        enum CodingKeys: String, CodingKey {
            case vocab, merges
            case maxLength = "max_length"
            case padToken = "pad_token"
        }
    }

    public struct Components: Codable, Equatable, Sendable {
        public var textEncoder: ComponentSpec
        public var unet: ComponentSpec
        public var vaeDecoder: ComponentSpec
        public var vaeEncoder: ComponentSpec?
        /// Optional: the full VAE decoder kept beside a tiny `VAEDecoder`.
        public var vaeDecoderFull: ComponentSpec?

        enum CodingKeys: String, CodingKey {
            case textEncoder = "TextEncoder"
            case unet = "Unet"
            case vaeDecoder = "VAEDecoder"
            case vaeEncoder = "VAEEncoder"
            case vaeDecoderFull = "VAEDecoderFull"
        }

        /// The component a contract name stands for (`VAEDecoder`, `VAEDecoderFull`, ...), if present.
        public func named(_ name: String) -> ComponentSpec? {
            switch name {
            case CodingKeys.textEncoder.rawValue: return textEncoder
            case CodingKeys.unet.rawValue: return unet
            case CodingKeys.vaeDecoder.rawValue: return vaeDecoder
            case CodingKeys.vaeEncoder.rawValue: return vaeEncoder
            case CodingKeys.vaeDecoderFull.rawValue: return vaeDecoderFull
            default: return nil
            }
        }
    }

    public var formatVersion: Int
    public var model: ModelCard
    public var wConvention: String?
    public var image: Image
    public var latent: Latent
    public var schedule: ScheduleConfig
    public var tokenizer: Tokenizer
    public var components: Components
    /// Optional: which component decodes with which decoder, e.g. `{"tiny": "VAEDecoder",
    /// "full": "VAEDecoderFull"}`. Absent: `VAEDecoder` is the full decoder (see ``decoder(_:)``).
    public var decoders: [String: String]?
    /// Optional: which component encodes with which encoder, e.g. `{"tiny": "VAEEncoder"}`.
    public var encoders: [String: String]?
    /// Optional: every image size of a multi-size export (see ``imageSizes``).
    public var sizes: [ImageSize]?
    /// Optional: the runtime the export was made for; absent or `ane-diffusion` for this package.
    public var target: String?

    enum CodingKeys: String, CodingKey {
        case formatVersion = "format_version"
        case model
        case wConvention = "w_convention"
        case image, latent, schedule, tokenizer, components, decoders, encoders
        case sizes, target
    }

    /// Parse and validate a contract; every problem is a ``ContractError`` naming the field.
    public static func decode(_ data: Data) throws -> ExportContract {
        let contract: ExportContract
        do {
            contract = try JSONDecoder().decode(ExportContract.self, from: data)
        } catch let error as DecodingError {
            throw ContractError(decoding: error)
        }
        try contract.validate()
        return contract
    }

    /// Read `ane_diffusion_coreml.json` from an export folder.
    public static func load(folder: URL) throws -> ExportContract {
        let url = folder.appendingPathComponent(fileName)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw ContractError(field: "", message: "\(folder.path) has no \(fileName): not an ane-diffusion "
                                    + "Core ML export folder")
        }
        return try decode(try Data(contentsOf: url))
    }

    /// Name of the Unet input that carries the raw guidance weight `w` of a student.
    public static let guidanceInput = "guidance_weight"
}

/// A diffusers scheduler config (the contract's `schedule`); missing fields take diffusers'
/// Stable Diffusion defaults, as `DiscreteSchedule.from_diffusers_config` does.
public struct ScheduleConfig: Codable, Equatable, Sendable {
    public var numTrainTimesteps: Int
    public var betaSchedule: String
    public var betaStart: Double
    public var betaEnd: Double
    public var trainedBetas: [Double]?

    public init(numTrainTimesteps: Int = 1000, betaSchedule: String = "scaled_linear", betaStart: Double = 0.00085,
                betaEnd: Double = 0.012, trainedBetas: [Double]? = nil) {
        self.numTrainTimesteps = numTrainTimesteps
        self.betaSchedule = betaSchedule
        self.betaStart = betaStart
        self.betaEnd = betaEnd
        self.trainedBetas = trainedBetas
    }

    enum CodingKeys: String, CodingKey {
        case numTrainTimesteps = "num_train_timesteps"
        case betaSchedule = "beta_schedule"
        case betaStart = "beta_start"
        case betaEnd = "beta_end"
        case trainedBetas = "trained_betas"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(numTrainTimesteps: try c.decodeIfPresent(Int.self, forKey: .numTrainTimesteps) ?? 1000,
                  betaSchedule: try c.decodeIfPresent(String.self, forKey: .betaSchedule) ?? "scaled_linear",
                  betaStart: try c.decodeIfPresent(Double.self, forKey: .betaStart) ?? 0.00085,
                  betaEnd: try c.decodeIfPresent(Double.self, forKey: .betaEnd) ?? 0.012,
                  trainedBetas: try c.decodeIfPresent([Double].self, forKey: .trainedBetas))
    }
}

extension ContractError {
    /// A readable error for a JSON decoding failure, naming the JSON path.
    init(decoding error: DecodingError) {
        func path(_ keys: [CodingKey]) -> String {
            keys.reduce("") { text, key in
                if let index = key.intValue { return text + "[\(index)]" }
                return text.isEmpty ? key.stringValue : text + "." + key.stringValue
            }
        }
        switch error {
        case let .keyNotFound(key, context):
            self.init(field: path(context.codingPath + [key]), message: "missing")
        case let .valueNotFound(_, context):
            self.init(field: path(context.codingPath), message: "is null")
        case let .typeMismatch(type, context):
            self.init(field: path(context.codingPath), message: "expected \(type)")
        case let .dataCorrupted(context):
            self.init(field: path(context.codingPath), message: context.debugDescription)
        @unknown default:
            self.init(field: "", message: "\(error)")
        }
    }
}

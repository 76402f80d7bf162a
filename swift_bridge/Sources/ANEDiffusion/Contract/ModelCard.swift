import Foundation

/// A contract that is missing a field, or holds one that makes no sense. `field` is the JSON
/// path (`components.Unet.inputs`), `message` says what is wrong.
public struct ContractError: Error, Equatable, CustomStringConvertible, LocalizedError {
    public let field: String
    public let message: String

    public init(field: String, message: String) {
        self.field = field
        self.message = message
    }

    public var description: String { field.isEmpty ? message : "\(field): \(message)" }
    public var errorDescription: String? { description }
}

/// The model card (`ane_diffusion.card.ModelCard`): what the model is and how to sample it.
/// Unknown fields are ignored; missing optional ones take the Python card's defaults.
public struct ModelCard: Codable, Equatable, Sendable {
    /// `teacher` needs classifier-free guidance (two evaluations a step); the others take `w` as
    /// an input (one evaluation a step).
    public enum Kind: String, Codable, CaseIterable, Sendable {
        case teacher
        case guidanceDistilled = "guidance-distilled"
        case progressive
        case lcm
    }

    public var kind: Kind
    public var predictionType: PredictionType
    /// Steps the student was distilled for (`nil`: any step count, e.g. a teacher).
    public var steps: Int?
    public var wMin: Double
    public var wMax: Double
    /// Paper convention: guidance_scale = 1 + w.
    public var defaultW: Double
    public var guidanceEmbeddingDim: Int?
    /// `w` is multiplied by this before its embedding (1000: LCM's convention, and older cards).
    public var guidanceEmbeddingScale: Double
    /// A sampler name; may be one the Swift bridge lacks (`dpmpp-2m`).
    public var recommendedSampler: String
    public var recommendedSteps: Int
    public var teacher: String?
    /// Per-channel bounds of the training latents, what ``GenerationSettings/clamp`` clips each
    /// step's `x_hat` to (`nil`: not measured, as in cards written before the field existed).
    public var latentRange: LatentRange?
    public var description: String

    public var isStudent: Bool { kind != .teacher }

    public init(kind: Kind, predictionType: PredictionType, steps: Int? = nil, wMin: Double = 0, wMax: Double = 14,
                defaultW: Double = 6.5, guidanceEmbeddingDim: Int? = nil, guidanceEmbeddingScale: Double = 1000,
                recommendedSampler: String = "ddim",
                recommendedSteps: Int = 4, teacher: String? = nil, latentRange: LatentRange? = nil,
                description: String = "") {
        self.kind = kind
        self.predictionType = predictionType
        self.steps = steps
        self.wMin = wMin
        self.wMax = wMax
        self.defaultW = defaultW
        self.guidanceEmbeddingDim = guidanceEmbeddingDim
        self.guidanceEmbeddingScale = guidanceEmbeddingScale
        self.recommendedSampler = recommendedSampler
        self.recommendedSteps = recommendedSteps
        self.teacher = teacher
        self.latentRange = latentRange
        self.description = description
    }

    enum CodingKeys: String, CodingKey {
        case kind
        case predictionType = "prediction_type"
        case steps
        case wMin = "w_min"
        case wMax = "w_max"
        case defaultW = "default_w"
        case guidanceEmbeddingDim = "guidance_embedding_dim"
        case guidanceEmbeddingScale = "guidance_embedding_scale"
        case recommendedSampler = "recommended_sampler"
        case recommendedSteps = "recommended_steps"
        case teacher
        case latentRange = "latent_range"
        case description
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let kindName = try c.decode(String.self, forKey: .kind)
        guard let kind = Kind(rawValue: kindName) else {
            throw ContractError(field: "model.kind", message: "\"\(kindName)\" is not one of "
                                    + Kind.allCases.map(\.rawValue).joined(separator: ", "))
        }
        let predictionName = try c.decode(String.self, forKey: .predictionType)
        guard let prediction = PredictionType(rawValue: predictionName) else {
            throw ContractError(field: "model.prediction_type", message: "\"\(predictionName)\" is not one of "
                                    + PredictionType.allCases.map(\.rawValue).joined(separator: ", "))
        }
        self.init(kind: kind, predictionType: prediction,
                  steps: try c.decodeIfPresent(Int.self, forKey: .steps),
                  wMin: try c.decodeIfPresent(Double.self, forKey: .wMin) ?? 0,
                  wMax: try c.decodeIfPresent(Double.self, forKey: .wMax) ?? 14,
                  defaultW: try c.decodeIfPresent(Double.self, forKey: .defaultW) ?? 6.5,
                  guidanceEmbeddingDim: try c.decodeIfPresent(Int.self, forKey: .guidanceEmbeddingDim),
                  guidanceEmbeddingScale: try c.decodeIfPresent(Double.self, forKey: .guidanceEmbeddingScale) ?? 1000,
                  recommendedSampler: try c.decodeIfPresent(String.self, forKey: .recommendedSampler) ?? "ddim",
                  recommendedSteps: try c.decodeIfPresent(Int.self, forKey: .recommendedSteps) ?? 4,
                  teacher: try c.decodeIfPresent(String.self, forKey: .teacher),
                  latentRange: try c.decodeIfPresent(LatentRange.self, forKey: .latentRange),
                  description: try c.decodeIfPresent(String.self, forKey: .description) ?? "")
    }

    /// The checks of the Python card's `validate()`.
    public func validate() throws {
        if isStudent && (guidanceEmbeddingDim ?? 0) <= 0 {
            throw ContractError(field: "model.guidance_embedding_dim",
                                message: "a \(kind.rawValue) card needs guidance_embedding_dim")
        }
        if !(guidanceEmbeddingScale > 0) || !guidanceEmbeddingScale.isFinite {
            throw ContractError(field: "model.guidance_embedding_scale",
                                message: "card guidance_embedding_scale must be > 0, got \(guidanceEmbeddingScale)")
        }
        if wMin > wMax {
            throw ContractError(field: "model.w_min", message: "card w range is empty: [\(wMin), \(wMax)]")
        }
        if let steps, steps < 1 {
            throw ContractError(field: "model.steps", message: "must be >= 1, got \(steps)")
        }
        try latentRange?.validate()
    }
}

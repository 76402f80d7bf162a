import Foundation

/// A generation request that cannot be run, a model that misbehaved, or a cancelled run.
public enum PipelineError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// The request is invalid; the message names the problem in one line.
    case invalidRequest(String)
    /// A model returned something of the wrong shape or type.
    case badModelOutput(String)
    /// The progress handler asked to stop.
    case cancelled

    public var description: String {
        switch self {
        case let .invalidRequest(message), let .badModelOutput(message): return message
        case .cancelled: return "generation cancelled"
        }
    }

    public var errorDescription: String? { description }
}

/// What the pipeline needs to know about a model besides the models themselves.
public struct PipelineConfiguration: Sendable {
    public var card: ModelCard
    public var schedule: NoiseSchedule
    /// Latent shape of one image, `(C, h, w)`.
    public var latentShape: [Int]
    public var imageHeight: Int
    public var imageWidth: Int
    /// Latents are divided by this before decoding.
    public var scalingFactor: Double
    /// Token ids per prompt (CLIP: 77).
    public var maxTokenLength: Int
    /// Every size a multi-size export takes (empty: only `imageHeight` x `imageWidth`).
    public var imageSizes: [ImageSize] = []

    public init(card: ModelCard, schedule: NoiseSchedule = .scaledLinear(), latentShape: [Int], imageHeight: Int,
                imageWidth: Int, scalingFactor: Double = 0.18215, maxTokenLength: Int = CLIPTokenizer.maxLength) {
        self.card = card
        self.schedule = schedule
        self.latentShape = latentShape
        self.imageHeight = imageHeight
        self.imageWidth = imageWidth
        self.scalingFactor = scalingFactor
        self.maxTokenLength = maxTokenLength
    }

    /// Everything from a (validated) export contract.
    public init(contract: ExportContract) throws {
        try contract.validate()
        self.init(card: contract.model, schedule: try NoiseSchedule(config: contract.schedule),
                  latentShape: contract.latentShape, imageHeight: contract.image.height,
                  imageWidth: contract.image.width, scalingFactor: contract.latent.scalingFactor,
                  maxTokenLength: contract.tokenizer.maxLength)
        self.imageSizes = contract.sizes ?? []
    }
}

/// One generation request. `nil` fields take the model card's recommendation.
public struct GenerationSettings: Sendable {
    public var steps: Int?
    /// The paper's guidance weight (guidance_scale = 1 + w).
    public var w: Double?
    public var sampler: Sampler?
    /// Image `i` uses seed `seed + i`.
    public var seed: UInt32
    public var imageCount: Int
    /// Used by a guided teacher only; a student ignores it (with a warning).
    public var negativePrompt: String
    /// Drop a too-long prompt's last tokens instead of failing.
    public var truncatePrompts: Bool
    /// Image size; `nil` takes the export's default. A multi-size export takes any size it lists.
    public var height: Int?
    public var width: Int?
    /// Clip every step's clean-sample estimate `x_hat` `(B, C, h, w)` per channel to the card's
    /// ``ModelCard/latentRange`` (static thresholding, see ``LatentRange``); the card must have one.
    public var clamp: Bool

    public init(steps: Int? = nil, w: Double? = nil, sampler: Sampler? = nil, seed: UInt32 = 0, imageCount: Int = 1,
                negativePrompt: String = "", truncatePrompts: Bool = false, height: Int? = nil, width: Int? = nil,
                clamp: Bool = false) {
        self.height = height
        self.width = width
        self.clamp = clamp
        self.steps = steps
        self.w = w
        self.sampler = sampler
        self.seed = seed
        self.imageCount = imageCount
        self.negativePrompt = negativePrompt
        self.truncatePrompts = truncatePrompts
    }
}

/// A request with every default filled in and checked against the card.
public struct ResolvedSettings: Equatable, Sendable {
    public var steps: Int
    public var w: Double
    public var sampler: Sampler
    public var seed: UInt32
    public var imageCount: Int
    public var negativePrompt: String
    public var truncatePrompts: Bool
    /// The sampler's timestep grid, noisiest first.
    public var timesteps: [Int]
    /// Things the caller should know (e.g. a step count the student was not distilled for).
    public var warnings: [String]
    /// The chosen size: latent shape `(C, h, w)` and image height and width.
    public var latentShape: [Int] = []
    public var imageHeight: Int = 0
    public var imageWidth: Int = 0
    /// Clip each step's `x_hat` to the card's latent range (checked: the card has one that fits).
    public var clamp: Bool = false
}

/// Seconds spent in each model, as the Python pipeline reports them.
public struct Timings: Equatable, Sendable {
    public var textEncoder: Double = 0
    public var unet: Double = 0
    public var unetCalls: Int = 0
    public var vaeDecode: Double = 0
    public var total: Double = 0

    public init() {}

    public var summary: String {
        let perCall = unet / Double(max(unetCalls, 1))
        return String(format: "text encoder %.3fs | unet %.3fs (%d calls, %.1f ms each) | vae decode %.3fs | total %.3fs",
                      textEncoder, unet, unetCalls, perCall * 1000, vaeDecode, total)
    }
}

/// The parameters that reproduce one image (the Python pipeline's PNG metadata).
public struct ImageMetadata: Codable, Equatable, Sendable {
    public var prompt: String
    public var negativePrompt: String
    public var seed: UInt32
    public var steps: Int
    public var w: Double
    public var guidanceScale: Double
    public var sampler: String
    public var height: Int
    public var width: Int
    public var modelKind: String
    /// Whether each step's `x_hat` was clipped to the card's latent range.
    public var clamp: Bool
    public var generator: String = "ane-diffusion"

    enum CodingKeys: String, CodingKey {
        case prompt, seed, steps, w, sampler, height, width, clamp, generator
        case negativePrompt = "negative_prompt"
        case guidanceScale = "guidance_scale"
        case modelKind = "model_kind"
    }
}

extension ImageMetadata {
    /// Metadata written before `clamp` existed decodes with `clamp == false`.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(prompt: try c.decode(String.self, forKey: .prompt),
                  negativePrompt: try c.decode(String.self, forKey: .negativePrompt),
                  seed: try c.decode(UInt32.self, forKey: .seed), steps: try c.decode(Int.self, forKey: .steps),
                  w: try c.decode(Double.self, forKey: .w), guidanceScale: try c.decode(Double.self, forKey: .guidanceScale),
                  sampler: try c.decode(String.self, forKey: .sampler), height: try c.decode(Int.self, forKey: .height),
                  width: try c.decode(Int.self, forKey: .width), modelKind: try c.decode(String.self, forKey: .modelKind),
                  clamp: try c.decodeIfPresent(Bool.self, forKey: .clamp) ?? false,
                  generator: try c.decode(String.self, forKey: .generator))
    }
}

/// Images and everything about how they were made.
public struct GenerationResult: Sendable {
    /// One image per (prompt, image index), prompts outermost.
    public var images: [RGBImage]
    /// The sampled latents `(1, C, h, w)` of each image, before the scaling-factor division.
    public var latents: [Tensor]
    public var metadata: [ImageMetadata]
    public var timings: Timings
    public var warnings: [String]
}

/// Reported after every sampler step; return `false` from the handler to cancel.
public struct PipelineProgress {
    public var promptIndex: Int
    public var promptCount: Int
    public var step: Int
    public var stepCount: Int
    public var timestep: Int
    /// The latents after this step `(B, C, h, w)`.
    public var latents: Tensor
}

/// Run `body` and the seconds it took.
func measure<T>(_ body: () throws -> T) rethrows -> (T, Double) {
    let start = DispatchTime.now().uptimeNanoseconds
    let result = try body()
    return (result, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
}

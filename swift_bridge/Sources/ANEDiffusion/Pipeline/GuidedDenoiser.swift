/// `denoise(z, t) -> x_hat` for a model and its conditioning (`Pipeline.denoiser` in Python):
/// one batch-`B` call for a student that takes `w`, or one batch-`2B` classifier-free-guidance
/// call for a teacher (unconditional rows first), then the card's prediction type turned into
/// a clean-sample estimate, clipped to `clampRange` when one is given.
public struct GuidedDenoiser {
    public let model: DenoisingModel
    public let predictionType: PredictionType
    public let isStudent: Bool
    public let schedule: NoiseSchedule
    /// Conditional text states, one row per latent row `(B, L, C)`.
    public let cond: Tensor
    /// Unconditional (negative prompt) text states `(B, L, C)`, for a guided teacher.
    public let uncond: Tensor?
    /// The paper's guidance weight (guidance_scale = 1 + w).
    public let w: Double
    /// Clip each estimate `x_hat` `(B, C, h, w)` per channel to this range (static thresholding);
    /// `nil`: no clipping.
    public let clampRange: LatentRange?
    /// Called with the seconds each model call took.
    public var onModelCall: ((Double) -> Void)?

    public init(model: DenoisingModel, predictionType: PredictionType, isStudent: Bool, schedule: NoiseSchedule,
                cond: Tensor, uncond: Tensor?, w: Double, clampRange: LatentRange? = nil,
                onModelCall: ((Double) -> Void)? = nil) {
        self.model = model
        self.predictionType = predictionType
        self.isStudent = isStudent
        self.schedule = schedule
        self.cond = cond
        self.uncond = uncond
        self.w = w
        self.clampRange = clampRange
        self.onModelCall = onModelCall
    }

    public func callAsFunction(_ z: Tensor, _ t: Int) throws -> Tensor {
        let batch = z.batchSize
        let (out, seconds) = try measure { () throws -> Tensor in
            if isStudent {
                return try model.predict(sample: z, timestep: t, hiddenStates: cond,
                                         guidanceWeights: [Float](repeating: Float(w), count: batch))
            }
            guard w != 0, let uncond else {
                return try model.predict(sample: z, timestep: t, hiddenStates: cond, guidanceWeights: nil)
            }
            let both = try model.predict(sample: Tensor.concatenate([z, z]), timestep: t,
                                         hiddenStates: Tensor.concatenate([uncond, cond]), guidanceWeights: nil)
            guard both.shape == [2 * batch] + z.shape.dropFirst() else {
                throw PipelineError.badModelOutput("the UNet returned shape \(both.shape) for a guided batch "
                                                       + "of shape \([2 * batch] + z.shape.dropFirst())")
            }
            return Guidance.combine(cond: both.rows(batch..<(2 * batch)), uncond: both.rows(0..<batch), w: w)
        }
        onModelCall?(seconds)
        guard out.shape == z.shape else {
            throw PipelineError.badModelOutput("the UNet returned shape \(out.shape) for latents of shape \(z.shape)")
        }
        let (alpha, sigma) = try schedule.alphaSigma(t)
        let x0 = predictionType.x0(prediction: out, z: z, alpha: alpha, sigma: sigma)
        return try clampRange?.clamp(x0) ?? x0
    }
}

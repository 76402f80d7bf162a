/// `denoise(z, t) -> x_hat`: the model (guided or distilled) already turned into a clean-sample
/// estimate for latents `z` `(B, C, H, W)` at model timestep `t`.
public typealias Denoise = (_ z: Tensor, _ t: Int) throws -> Tensor

/// `noise(shape) -> eps`: fresh standard-normal noise for a latent batch of `shape`.
public typealias NoiseDraw = (_ shape: [Int]) throws -> Tensor

/// `callback(stepIndex, t, z)` after each step; throw (e.g. ``PipelineError/cancelled``) to stop.
public typealias StepCallback = (_ step: Int, _ t: Int, _ z: Tensor) throws -> Void

/// The samplers of the Swift bridge, named as the Python CLI and model cards spell them.
/// (`dpmpp-2m`, the guided baseline's solver, exists only in Python.)
public enum Sampler: String, CaseIterable, Codable, Sendable {
    /// Deterministic DDIM (eta = 0) on the trailing grid: what distilled students are trained for.
    case ddim
    /// The N-step stochastic sampler of Meng et al. (2023).
    case stochastic
    /// Consistency multistep sampling (Latent Consistency Models).
    case lcm

    /// The timestep grid this sampler uses for `steps` steps (`default_timesteps`).
    public func defaultTimesteps(steps: Int, numTrainTimesteps: Int = 1000) throws -> [Int] {
        switch self {
        case .lcm: return try Sampling.lcmTimesteps(steps, numTrainTimesteps: numTrainTimesteps)
        case .ddim, .stochastic:
            return try NoiseSchedule.trailingTimesteps(steps, numTrainTimesteps: numTrainTimesteps)
        }
    }
}

/// The sampler update rules of `ane_diffusion.samplers`, operation for operation.
///
/// Latents are float32; every schedule coefficient is float64 and so is the arithmetic that
/// numpy promotes to float64 (a float64 scalar times a float32 array); results are rounded to
/// float32 exactly where the Python code calls `.astype(np.float32)`.
public enum Sampling {
    /// Each grid point's successor; the last one goes to the clean end.
    static func nextTimesteps(_ timesteps: [Int]) -> [Int] {
        Array(timesteps.dropFirst()) + [NoiseSchedule.clean]
    }

    /// One DDIM update for one element: `alpha_s x_hat + sigma_s (z_t - alpha_t x_hat) / sigma_t`.
    @inline(__always)
    public static func ddimStep(x0: Double, z: Double, alphaT: Double, sigmaT: Double,
                                alphaS: Double, sigmaS: Double) -> Double {
        alphaS * x0 + sigmaS * noiseEstimate(x0: x0, z: z, alpha: alphaT, sigma: sigmaT)
    }

    /// Run `sampler` along `timesteps` (noisiest first) and on to the clean end; returns `x`.
    /// `noise` is only used by `.stochastic` and `.lcm`; `boundaryCondition` only by `.lcm`.
    public static func run(_ sampler: Sampler, denoise: Denoise, z: Tensor, timesteps: [Int],
                           schedule: NoiseSchedule, noise: NoiseDraw, boundaryCondition: Bool = true,
                           callback: StepCallback? = nil) throws -> Tensor {
        switch sampler {
        case .ddim:
            return try ddim(denoise: denoise, z: z, timesteps: timesteps, schedule: schedule, callback: callback)
        case .stochastic:
            return try stochastic(denoise: denoise, z: z, timesteps: timesteps, schedule: schedule,
                                  noise: noise, callback: callback)
        case .lcm:
            return try lcm(denoise: denoise, z: z, timesteps: timesteps, schedule: schedule, noise: noise,
                           boundaryCondition: boundaryCondition, callback: callback)
        }
    }
}

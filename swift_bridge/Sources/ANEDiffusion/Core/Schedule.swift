import Foundation

/// Stable Diffusion's discrete noise schedule, `z_t = alpha_t x + sigma_t eps`.
///
/// Mirrors `ane_diffusion.schedule.DiscreteSchedule`: the cumulative products
/// `abar_i = prod_{j<=i} (1 - beta_j)` in float64, indexed by the integer model timestep
/// `0 ..< numTrainTimesteps`, plus ``NoiseSchedule/clean`` (`-1`) where `alpha = 1, sigma = 0`.
public struct NoiseSchedule: Equatable, Sendable {
    /// Timestep of the clean end of every sampling chain (alpha = 1, sigma = 0).
    public static let clean = -1

    /// `abar_t` for `t = 0 ..< numTrainTimesteps`, in float64 as numpy computes them.
    public let alphasCumprod: [Double]

    public var numTrainTimesteps: Int { alphasCumprod.count }

    /// A schedule given directly by its cumulative products.
    public init(alphasCumprod: [Double]) {
        precondition(!alphasCumprod.isEmpty, "NoiseSchedule: empty schedule")
        self.alphasCumprod = alphasCumprod
    }

    /// `abar = cumprod(1 - betas)`, sequentially, as `np.cumprod` does.
    public init(betas: [Double]) {
        var product = 1.0
        self.init(alphasCumprod: betas.map { beta in
            product *= 1.0 - beta
            return product
        })
    }

    /// Stable Diffusion's schedule: betas linear in sqrt-space (`scaled_linear`).
    public static func scaledLinear(betaStart: Double = 0.00085, betaEnd: Double = 0.012,
                                    numTrainTimesteps: Int = 1000) -> NoiseSchedule {
        let roots = NumPy.linspace(pow(betaStart, 0.5), pow(betaEnd, 0.5), count: numTrainTimesteps)
        return NoiseSchedule(betas: roots.map { $0 * $0 })
    }

    /// Build from a diffusers scheduler config (`from_diffusers_config`): `scaled_linear`,
    /// `linear`, `squaredcos_cap_v2`, or explicit `trained_betas`.
    public init(config: ScheduleConfig) throws {
        if let betas = config.trainedBetas {
            self.init(betas: betas)
            return
        }
        let n = config.numTrainTimesteps
        guard n >= 1 else {
            throw ContractError(field: "schedule.num_train_timesteps", message: "must be >= 1, got \(n)")
        }
        switch config.betaSchedule {
        case "scaled_linear":
            self = .scaledLinear(betaStart: config.betaStart, betaEnd: config.betaEnd, numTrainTimesteps: n)
        case "linear":
            self.init(betas: NumPy.linspace(config.betaStart, config.betaEnd, count: n))
        case "squaredcos_cap_v2":
            let abar = (0...n).map { i -> Double in
                let c = cos((Double(i) / Double(n) + 0.008) / 1.008 * Double.pi / 2)
                return c * c
            }
            self.init(betas: (0..<n).map { min(1 - abar[$0 + 1] / abar[$0], 0.999) })
        default:
            throw ContractError(field: "schedule.beta_schedule",
                                message: "unsupported \"\(config.betaSchedule)\" (expected scaled_linear, "
                                    + "linear or squaredcos_cap_v2)")
        }
    }

    /// `(alpha_t, sigma_t)` in float64; ``clean`` gives `(1, 0)`.
    public func alphaSigma(_ t: Int) throws -> (alpha: Double, sigma: Double) {
        guard t >= NoiseSchedule.clean && t < numTrainTimesteps else {
            throw SamplingError.timestepOutOfRange(t, numTrainTimesteps: numTrainTimesteps)
        }
        let abar = t == NoiseSchedule.clean ? 1.0 : alphasCumprod[t]
        return (abar.squareRoot(), (1.0 - abar).squareRoot())
    }

    /// The "trailing" grid of model timesteps, noisiest first (diffusers'
    /// `timestep_spacing="trailing"`): `4` gives `[999, 749, 499, 249]`.
    ///
    /// Mirrors `trailing_timesteps` in Python: `round(T - i * T / n) - 1` for `i < n`, always `n`
    /// points (diffusers' arange-based formula yields `n + 1` for a few n such as 61 and 103).
    public static func trailingTimesteps(_ steps: Int, numTrainTimesteps: Int = 1000) throws -> [Int] {
        guard steps >= 1 && steps <= numTrainTimesteps else {
            throw SamplingError.invalidStepCount(steps, allowed: 1...numTrainTimesteps)
        }
        let spacing = Double(numTrainTimesteps) / Double(steps)
        return (0..<steps).map {
            Int((Double(numTrainTimesteps) - Double($0) * spacing).rounded(.toNearestOrEven)) - 1
        }
    }
}

/// The parameterisation of a model's output (diffusers' `prediction_type`).
public enum PredictionType: String, Codable, CaseIterable, Sendable {
    case epsilon
    case vPrediction = "v_prediction"
    case sample

    /// The clean-sample estimate `x_hat` for one element, in float64 (`to_x0`).
    @inline(__always)
    public func x0(prediction: Float, z: Float, alpha: Double, sigma: Double) -> Double {
        switch self {
        case .epsilon: return (Double(z) - sigma * Double(prediction)) / alpha
        case .vPrediction: return alpha * Double(z) - sigma * Double(prediction)
        case .sample: return Double(prediction)
        }
    }

    /// The model output (eps, v or x) whose clean-sample estimate at `z` is `x0` (`from_x0`).
    @inline(__always)
    public func prediction(x0: Double, z: Double, alpha: Double, sigma: Double) -> Double {
        switch self {
        case .sample: return x0
        case .epsilon: return noiseEstimate(x0: x0, z: z, alpha: alpha, sigma: sigma)
        case .vPrediction: return alpha * noiseEstimate(x0: x0, z: z, alpha: alpha, sigma: sigma) - sigma * x0
        }
    }

    /// `x_hat` for a whole model output, cast to float32 as the pipeline's denoiser does.
    public func x0(prediction: Tensor, z: Tensor, alpha: Double, sigma: Double) -> Tensor {
        precondition(prediction.shape == z.shape, "x0: shapes \(prediction.shape) and \(z.shape) differ")
        var out = [Float](repeating: 0, count: z.count)
        for i in 0..<z.count {
            out[i] = Float(x0(prediction: prediction.scalars[i], z: z.scalars[i], alpha: alpha, sigma: sigma))
        }
        return Tensor(shape: z.shape, scalars: out)
    }
}

/// The noise estimate implied by `x_hat` at `z` (`to_eps`): `(z - alpha x_hat) / sigma`.
@inline(__always)
public func noiseEstimate(x0: Double, z: Double, alpha: Double, sigma: Double) -> Double {
    (z - alpha * x0) / sigma
}

/// The few numpy routines whose exact floating-point behaviour the schedules depend on.
enum NumPy {
    /// `np.linspace(start, stop, count)` (endpoint included): `i * step + start`, last = stop.
    static func linspace(_ start: Double, _ stop: Double, count: Int, endpoint: Bool = true) -> [Double] {
        guard count > 0 else { return [] }
        let div = endpoint ? count - 1 : count
        guard div > 0 else { return [start] }
        let step = (stop - start) / Double(div)
        var values = (0..<count).map { step == 0 ? Double($0) / Double(div) * (stop - start) + start
                                                 : Double($0) * step + start }
        if endpoint { values[count - 1] = stop }
        return values
    }
}

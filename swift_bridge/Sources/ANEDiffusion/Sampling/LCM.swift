import Foundation

extension Sampling {
    /// LCM's `sigma_data`.
    public static let lcmSigmaData = 0.5
    /// LCM's timestep scaling of the boundary condition.
    public static let lcmTimestepScaling = 10.0

    /// LCM's timesteps: `steps` evenly spaced points of its `originalSteps`-point training grid,
    /// noisiest first (`lcm_timesteps`): `4` gives `[999, 759, 499, 259]`.
    public static func lcmTimesteps(_ steps: Int, originalSteps: Int = 50,
                                    numTrainTimesteps: Int = 1000) throws -> [Int] {
        guard steps >= 1 && steps <= originalSteps else {
            throw SamplingError.invalidStepCount(steps, allowed: 1...originalSteps)
        }
        let c = numTrainTimesteps / originalSteps
        let origin = (1...originalSteps).map { $0 * c - 1 }
        let reversed = Array(origin.reversed())
        let positions = NumPy.linspace(0, Double(origin.count), count: steps, endpoint: false)
        return positions.map { reversed[Int($0.rounded(.down))] }
    }

    /// `(c_skip, c_out)` so that `x = c_skip z + c_out x_hat` equals `z` at `t = 0`
    /// (`lcm_boundary_scalings`).
    public static func lcmBoundaryScalings(_ t: Int, timestepScaling: Double = lcmTimestepScaling)
        -> (cSkip: Double, cOut: Double) {
        let scaled = Double(t) * timestepScaling
        let sigma2 = lcmSigmaData * lcmSigmaData
        let cSkip = sigma2 / (scaled * scaled + sigma2)
        let cOut = scaled / pow(scaled * scaled + sigma2, 0.5)
        return (cSkip, cOut)
    }

    /// Consistency-style multistep sampling (`sample_lcm`): each step predicts the clean sample
    /// (with the boundary-condition skip connection when `boundaryCondition`) and re-noises it to
    /// the next timestep with fresh noise; the last step returns the prediction.
    public static func lcm(denoise: Denoise, z initial: Tensor, timesteps: [Int], schedule: NoiseSchedule,
                           noise: NoiseDraw, boundaryCondition: Bool = true,
                           callback: StepCallback? = nil) throws -> Tensor {
        var z = initial
        for (i, (t, s)) in zip(timesteps, nextTimesteps(timesteps)).enumerated() {
            var x0 = try denoise(z, t)
            try checkShape(x0, like: z)
            if boundaryCondition {
                // Python floats times float32 arrays: float32 arithmetic.
                let (cSkip, cOut) = lcmBoundaryScalings(t)
                let (skip, out) = (Float(cSkip), Float(cOut))
                var scaled = [Float](repeating: 0, count: z.count)
                for j in 0..<z.count { scaled[j] = skip * z.scalars[j] + out * x0.scalars[j] }
                x0 = Tensor(shape: z.shape, scalars: scaled)
            }
            if i == timesteps.count - 1 {
                z = x0
            } else {
                let (alphaS, sigmaS) = try schedule.alphaSigma(s)
                let eps = try noise(z.shape)
                try checkShape(eps, like: z)
                var next = [Float](repeating: 0, count: z.count)
                for j in 0..<z.count {
                    next[j] = Float(alphaS * Double(x0.scalars[j]) + sigmaS * Double(eps.scalars[j]))
                }
                z = Tensor(shape: z.shape, scalars: next)
            }
            try callback?(i, t, z)
        }
        return z
    }
}

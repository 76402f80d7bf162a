extension Sampling {
    /// The coefficients of `q(z_s | z_k)` for `s` noisier than `k` (`renoise`):
    /// `alpha_{s|k} = alpha_s / alpha_k`, `sigma_{s|k} = sqrt(max(sigma_s^2 - alpha_{s|k}^2 sigma_k^2, 0))`.
    public static func renoiseCoefficients(alphaK: Double, sigmaK: Double, alphaS: Double,
                                           sigmaS: Double) -> (alpha: Double, sigma: Double) {
        let alphaSK = alphaS / alphaK
        return (alphaSK, max(sigmaS * sigmaS - alphaSK * alphaSK * (sigmaK * sigmaK), 0.0).squareRoot())
    }

    /// The N-step stochastic sampler of Meng et al. (2023) (`sample_stochastic`).
    ///
    /// From grid point `t` it jumps deterministically two step-lengths, to `k`, then adds noise
    /// back one step-length, to `s`, with the forward transition `q(z_s | z_k)`. The last step is
    /// deterministic. One `noise` draw per step except the last.
    public static func stochastic(denoise: Denoise, z initial: Tensor, timesteps: [Int], schedule: NoiseSchedule,
                                  noise: NoiseDraw, callback: StepCallback? = nil) throws -> Tensor {
        let grid = timesteps + [NoiseSchedule.clean]
        let n = timesteps.count
        var z = initial
        for i in 0..<n {
            let (t, s) = (grid[i], grid[i + 1])
            let (alphaT, sigmaT) = try schedule.alphaSigma(t)
            let x0 = try denoise(z, t)
            try checkShape(x0, like: z)
            if i == n - 1 {
                z = x0
            } else {
                let k = grid[min(i + 2, n)]
                let (alphaK, sigmaK) = try schedule.alphaSigma(k)
                let (alphaS, sigmaS) = try schedule.alphaSigma(s)
                let (alphaSK, sigmaSK) = renoiseCoefficients(alphaK: alphaK, sigmaK: sigmaK,
                                                             alphaS: alphaS, sigmaS: sigmaS)
                let eps = try noise(z.shape)
                try checkShape(eps, like: z)
                var next = [Float](repeating: 0, count: z.count)
                for j in 0..<z.count {
                    // z_k stays float64, as numpy keeps it before the re-noise.
                    let zK = ddimStep(x0: Double(x0.scalars[j]), z: Double(z.scalars[j]),
                                      alphaT: alphaT, sigmaT: sigmaT, alphaS: alphaK, sigmaS: sigmaK)
                    next[j] = Float(alphaSK * zK + sigmaSK * Double(eps.scalars[j]))
                }
                z = Tensor(shape: z.shape, scalars: next)
            }
            try callback?(i, t, z)
        }
        return z
    }
}

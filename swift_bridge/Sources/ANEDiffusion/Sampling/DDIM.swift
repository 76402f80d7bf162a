extension Sampling {
    /// Deterministic DDIM (eta = 0) along `timesteps` and on to the clean end (`sample_ddim`).
    public static func ddim(denoise: Denoise, z initial: Tensor, timesteps: [Int], schedule: NoiseSchedule,
                            callback: StepCallback? = nil) throws -> Tensor {
        var z = initial
        for (i, (t, s)) in zip(timesteps, nextTimesteps(timesteps)).enumerated() {
            let (alphaT, sigmaT) = try schedule.alphaSigma(t)
            let (alphaS, sigmaS) = try schedule.alphaSigma(s)
            let x0 = try denoise(z, t)
            try checkShape(x0, like: z)
            var next = [Float](repeating: 0, count: z.count)
            for k in 0..<z.count {
                next[k] = Float(ddimStep(x0: Double(x0.scalars[k]), z: Double(z.scalars[k]),
                                         alphaT: alphaT, sigmaT: sigmaT, alphaS: alphaS, sigmaS: sigmaS))
            }
            z = Tensor(shape: z.shape, scalars: next)
            try callback?(i, t, z)
        }
        return z
    }

    /// Every denoiser output must have the latents' shape.
    static func checkShape(_ x0: Tensor, like z: Tensor) throws {
        guard x0.shape == z.shape else {
            throw PipelineError.badModelOutput("denoiser returned shape \(x0.shape) for latents of shape \(z.shape)")
        }
    }
}

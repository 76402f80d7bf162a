import XCTest
@testable import ANEDiffusion

/// Sampler trajectories recorded from the Python pipeline (`Pipeline.denoiser` + `Pipeline.sample`),
/// replayed through the Swift denoiser and samplers.
final class SamplerTests: XCTestCase {
    struct Golden: Decodable {
        struct Case: Decodable {
            let name: String
            let sampler: String
            let steps: Int
            let prediction_type: String
            let kind: String
            let w: Double
            let seed: UInt32
            let image_count: Int
            let latent_shape: [Int]
            let timesteps: [Int]
            let cond_shape: [Int]
            let cond: [Double]
            let uncond: [Double]?
            let initial: [Double]
            let calls: [RecordedPredict]
            let final: [Double]
        }
        let cases: [Case]
    }

    func testTrajectoriesMatchPython() throws {
        let golden = try Fixtures.load(Golden.self, "samplers.json")
        XCTAssertGreaterThanOrEqual(golden.cases.count, 24)
        let schedule = NoiseSchedule.scaledLinear()
        var worst = 0.0
        var exact = 0
        for c in golden.cases {
            let sampler = try XCTUnwrap(Sampler(rawValue: c.sampler))
            let kind = try XCTUnwrap(ModelCard.Kind(rawValue: c.kind))
            let prediction = try XCTUnwrap(PredictionType(rawValue: c.prediction_type))
            XCTAssertEqual(try sampler.defaultTimesteps(steps: c.steps), c.timesteps, c.name)

            let (z, sources) = try NoiseSource.batch(seed: c.seed, count: c.image_count, shape: c.latent_shape)
            XCTAssertEqual(z.scalars, c.initial.float32, "\(c.name): initial latents")

            let unet = ReplayUNet(c.calls, label: c.name)
            let cond = Tensor(shape: c.cond_shape, doubles: c.cond).repeatingRows(c.image_count)
            let uncond = c.uncond.map { Tensor(shape: c.cond_shape, doubles: $0).repeatingRows(c.image_count) }
            let denoiser = GuidedDenoiser(model: unet, predictionType: prediction, isStudent: kind != .teacher,
                                          schedule: schedule, cond: cond, uncond: uncond, w: c.w)
            var steps: [Int] = []
            let x = try Sampling.run(sampler, denoise: { try denoiser($0, $1) }, z: z, timesteps: c.timesteps,
                                     schedule: schedule,
                                     noise: { NoiseSource.stackedNormal(sources, shape: Array($0.dropFirst())) },
                                     boundaryCondition: kind == .lcm) { step, t, _ in steps.append(t) }
            unet.assertAllCallsMade()
            XCTAssertEqual(steps, c.timesteps, c.name)
            worst = max(worst, unet.worstError, assertClose(x.scalars, c.final, "\(c.name): final latents"))
            if x.scalars == c.final.float32 { exact += 1 }
        }
        print("sampler trajectories: \(golden.cases.count) cases, worst relative error \(worst), "
              + "\(exact) bit-identical finals")
        #if os(Linux)
        // Same libm (glibc) as numpy here, and the same float64/float32 operations in the same
        // order: anything but bit-identical results means the arithmetic drifted from Python's.
        XCTAssertEqual(exact, golden.cases.count, "bit-identical trajectories on Linux")
        XCTAssertEqual(worst, 0, "bit-identical latents on Linux")
        #endif
    }

    func testStochasticDrawsOneNoisePerStepButTheLast() throws {
        var draws = 0
        let schedule = NoiseSchedule.scaledLinear()
        _ = try Sampling.stochastic(denoise: { z, _ in z }, z: Tensor(shape: [1, 1], repeating: 0.5),
                                    timesteps: try NoiseSchedule.trailingTimesteps(4), schedule: schedule,
                                    noise: { draws += 1; return Tensor(shape: $0, repeating: 0) })
        XCTAssertEqual(draws, 3)
    }

    func testDenoiserShapeIsChecked() {
        let schedule = NoiseSchedule.scaledLinear()
        XCTAssertThrowsError(try Sampling.ddim(denoise: { _, _ in Tensor(shape: [2], repeating: 0) },
                                               z: Tensor(shape: [1, 1], repeating: 0), timesteps: [999],
                                               schedule: schedule))
    }
}

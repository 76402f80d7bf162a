import XCTest
@testable import ANEDiffusion

final class ScheduleTests: XCTestCase {
    struct Golden: Decodable {
        struct Config: Decodable {
            let beta_schedule: String?
            let beta_start: Double?
            let beta_end: Double?
            let num_train_timesteps: Int?
            let trained_betas: [Double]?
        }
        struct Schedule: Decodable {
            let config: Config
            let num_train_timesteps: Int
            let alphas_cumprod_head: [Double]
            let alphas_cumprod_tail: [Double]
            let timesteps: [Int]
            let alpha: [Double]
            let sigma: [Double]
        }
        struct Boundary: Decodable { let t: Int; let c_skip: Double; let c_out: Double }
        struct Conversion: Decodable { let t: Int; let kind: String; let x0: [Double]; let eps: [Double]; let back: [Double] }
        struct Conversions: Decodable { let z: [Double]; let prediction: [Double]; let cases: [Conversion] }
        let schedules: [Schedule]
        let trailing: [String: [Int]]
        let trailing_500: [String: [Int]]
        let lcm: [String: [Int]]
        let default_timesteps: [String: [String: [Int]]]
        let lcm_boundary: [Boundary]
        let conversions: Conversions
    }

    var golden: Golden!

    override func setUpWithError() throws {
        golden = try Fixtures.load(Golden.self, "schedule.json")
    }

    func testAlphasAndSigmas() throws {
        for s in golden.schedules {
            let c = s.config
            let config = ScheduleConfig(numTrainTimesteps: c.num_train_timesteps ?? 1000,
                                        betaSchedule: c.beta_schedule ?? "scaled_linear",
                                        betaStart: c.beta_start ?? 0.00085, betaEnd: c.beta_end ?? 0.012,
                                        trainedBetas: c.trained_betas)
            let schedule = try NoiseSchedule(config: config)
            let label = c.beta_schedule ?? "trained_betas"
            XCTAssertEqual(schedule.numTrainTimesteps, s.num_train_timesteps)
            assertClose(Array(schedule.alphasCumprod.prefix(4)), s.alphas_cumprod_head, relative: 1e-14, absolute: 0, label)
            assertClose(Array(schedule.alphasCumprod.suffix(4)), s.alphas_cumprod_tail, relative: 1e-12, absolute: 0, label)
            let pairs = try s.timesteps.map { try schedule.alphaSigma($0) }
            assertClose(pairs.map(\.alpha), s.alpha, relative: 1e-13, absolute: 0, label)
            assertClose(pairs.map(\.sigma), s.sigma, relative: 1e-12, absolute: 1e-15, label)
        }
    }

    func testScaledLinearIsBitExact() throws {
        // Same float64 operations in the same order as numpy: identical, not merely close.
        let schedule = NoiseSchedule.scaledLinear()
        let golden = self.golden.schedules[0]
        XCTAssertEqual(Array(schedule.alphasCumprod.suffix(4)), golden.alphas_cumprod_tail)
        XCTAssertEqual(try golden.timesteps.map { try schedule.alphaSigma($0).alpha }, golden.alpha)
    }

    func testCleanAndOutOfRange() throws {
        let schedule = NoiseSchedule.scaledLinear()
        let clean = try schedule.alphaSigma(NoiseSchedule.clean)
        XCTAssertEqual(clean.alpha, 1)
        XCTAssertEqual(clean.sigma, 0)
        XCTAssertThrowsError(try schedule.alphaSigma(1000))
        XCTAssertThrowsError(try schedule.alphaSigma(-2))
        XCTAssertThrowsError(try NoiseSchedule(config: ScheduleConfig(betaSchedule: "cosine")))
    }

    func testTimestepGrids() throws {
        for (n, grid) in golden.trailing {
            XCTAssertEqual(try NoiseSchedule.trailingTimesteps(Int(n)!), grid, "trailing \(n)")
        }
        XCTAssertEqual(try NoiseSchedule.trailingTimesteps(4), [999, 749, 499, 249])
        XCTAssertEqual(golden.trailing["61"]?.count, 61, "exactly n points, also where numpy's arange gives n + 1")
        for (n, grid) in golden.trailing_500 {
            XCTAssertEqual(try NoiseSchedule.trailingTimesteps(Int(n)!, numTrainTimesteps: 500), grid)
        }
        for (n, grid) in golden.lcm {
            XCTAssertEqual(try Sampling.lcmTimesteps(Int(n)!), grid, "lcm \(n)")
        }
        for (name, grids) in golden.default_timesteps {
            let sampler = try XCTUnwrap(Sampler(rawValue: name))
            for (n, grid) in grids {
                XCTAssertEqual(try sampler.defaultTimesteps(steps: Int(n)!), grid, "\(name) \(n)")
            }
        }
        XCTAssertThrowsError(try NoiseSchedule.trailingTimesteps(0))
        XCTAssertThrowsError(try Sampling.lcmTimesteps(51))
    }

    func testLCMBoundaryScalings() {
        for b in golden.lcm_boundary {
            let (cSkip, cOut) = Sampling.lcmBoundaryScalings(b.t)
            XCTAssertEqual(cSkip, b.c_skip, "t=\(b.t)")
            XCTAssertEqual(cOut, b.c_out, "t=\(b.t)")
        }
    }

    func testPredictionConversions() throws {
        let schedule = NoiseSchedule.scaledLinear()
        let z = golden.conversions.z.float32
        let prediction = golden.conversions.prediction.float32
        for c in golden.conversions.cases {
            let kind = try XCTUnwrap(PredictionType(rawValue: c.kind))
            let (alpha, sigma) = try schedule.alphaSigma(c.t)
            let x0 = zip(prediction, z).map { kind.x0(prediction: $0, z: $1, alpha: alpha, sigma: sigma) }
            assertClose(x0, c.x0, relative: 1e-14, absolute: 1e-15, "\(c.kind) t=\(c.t) x0")
            let eps = zip(c.x0, z).map { noiseEstimate(x0: $0, z: Double($1), alpha: alpha, sigma: sigma) }
            assertClose(eps, c.eps, relative: 1e-12, absolute: 1e-12, "\(c.kind) t=\(c.t) eps")
            let back = zip(c.x0, z).map { kind.prediction(x0: $0, z: Double($1), alpha: alpha, sigma: sigma) }
            assertClose(back, c.back, relative: 1e-12, absolute: 1e-12, "\(c.kind) t=\(c.t) back")
            assertClose(back, prediction.map(Double.init), relative: 1e-5, absolute: 1e-5, "\(c.kind) round trip")
        }
    }
}

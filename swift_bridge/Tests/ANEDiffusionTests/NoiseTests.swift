import XCTest
@testable import ANEDiffusion

final class NoiseTests: XCTestCase {
    struct Golden: Decodable {
        struct Raw: Decodable { let seed: UInt32; let uint32: [UInt32]; let doubles: [Double] }
        struct Draw: Decodable { let shape: [Int]; let values: [Double] }
        struct Stream: Decodable { let seed: UInt32; let draws: [Draw] }
        struct Large: Decodable {
            let seed: UInt32; let shape: [Int]; let sum: Double; let sum_of_squares: Double
            let indices: [Int]; let values: [Double]
        }
        struct Batch: Decodable { let seed: UInt32; let count: Int; let shape: [Int]; let latents: [Double] }
        let raw: [Raw]
        let streams: [Stream]
        let large: Large
        let batch: Batch
    }

    var golden: Golden!

    override func setUpWithError() throws {
        golden = try Fixtures.load(Golden.self, "noise.json")
    }

    func testMersenneTwisterMatchesNumPy() {
        for raw in golden.raw {
            var random = NumPyRandomSource(seed: raw.seed)
            XCTAssertEqual((0..<raw.uint32.count).map { _ in random.nextUInt32() }, raw.uint32, "seed \(raw.seed)")
            var doubles = NumPyRandomSource(seed: raw.seed)
            XCTAssertEqual((0..<raw.doubles.count).map { _ in doubles.nextDouble() }, raw.doubles, "seed \(raw.seed)")
        }
        // The reference MT19937 output for the default seed.
        var reference = MersenneTwister(seed: 5489)
        XCTAssertEqual(reference.next(), 3_499_211_612)
    }

    func testStreamsCarryTheCachedGaussian() {
        for stream in golden.streams {
            let source = NoiseSource(seed: stream.seed)
            for (index, draw) in stream.draws.enumerated() {
                let tensor = source.normal(shape: draw.shape)
                XCTAssertEqual(tensor.shape, draw.shape)
                XCTAssertEqual(tensor.scalars, draw.values.float32, "seed \(stream.seed) draw \(index)")
            }
        }
    }

    func testFullSizeLatent() {
        let large = golden.large
        let noise = NoiseSource(seed: large.seed).normal(shape: large.shape)
        XCTAssertEqual(large.indices.map { noise.scalars[$0] }, large.values.float32)
        let values = noise.scalars.map(Double.init)
        XCTAssertEqual(values.reduce(0, +), large.sum, accuracy: 1e-9 * Double(values.count))
        XCTAssertEqual(values.reduce(0) { $0 + $1 * $1 }, large.sum_of_squares, accuracy: 1e-9 * Double(values.count))
    }

    func testBatchUsesOneSeedPerImage() throws {
        let batch = golden.batch
        let (latents, sources) = try NoiseSource.batch(seed: batch.seed, count: batch.count, shape: batch.shape)
        XCTAssertEqual(latents.shape, [batch.count] + batch.shape)
        XCTAssertEqual(latents.scalars, batch.latents.float32)
        XCTAssertEqual(sources.map(\.seed), [11, 12, 13])
    }

    func testSeedOverflowIsAnError() {
        XCTAssertThrowsError(try NoiseSource.batch(seed: .max, count: 2, shape: [1])) {
            XCTAssertEqual($0 as? SamplingError, .seedOutOfRange(UInt64(UInt32.max) + 1))
        }
        XCTAssertNoThrow(try NoiseSource.batch(seed: .max - 1, count: 2, shape: [1]))
    }
}

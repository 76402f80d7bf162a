import XCTest
@testable import ANEDiffusion

final class GuidanceTests: XCTestCase {
    struct Golden: Decodable {
        struct Case: Decodable { let dim: Int; let w: Double; let scale: Float; let embedding: [Double] }
        let cases: [Case]
        let frequencies: [String: [Double]]
    }

    func testEmbeddingsMatchPython() throws {
        let golden = try Fixtures.load(Golden.self, "guidance.json")
        for (dim, expected) in golden.frequencies {
            assertClose(try Guidance.embeddingFrequencies(dim: Int(dim)!), expected, relative: 2e-7, absolute: 0, "freq \(dim)")
        }
        for c in golden.cases {
            // sin/cos of float32 angles up to scale * w = 14000 rad: one float32 ulp of the angle
            // (0.001 there) moves the result by as much, and numpy's float32 exp (the frequencies)
            // is only good to ~1.5 ulp while Swift's is correctly rounded. So the tolerance is
            // a few ulps of each element's angle, plus float32 rounding.
            let embedding = try Guidance.embedding(w: c.w, dim: c.dim, scale: c.scale)
            let frequencies = try Guidance.embeddingFrequencies(dim: c.dim)
            let angles = frequencies.map { Double(Float(c.w) * c.scale * $0) }
            let padded = angles + angles + (c.dim % 2 == 1 ? [0] : [])
            XCTAssertEqual(embedding.count, c.embedding.count)
            for (index, (value, expected)) in zip(embedding, c.embedding).enumerated() {
                let tolerance = 4e-6 + 4 * padded[index] * Double(Float.ulpOfOne)
                XCTAssertEqual(Double(value), expected, accuracy: tolerance, "dim \(c.dim) w \(c.w) element \(index)")
            }
        }
        XCTAssertThrowsError(try Guidance.embedding(w: 1, dim: 1)) {
            XCTAssertEqual($0 as? SamplingError, .invalidEmbeddingSize(1))
        }
    }

    func testPaperConvention() {
        XCTAssertEqual(Guidance.guidanceScale(w: 3), 4)
        XCTAssertEqual(Guidance.w(guidanceScale: 7.5), 6.5)
        let cond = Tensor(shape: [2], scalars: [1, 2])
        let uncond = Tensor(shape: [2], scalars: [0, 4])
        // (1 + w) cond - w uncond
        XCTAssertEqual(Guidance.combine(cond: cond, uncond: uncond, w: 2).scalars, [3, -2])
        XCTAssertEqual(Guidance.combine(cond: cond, uncond: uncond, w: 0).scalars, cond.scalars)
    }
}

import Foundation
import XCTest
@testable import ANEDiffusion

final class TensorImageTests: XCTestCase {
    func testBatchOperations() {
        let t = Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(t.rows(1..<2), Tensor(shape: [1, 3], scalars: [4, 5, 6]))
        XCTAssertEqual(t.repeatingRows(2).scalars, [1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6])
        XCTAssertEqual(Tensor.concatenate([t, t.rows(0..<1)]).shape, [3, 3])
        XCTAssertEqual(Tensor.stack([t, t]).shape, [2, 2, 3])
    }

    func testTextStatesForUnet() {
        // (B=1, S=2, C=3) -> (1, 3, 1, 2)
        let states = Tensor(shape: [1, 2, 3], scalars: [1, 2, 3, 4, 5, 6])
        let unet = states.textStatesForUnet()
        XCTAssertEqual(unet.shape, [1, 3, 1, 2])
        XCTAssertEqual(unet.scalars, [1, 4, 2, 5, 3, 6])
    }

    func testPixelsLikeToPIL() throws {
        let pixels = Tensor(shape: [1, 3, 1, 2], scalars: [-1, 1, 0, 2, -2, 0.996])
        let image = try RGBImage(pixels: pixels)
        // R G B of pixel 0, then pixel 1: clip((x + 1) * 127.5 + 0.5, 0, 255), truncated.
        XCTAssertEqual(image.bytes, [0, 128, 0, 255, 255, 254])
        XCTAssertThrowsError(try RGBImage(pixels: Tensor(shape: [1, 4, 1, 1], repeating: 0)))
    }

    func testPNGStructure() throws {
        let image = RGBImage(width: 2, height: 1, bytes: [255, 0, 0, 0, 0, 255])
        let png = [UInt8](image.pngData())
        XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        XCTAssertEqual(Array(png[12..<16]), Array("IHDR".utf8))
        XCTAssertEqual(Array(png.suffix(12)), [0, 0, 0, 0] + Array("IEND".utf8) + [0xAE, 0x42, 0x60, 0x82])
        // Known checksums: CRC-32 of "IEND", Adler-32 of "Wikipedia".
        XCTAssertEqual(PNG.crc32(Array("IEND".utf8)), 0xAE42_6082)
        XCTAssertEqual(PNG.adler32(Array("Wikipedia".utf8)), 0x11E6_0398)
        // Large images span several stored deflate blocks.
        let big = RGBImage(width: 200, height: 200, bytes: [UInt8](repeating: 7, count: 120_000))
        XCTAssertGreaterThan(big.pngData().count, 120_000)
    }
}

import XCTest
import CoreGraphicsStandIn
import ANEDiffusion

/// `RGBImage+CoreGraphics.swift`: the image as an 8-bit RGB `CGImage` in 32-bit pixels.
final class CGImageTests: XCTestCase {
    func testCGImageHoldsThePixelsAsRGBX() throws {
        // 3 x 2 pixels, each (r, g, b) distinct.
        let bytes = (0..<18).map { UInt8($0 * 10) }
        let image = try XCTUnwrap(RGBImage(width: 3, height: 2, bytes: bytes).cgImage)
        XCTAssertEqual([image.width, image.height], [3, 2])
        XCTAssertEqual([image.bitsPerComponent, image.bitsPerPixel, image.bytesPerRow], [8, 32, 12])
        XCTAssertEqual(image.alphaInfo, .noneSkipLast)
        XCTAssertEqual(image.colorSpace?.numberOfComponents, 3)
        let data = try XCTUnwrap(image.dataProvider?.data) as Data
        var rgbx: [UInt8] = []
        for pixel in 0..<6 { rgbx += bytes[(pixel * 3)..<(pixel * 3 + 3)] + [255] }
        XCTAssertEqual(Array(data), rgbx)
    }
}

#if canImport(CoreGraphics) || APPLE_STAND_INS
#if canImport(CoreGraphics)
import CoreGraphics
#else  // Linux tests: compiled into CoreMLAdapterTests against a stand-in (README.md, "Core ML adapters on Linux")
import ANEDiffusion
import CoreGraphicsStandIn
#endif
import Foundation

extension RGBImage {
    /// The image as a `CGImage` (8-bit RGB in 32-bit pixels, no alpha), for `UIImage(cgImage:)`,
    /// SwiftUI's `Image(decorative:scale:)` or ImageIO.
    public var cgImage: CGImage? {
        var rgbx = [UInt8](repeating: 255, count: width * height * 4)
        for pixel in 0..<(width * height) {
            rgbx[pixel * 4] = bytes[pixel * 3]
            rgbx[pixel * 4 + 1] = bytes[pixel * 3 + 1]
            rgbx[pixel * 4 + 2] = bytes[pixel * 3 + 2]
        }
        guard let provider = CGDataProvider(data: Data(rgbx) as CFData) else { return nil }
        return CGImage(width: width, height: height, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: width * 4,
                       space: CGColorSpaceCreateDeviceRGB(),
                       bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.noneSkipLast.rawValue),
                       provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)
    }
}
#endif

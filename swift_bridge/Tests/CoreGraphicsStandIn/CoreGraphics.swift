// A TEST-ONLY stand-in for the few CoreGraphics declarations `RGBImage.cgImage` uses, so that
// it compiles and is unit-tested on Linux (see swift_bridge/README.md, "Core ML adapters on
// Linux"). Declarations follow Apple's CoreGraphics documentation; the bodies only keep what
// they are given. It checks our code, not Apple's framework. Declared in Package.swift only on
// Linux, in no product, never used on Apple platforms.
import Foundation

/// Core Foundation's immutable data (toll-free bridged to `NSData`, as on Apple platforms).
public typealias CFData = NSData

/// Whether and where an image has alpha (CoreGraphics' `CGImageAlphaInfo`).
public enum CGImageAlphaInfo: UInt32, Sendable {
    case none = 0
    case premultipliedLast = 1
    case premultipliedFirst = 2
    case last = 3
    case first = 4
    case noneSkipLast = 5
    case noneSkipFirst = 6
    case alphaOnly = 7
}

/// Pixel layout flags (CoreGraphics' `CGBitmapInfo`); the low 5 bits hold a `CGImageAlphaInfo`.
public struct CGBitmapInfo: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let alphaInfoMask = CGBitmapInfo(rawValue: 0x1F)
}

/// How colours are mapped to the destination's gamut (CoreGraphics' `CGColorRenderingIntent`).
public enum CGColorRenderingIntent: Int32, Sendable {
    case defaultIntent = 0
    case absoluteColorimetric = 1
    case relativeColorimetric = 2
    case perceptual = 3
    case saturation = 4
}

/// A colour space (CoreGraphics' `CGColorSpace`); the stand-in knows device RGB only.
public final class CGColorSpace {
    public let numberOfComponents: Int
    init(numberOfComponents: Int) { self.numberOfComponents = numberOfComponents }
}

public func CGColorSpaceCreateDeviceRGB() -> CGColorSpace { CGColorSpace(numberOfComponents: 3) }

/// A source of image bytes (CoreGraphics' `CGDataProvider`).
public final class CGDataProvider {
    public let data: CFData?
    public init?(data: CFData) { self.data = data }
}

/// A bitmap image (CoreGraphics' `CGImage`).
///
/// The stand-in keeps its arguments and, as CoreGraphics does, returns `nil` when they cannot
/// describe a bitmap: too few bits per pixel for the colour components (plus a skipped or
/// alpha channel), a row shorter than its pixels, or less data than `height` rows.
public final class CGImage {
    public let width: Int
    public let height: Int
    public let bitsPerComponent: Int
    public let bitsPerPixel: Int
    public let bytesPerRow: Int
    public let colorSpace: CGColorSpace?
    public let bitmapInfo: CGBitmapInfo
    public let dataProvider: CGDataProvider?
    public let shouldInterpolate: Bool
    public let renderingIntent: CGColorRenderingIntent

    public var alphaInfo: CGImageAlphaInfo {
        CGImageAlphaInfo(rawValue: bitmapInfo.intersection(.alphaInfoMask).rawValue) ?? .none
    }

    public init?(width: Int, height: Int, bitsPerComponent: Int, bitsPerPixel: Int, bytesPerRow: Int,
                 space: CGColorSpace, bitmapInfo: CGBitmapInfo, provider: CGDataProvider,
                 decode: UnsafePointer<CGFloat>?, shouldInterpolate: Bool, intent: CGColorRenderingIntent) {
        guard let alpha = CGImageAlphaInfo(rawValue: bitmapInfo.intersection(.alphaInfoMask).rawValue) else { return nil }
        let channels = space.numberOfComponents + (alpha == .none ? 0 : 1)
        guard width > 0, height > 0, bitsPerComponent > 0, bitsPerPixel >= channels * bitsPerComponent,
              bytesPerRow * 8 >= width * bitsPerPixel,
              let data = provider.data, data.length >= bytesPerRow * (height - 1) + (width * bitsPerPixel + 7) / 8
        else { return nil }
        (self.width, self.height, self.bitsPerComponent, self.bitsPerPixel, self.bytesPerRow) =
            (width, height, bitsPerComponent, bitsPerPixel, bytesPerRow)
        (self.colorSpace, self.bitmapInfo, self.dataProvider, self.shouldInterpolate, self.renderingIntent) =
            (space, bitmapInfo, provider, shouldInterpolate, intent)
    }
}

import Foundation

/// An 8-bit RGB image, rows top to bottom, pixels interleaved `RGBRGB...`.
public struct RGBImage: Equatable, Sendable {
    public let width: Int
    public let height: Int
    /// `height * width * 3` bytes.
    public let bytes: [UInt8]

    public init(width: Int, height: Int, bytes: [UInt8]) {
        precondition(width > 0 && height > 0 && bytes.count == width * height * 3,
                     "RGBImage: \(bytes.count) bytes do not fill \(width)x\(height) RGB")
        (self.width, self.height, self.bytes) = (width, height, bytes)
    }

    /// Decoder pixels `(1, 3, H, W)` or `(3, H, W)` in `[-1, 1]` to bytes, as the Python
    /// pipeline's `to_pil` does in float32: `clip((x + 1) * 127.5 + 0.5, 0, 255)`, truncated.
    public init(pixels: Tensor) throws {
        var shape = pixels.shape
        if shape.count == 4 && shape[0] == 1 { shape.removeFirst() }
        guard shape.count == 3, shape[0] == 3, shape[1] > 0, shape[2] > 0 else {
            throw PipelineError.badModelOutput("expected decoded pixels of shape (1, 3, H, W), got \(pixels.shape)")
        }
        let (height, width) = (shape[1], shape[2])
        let plane = height * width
        var bytes = [UInt8](repeating: 0, count: plane * 3)
        for channel in 0..<3 {
            for index in 0..<plane {
                let value = (pixels.scalars[channel * plane + index] + 1.0) * 127.5 + 0.5
                let clipped = value.isNaN ? 0 : min(max(value, 0), 255)  // numpy's NaN casts are undefined
                bytes[index * 3 + channel] = UInt8(clipped.rounded(.towardZero))
            }
        }
        self.init(width: width, height: height, bytes: bytes)
    }

    /// A PNG file of the image (8-bit RGB, no interlace; uncompressed deflate blocks, so the
    /// encoder stays a few lines and dependency-free).
    public func pngData() -> Data {
        var raw = [UInt8]()
        raw.reserveCapacity(height * (width * 3 + 1))
        for row in 0..<height {
            raw.append(0)  // filter: none
            raw.append(contentsOf: bytes[(row * width * 3)..<((row + 1) * width * 3)])
        }
        var header = [UInt8]()
        header += PNG.bigEndian(UInt32(width)) + PNG.bigEndian(UInt32(height))
        header += [8, 2, 0, 0, 0]  // 8 bits, RGB, deflate, adaptive filtering, no interlace
        var png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        png += PNG.chunk("IHDR", header)
        png += PNG.chunk("IDAT", PNG.zlibStored(raw))
        png += PNG.chunk("IEND", [])
        return Data(png)
    }
}

/// The few pieces of PNG and zlib a stored-block encoder needs.
enum PNG {
    static func bigEndian(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
    }

    static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let typed = Array(type.utf8) + data
        return bigEndian(UInt32(data.count)) + typed + bigEndian(crc32(typed))
    }

    /// A zlib stream of stored (uncompressed) deflate blocks of at most 65535 bytes.
    static func zlibStored(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x78, 0x01]
        var offset = 0
        repeat {
            let length = min(65_535, data.count - offset)
            let final: UInt8 = offset + length == data.count ? 1 : 0
            out += [final, UInt8(length & 0xFF), UInt8(length >> 8), UInt8(~length & 0xFF), UInt8((~length >> 8) & 0xFF)]
            out += data[offset..<(offset + length)]
            offset += length
        } while offset < data.count
        return out + bigEndian(adler32(data))
    }

    static let crcTable: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func crc32(_ data: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for byte in data { c = crcTable[Int((c ^ UInt32(byte)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }

    static func adler32(_ data: [UInt8]) -> UInt32 {
        var (a, b): (UInt32, UInt32) = (1, 0)
        for byte in data {
            a = (a + UInt32(byte)) % 65_521
            b = (b + a) % 65_521
        }
        return (b << 16) | a
    }
}

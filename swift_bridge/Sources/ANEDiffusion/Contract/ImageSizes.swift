import Foundation

/// One image size an export takes, with its latent size (the contract's optional `sizes` list).
public struct ImageSize: Codable, Equatable, Hashable, Sendable {
    public var height: Int
    public var width: Int
    public var latentHeight: Int
    public var latentWidth: Int

    public init(height: Int, width: Int, latentHeight: Int, latentWidth: Int) {
        (self.height, self.width, self.latentHeight, self.latentWidth) = (height, width, latentHeight, latentWidth)
    }

    enum CodingKeys: String, CodingKey {
        case height, width
        case latentHeight = "latent_height"
        case latentWidth = "latent_width"
    }
}

extension ExportContract {
    /// The image sizes the packages take: the `sizes` list of a multi-size export (Core ML
    /// enumerated shapes; its first entry is `image`), or the one size of `image`.
    public var imageSizes: [ImageSize] {
        if let sizes, !sizes.isEmpty { return sizes }
        return [ImageSize(height: image.height, width: image.width, latentHeight: latent.height,
                          latentWidth: latent.width)]
    }

    /// `sizes` agrees with `image`, the VAE factor and the packages' enumerated shapes; an export
    /// made for another runtime (`target`, e.g. Apple's pipeline) is refused.
    func validateSizesAndTarget() throws {
        if let target, target != "ane-diffusion" {
            throw ContractError(field: "target", message: "this export is for \(target) (Apple's StableDiffusionPipeline "
                                    + "when apple-pipeline: w fixed, epsilon output); convert with the default target")
        }
        guard let sizes else { return }
        guard let first = sizes.first, first.height == image.height, first.width == image.width else {
            throw ContractError(field: "sizes", message: "the first size must be image "
                                    + "(\(image.height)x\(image.width))")
        }
        let factor = vaeScaleFactor
        for (i, size) in sizes.enumerated() where size.latentHeight * factor != size.height
            || size.latentWidth * factor != size.width || size.latentHeight <= 0 || size.latentWidth <= 0 {
            throw ContractError(field: "sizes[\(i)]", message: "\(size.height)x\(size.width) does not match its latent "
                                    + "\(size.latentHeight)x\(size.latentWidth) at VAE factor \(factor)")
        }
        if let shapes = components.unet.input("sample")?.shapes {
            let batch = components.unet.input("sample")?.shape.first ?? 1
            let want = sizes.map { [batch, latent.channels, $0.latentHeight, $0.latentWidth] }
            guard shapes == want else {
                throw ContractError(field: "components.Unet.inputs.sample.shapes",
                                    message: "expected \(want) (one per size), got \(shapes)")
            }
        }
    }
}

extension PipelineConfiguration {
    /// The latent shape `(C, h, w)` for an image of `height` x `width`; `nil` for the default size.
    /// A size the export does not list is an ``PipelineError/invalidRequest(_:)`` naming the ones it does.
    public func latentShape(height: Int?, width: Int?) throws -> (shape: [Int], height: Int, width: Int) {
        guard height != nil || width != nil else { return (latentShape, imageHeight, imageWidth) }
        let h = height ?? imageHeight, w = width ?? imageWidth
        let sizes = imageSizes.isEmpty
            ? [ImageSize(height: imageHeight, width: imageWidth, latentHeight: latentShape[1], latentWidth: latentShape[2])]
            : imageSizes
        guard let size = sizes.first(where: { $0.height == h && $0.width == w }) else {
            let listed = sizes.map { "\($0.height)x\($0.width)" }.joined(separator: ", ")
            throw PipelineError.invalidRequest("this export takes \(listed) images (height x width), not \(h)x\(w); "
                                                   + "convert again with --sizes")
        }
        return ([latentShape[0], size.latentHeight, size.latentWidth], size.height, size.width)
    }
}

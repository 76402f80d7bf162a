/// The data latents' per-channel range, and clamping the clean-sample estimate `x_hat` to it
/// (`ane_diffusion.latent_range.LatentRange`): *static thresholding*.
///
/// At high guidance weights a few-step sampler's `x_hat` can leave the range the data latents
/// occupy, and the decoder draws such values as white or as a colour cast. Imagen clips `x_hat`
/// to [-1, 1] in pixel space at every step (Saharia et al. 2022, "Photorealistic Text-to-Image
/// Diffusion Models with Deep Language Understanding", section 2.3); here the same is done in
/// latent space, where the range is measured instead of known: per channel, two percentiles
/// (`percentiles`, by default 0.05 and 99.95) of the training latents.
///
/// Units: diffusion latents, i.e. VAE latents x the VAE's scaling factor (what the UNet samples,
/// before the pipeline divides by `latent.scaling_factor` for the decoder). The range travels in
/// the model card (`latent_range`, so in an export's contract) and is applied only when
/// ``GenerationSettings/clamp`` asks for it.
public struct LatentRange: Codable, Equatable, Sendable {
    /// Lower bound of each channel, `(C)`.
    public let low: [Double]
    /// Upper bound of each channel, `(C)`; `low[c] < high[c]`.
    public let high: [Double]
    /// The percentiles of the training latents that `low` and `high` are, e.g. `[0.05, 99.95]`.
    public let percentiles: [Double]
    /// How many latents the bounds were measured on (0: unknown).
    public let examples: Int

    /// Number of latent channels `C` the range bounds.
    public var channels: Int { low.count }

    /// A range of `low.count == high.count >= 1` finite bounds with `low[c] < high[c]`; throws a
    /// ``ContractError`` on `model.latent_range` otherwise (the Python card's checks).
    public init(low: [Double], high: [Double], percentiles: [Double] = [0.05, 99.95], examples: Int = 0) throws {
        self.low = low
        self.high = high
        self.percentiles = percentiles
        self.examples = examples
        try validate()
    }

    enum CodingKeys: String, CodingKey {
        case low, high, percentiles, examples
    }

    /// Decodes `{"low": [...], "high": [...], "percentiles"?: [a, b], "examples"?: n}`; unknown
    /// keys are refused, as in Python.
    public init(from decoder: Decoder) throws {
        let names = try decoder.container(keyedBy: AnyKey.self).allKeys.map(\.stringValue)
        let unknown = names.filter { CodingKeys(rawValue: $0) == nil }.sorted()
        if !unknown.isEmpty {
            throw ContractError(field: LatentRange.field,
                                message: "unknown latent_range fields: \(unknown.joined(separator: ", "))")
        }
        let c = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(low: try c.decode([Double].self, forKey: .low), high: try c.decode([Double].self, forKey: .high),
                      percentiles: try c.decodeIfPresent([Double].self, forKey: .percentiles) ?? [0.05, 99.95],
                      examples: try c.decodeIfPresent(Int.self, forKey: .examples) ?? 0)
    }

    /// The checks of Python's `LatentRange`: one low and one high bound a channel, each pair
    /// finite with `low < high`, two percentiles.
    public func validate() throws {
        guard low.count == high.count, !low.isEmpty else {
            throw ContractError(field: LatentRange.field, message: "needs one low and one high bound a channel, got "
                                    + "\(low.count) and \(high.count)")
        }
        for (channel, (lo, hi)) in zip(low, high).enumerated() where !(lo.isFinite && hi.isFinite && lo < hi) {
            throw ContractError(field: LatentRange.field, message: "bounds must be finite with low < high, got "
                                    + "[\(lo), \(hi)] for channel \(channel)")
        }
        guard percentiles.count == 2 else {
            throw ContractError(field: LatentRange.field, message: "percentiles must be two numbers, got \(percentiles)")
        }
    }

    /// `x0` `(B, C, H, W)` with channel `c` clipped to `[Float(low[c]), Float(high[c])]`: numpy's
    /// `np.clip` with float32 bounds, bit for bit (a NaN stays NaN). Throws
    /// ``PipelineError/invalidRequest(_:)`` when `x0` is not 4-D with `channels` channels.
    public func clamp(_ x0: Tensor) throws -> Tensor {
        guard x0.shape.count == 4, x0.shape[1] == channels else {
            throw PipelineError.invalidRequest("a \(channels)-channel latent range cannot clamp shape \(x0.shape)")
        }
        let plane = x0.shape[2] * x0.shape[3]
        var out = x0.scalars
        for b in 0..<x0.shape[0] {
            for c in 0..<channels {
                let (lo, hi) = (Float(low[c]), Float(high[c]))
                let start = (b * channels + c) * plane
                for i in start..<(start + plane) {
                    if out[i] < lo {
                        out[i] = lo
                    } else if out[i] > hi {
                        out[i] = hi
                    }
                }
            }
        }
        return Tensor(shape: x0.shape, scalars: out)
    }

    static let field = "model.latent_range"

    /// Any key of a JSON object, to find the unknown ones.
    private struct AnyKey: CodingKey {
        let stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}

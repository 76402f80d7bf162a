import Foundation

/// Classifier-free guidance in the paper's convention, and the guidance-weight embedding.
///
/// `w` is the guidance weight of Meng et al. (2023): the guided prediction is
/// `(1 + w) * cond - w * uncond`, so diffusers' `guidance_scale` is `1 + w` and `w = 0` is the
/// plain conditional model. Mirrors `ane_diffusion.guidance`.
public enum Guidance {
    /// `w` is multiplied by this before the sinusoid in LCM students (diffusers' LCM pipeline) and
    /// in cards without `guidance_embedding_scale`; students distilled since record their own.
    public static let wScale: Float = 1000

    /// diffusers' `guidance_scale` for the paper's `w`.
    public static func guidanceScale(w: Double) -> Double { 1 + w }

    /// The paper's `w` for a diffusers `guidance_scale`.
    public static func w(guidanceScale: Double) -> Double { guidanceScale - 1 }

    /// The guided prediction `cond + w * (cond - uncond)`, in float32 as numpy computes it
    /// (a Python float `w` times a float32 array stays float32).
    public static func combine(cond: Tensor, uncond: Tensor, w: Double) -> Tensor {
        precondition(cond.shape == uncond.shape, "combine: shapes \(cond.shape) and \(uncond.shape) differ")
        let weight = Float(w)
        var out = [Float](repeating: 0, count: cond.count)
        for i in 0..<cond.count {
            out[i] = cond.scalars[i] + weight * (cond.scalars[i] - uncond.scalars[i])
        }
        return Tensor(shape: cond.shape, scalars: out)
    }

    /// The `dim / 2` float32 frequencies `exp(-i * log(10000) / (dim/2 - 1))`.
    public static func embeddingFrequencies(dim: Int) throws -> [Float] {
        guard dim >= 2 else { throw SamplingError.invalidEmbeddingSize(dim) }
        let half = dim / 2
        let scale = half > 1 ? log(10000.0) / Double(half - 1) : 0.0
        let negative = Float(-scale)
        // float32 product as numpy does; exp evaluated in double and rounded once.
        return (0..<half).map { Float(exp(Double(Float($0) * negative))) }
    }

    /// The sinusoidal embedding of `w`: `[sin(scale w f) | cos(scale w f)]` (+ a zero if `dim` is
    /// odd), float32, `scale` the card's `guidanceEmbeddingScale`. At 1000 it matches diffusers'
    /// `get_guidance_scale_embedding`; it is the embedding baked into exported student UNets
    /// (which take raw `w` as their `guidance_weight` input).
    public static func embedding(w: Double, dim: Int, scale: Float = wScale) throws -> [Float] {
        let frequencies = try embeddingFrequencies(dim: dim)
        let scaled = Float(w) * scale
        let angles = frequencies.map { scaled * $0 }
        var out = angles.map { Float(sin(Double($0))) } + angles.map { Float(cos(Double($0))) }
        if dim % 2 == 1 { out.append(0) }
        return out
    }
}

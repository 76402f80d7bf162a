/// Something that holds model weights which can be loaded ahead of use and dropped to free
/// memory. Both calls default to doing nothing (scripted models, always-resident models).
public protocol ResourceManaging {
    /// Load the weights now (otherwise they are loaded on first use).
    func loadResources() throws
    /// Drop the weights; the next use loads them again.
    func unloadResources()
}

extension ResourceManaging {
    public func loadResources() throws {}
    public func unloadResources() {}
}

/// The text encoder: one prompt's token ids to its hidden states.
public protocol TextEncoding: ResourceManaging {
    /// Hidden states `(1, L, C)` for the `L` token ids of one prompt (start, tokens, end, padding).
    func encode(tokens: [Int]) throws -> Tensor
}

/// The UNet (or any denoising network).
public protocol DenoisingModel: ResourceManaging {
    /// The raw model output, in the card's prediction type, for latents `sample` `(B, C, h, w)`
    /// at model timestep `timestep`, conditioned on text states `hiddenStates` `(B, L, C_text)`.
    ///
    /// `guidanceWeights` holds the raw `w` of each row for a guidance-distilled student (the
    /// embedding is computed inside the model) and is `nil` for a teacher, which the pipeline
    /// guides itself with a batch of unconditional and conditional rows.
    func predict(sample: Tensor, timestep: Int, hiddenStates: Tensor, guidanceWeights: [Float]?) throws -> Tensor
}

/// The VAE decoder: latents to pixels.
public protocol ImageDecoding: ResourceManaging {
    /// Pixels `(1, 3, H, W)` in `[-1, 1]` for latents `(1, C, h, w)` already divided by the
    /// VAE scaling factor.
    func decode(latents: Tensor) throws -> Tensor
}

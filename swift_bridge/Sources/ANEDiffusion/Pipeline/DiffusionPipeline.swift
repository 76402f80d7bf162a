/// Text to image: tokenize, encode, sample, decode (`ane_diffusion.pipeline.Pipeline`).
///
/// Written against ``TextEncoding``, ``DenoisingModel`` and ``ImageDecoding``, so the same code
/// drives the Core ML models of an export folder (see `DiffusionPipeline(exportFolder:)` on
/// Apple platforms) and the scripted models of the tests. Gives the same latents as the Python
/// pipeline for the same models, prompt and settings.
public final class DiffusionPipeline {
    public let configuration: PipelineConfiguration
    public let tokenizer: CLIPTokenizer
    public let textEncoder: TextEncoding
    public let unet: DenoisingModel
    public let decoder: ImageDecoding
    /// Load each model just before its phase and unload it right after (text encoder, then
    /// UNet, then decoder), so at most one is resident: for phones. Otherwise models stay
    /// loaded after first use.
    public var reduceMemory: Bool

    public init(configuration: PipelineConfiguration, tokenizer: CLIPTokenizer, textEncoder: TextEncoding,
                unet: DenoisingModel, decoder: ImageDecoding, reduceMemory: Bool = false) {
        self.configuration = configuration
        self.tokenizer = tokenizer
        self.textEncoder = textEncoder
        self.unet = unet
        self.decoder = decoder
        self.reduceMemory = reduceMemory
    }

    /// Load every model now (e.g. at app start), so the first generation does not pay for it.
    public func loadResources() throws {
        try textEncoder.loadResources()
        try unet.loadResources()
        try decoder.loadResources()
    }

    /// Drop every model's weights.
    public func unloadResources() {
        textEncoder.unloadResources()
        unet.unloadResources()
        decoder.unloadResources()
    }

    /// Fill the settings' defaults from the card and reject what cannot run, with one-line
    /// messages (`Pipeline.resolve`). Tokenizes every prompt, so a too-long one fails here.
    public func resolve(prompts: [String], settings: GenerationSettings) throws -> ResolvedSettings {
        let card = configuration.card
        var warnings: [String] = []
        let sampler: Sampler
        if let chosen = settings.sampler {
            sampler = chosen
        } else if let recommended = Sampler(rawValue: card.recommendedSampler) {
            sampler = recommended
        } else {
            sampler = .ddim
            warnings.append("the card recommends sampler \(card.recommendedSampler), which only the Python "
                                + "package has; using ddim")
        }
        let steps = settings.steps ?? card.steps ?? card.recommendedSteps
        let w = settings.w ?? card.defaultW
        var negativePrompt = settings.negativePrompt
        guard !prompts.isEmpty else { throw PipelineError.invalidRequest("no prompt given") }
        guard steps >= 1 else { throw PipelineError.invalidRequest("steps must be >= 1, got \(steps)") }
        guard settings.imageCount >= 1 else {
            throw PipelineError.invalidRequest("imageCount must be >= 1, got \(settings.imageCount)")
        }
        if UInt64(settings.seed) + UInt64(settings.imageCount - 1) > UInt64(UInt32.max) {
            throw PipelineError.invalidRequest("seed \(settings.seed) + \(settings.imageCount - 1) images passes 2**32 - 1")
        }
        if settings.clamp {
            try checkClamp()
        }
        if card.isStudent {
            guard card.wMin <= w && w <= card.wMax else {
                throw PipelineError.invalidRequest("w=\(w) is outside this student's range [\(card.wMin), \(card.wMax)] "
                                                       + "(guidance_scale = 1 + w)")
            }
            if let distilled = card.steps, distilled != steps {
                warnings.append("this student was distilled for \(distilled) steps; \(steps) may look worse")
            }
            if !negativePrompt.isEmpty {
                warnings.append("negative prompts need the teacher's unconditional branch; ignored for a student")
                negativePrompt = ""
            }
        }
        for prompt in prompts + [negativePrompt] {
            _ = try tokenize(prompt, truncate: settings.truncatePrompts)
        }
        let size = try configuration.latentShape(height: settings.height, width: settings.width)
        let timesteps = try sampler.defaultTimesteps(steps: steps, numTrainTimesteps: configuration.schedule.numTrainTimesteps)
        return ResolvedSettings(steps: steps, w: w, sampler: sampler, seed: settings.seed, imageCount: settings.imageCount,
                                negativePrompt: negativePrompt, truncatePrompts: settings.truncatePrompts,
                                timesteps: timesteps, warnings: warnings, latentShape: size.shape,
                                imageHeight: size.height, imageWidth: size.width, clamp: settings.clamp)
    }

    /// Clamping needs the card's latent range, with one bound pair per latent channel (`_check_clamp`).
    private func checkClamp() throws {
        guard let range = configuration.card.latentRange else {
            throw PipelineError.invalidRequest("clamp needs the data latents' range, and this model's card records none "
                                                   + "(students distilled by ane-diffusion from in-memory data carry one)")
        }
        let channels = configuration.latentShape.first ?? 0
        guard range.channels == channels else {
            throw PipelineError.invalidRequest("the card's latent_range has \(range.channels) channels; the latents have "
                                                   + "\(channels)")
        }
    }

    /// Generate `settings.imageCount` images for one prompt.
    public func generate(prompt: String, settings: GenerationSettings = GenerationSettings(),
                         progress: ((PipelineProgress) -> Bool)? = nil) throws -> GenerationResult {
        try generate(prompts: [prompt], settings: settings, progress: progress)
    }

    /// Generate `settings.imageCount` images for each prompt (`Pipeline.text_to_image`).
    ///
    /// Models are called in the same order as in Python per model: the text encoder for the
    /// negative prompt (guided teachers only) then each prompt; the UNet for each prompt's
    /// steps; the decoder for each image.
    public func generate(prompts: [String], settings: GenerationSettings = GenerationSettings(),
                         progress: ((PipelineProgress) -> Bool)? = nil) throws -> GenerationResult {
        let s = try resolve(prompts: prompts, settings: settings)
        let card = configuration.card
        var timings = Timings()
        let ((latents, images), total) = try measure { () throws -> ([Tensor], [RGBImage]) in
            // 1. Text encoder.
            let (conds, uncond) = try phase(textEncoder) { () throws -> ([Tensor], Tensor?) in
                let needsUncond = !card.isStudent && s.w != 0
                let uncond = needsUncond ? try encode(s.negativePrompt, s, &timings) : nil
                return (try prompts.map { try encode($0, s, &timings) }, uncond)
            }
            // 2. UNet.
            let sampled = try phase(unet) { () throws -> [Tensor] in
                try conds.enumerated().map { index, cond in
                    try sample(cond: cond, uncond: uncond, settings: s, timings: &timings) { step, t, z in
                        let report = PipelineProgress(promptIndex: index, promptCount: prompts.count, step: step,
                                                      stepCount: s.timesteps.count, timestep: t, latents: z)
                        if let progress, !progress(report) { throw PipelineError.cancelled }
                    }
                }
            }
            let latents = sampled.flatMap { batch in (0..<batch.batchSize).map { batch.rows($0..<($0 + 1)) } }
            // 3. Decoder.
            let images = try phase(decoder) { () throws -> [RGBImage] in
                try latents.map { try RGBImage(pixels: decode($0, s, &timings)) }
            }
            return (latents, images)
        }
        timings.total = total
        let metadata = prompts.flatMap { prompt in
            (0..<s.imageCount).map { i in
                ImageMetadata(prompt: prompt, negativePrompt: s.negativePrompt, seed: s.seed + UInt32(i), steps: s.steps,
                              w: s.w, guidanceScale: Guidance.guidanceScale(w: s.w), sampler: s.sampler.rawValue,
                              height: s.imageHeight, width: s.imageWidth,
                              modelKind: card.kind.rawValue, clamp: s.clamp)
            }
        }
        return GenerationResult(images: images, latents: latents, metadata: metadata, timings: timings, warnings: s.warnings)
    }

    /// Sample one prompt's batch of `imageCount` latents from seeded noise (`Pipeline.sample`).
    public func sample(cond: Tensor, uncond: Tensor?, settings s: ResolvedSettings, timings: inout Timings,
                       callback: StepCallback? = nil) throws -> Tensor {
        let shape = s.latentShape.isEmpty ? configuration.latentShape : s.latentShape
        let (z, sources) = try NoiseSource.batch(seed: s.seed, count: s.imageCount, shape: shape)
        var calls: [Double] = []
        let denoiser = GuidedDenoiser(model: unet, predictionType: configuration.card.predictionType,
                                      isStudent: configuration.card.isStudent, schedule: configuration.schedule,
                                      cond: cond.repeatingRows(s.imageCount), uncond: uncond?.repeatingRows(s.imageCount),
                                      w: s.w, clampRange: s.clamp ? configuration.card.latentRange : nil,
                                      onModelCall: { calls.append($0) })
        defer {
            timings.unet += calls.reduce(0, +)
            timings.unetCalls += calls.count
        }
        return try Sampling.run(s.sampler, denoise: { try denoiser($0, $1) }, z: z, timesteps: s.timesteps,
                                schedule: configuration.schedule,
                                noise: { shape in NoiseSource.stackedNormal(sources, shape: Array(shape.dropFirst())) },
                                boundaryCondition: configuration.card.kind == .lcm, callback: callback)
    }

    private func tokenize(_ prompt: String, truncate: Bool) throws -> [Int] {
        try tokenizer.encode(prompt, maxLength: configuration.maxTokenLength, truncate: truncate)
    }

    private func encode(_ prompt: String, _ s: ResolvedSettings, _ timings: inout Timings) throws -> Tensor {
        let ids = try tokenize(prompt, truncate: s.truncatePrompts)
        let (hidden, seconds) = try measure { try textEncoder.encode(tokens: ids) }
        timings.textEncoder += seconds
        guard hidden.shape.count == 3, hidden.shape[0] == 1, hidden.shape[1] == ids.count else {
            throw PipelineError.badModelOutput("the text encoder returned shape \(hidden.shape); expected "
                                                   + "[1, \(ids.count), C]")
        }
        return hidden
    }

    private func decode(_ latents: Tensor, _ s: ResolvedSettings, _ timings: inout Timings) throws -> Tensor {
        // A Python float divides a float32 array in float32.
        let factor = Float(configuration.scalingFactor)
        let (pixels, seconds) = try measure { try decoder.decode(latents: latents.map { $0 / factor }) }
        timings.vaeDecode += seconds
        let expected = [1, 3, s.imageHeight, s.imageWidth]
        guard pixels.shape == expected else {
            throw PipelineError.badModelOutput("the decoder returned shape \(pixels.shape); expected \(expected)")
        }
        return pixels
    }

    /// Run one phase with `model`; in reduced-memory mode load it first and unload it after.
    private func phase<T>(_ model: ResourceManaging, _ body: () throws -> T) throws -> T {
        guard reduceMemory else { return try body() }
        try model.loadResources()
        defer { model.unloadResources() }
        return try body()
    }
}

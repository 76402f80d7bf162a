extension ExportContract {
    /// Check that the parts of the contract agree with each other: the card, the latent and
    /// image geometry, and each component's inputs and outputs (names, shapes, dtypes). The
    /// first problem is thrown as a ``ContractError`` naming the field.
    public func validate() throws {
        guard formatVersion == ExportContract.supportedFormatVersion else {
            throw ContractError(field: "format_version", message: "unsupported version \(formatVersion) "
                                    + "(this package reads \(ExportContract.supportedFormatVersion))")
        }
        try model.validate()
        try require(image.height > 0 && image.width > 0, "image", "height and width must be positive")
        try require(latent.channels > 0 && latent.height > 0 && latent.width > 0, "latent",
                    "channels, height and width must be positive")
        try require(latent.scalingFactor > 0, "latent.scaling_factor", "must be positive")
        try require(image.height % latent.height == 0 && image.width % latent.width == 0
                        && image.height / latent.height == image.width / latent.width, "image",
                    "\(image.height)x\(image.width) is not a whole multiple of the latent "
                        + "\(latent.height)x\(latent.width)")
        try require(tokenizer.maxLength >= 2, "tokenizer.max_length", "must be >= 2")
        _ = try NoiseSchedule(config: schedule)

        let hiddenSize = try validateTextEncoder()
        try validateUnet(hiddenSize: hiddenSize)
        try validateDecoder(components.vaeDecoder, "VAEDecoder")
        if let full = components.vaeDecoderFull { try validateDecoder(full, "VAEDecoderFull") }
        try validateEncoder()
        try validateVariants()
        try validateSizesAndTarget()
    }

    /// VAE downsampling factor: image pixels per latent pixel.
    public var vaeScaleFactor: Int { image.height / latent.height }

    /// The latent shape of one image, `(C, h, w)`.
    public var latentShape: [Int] { [latent.channels, latent.height, latent.width] }

    /// `TextEncoder`: `input_ids (1, L)`, `last_hidden_state (1, L, C)`; returns `C`.
    private func validateTextEncoder() throws -> Int {
        let spec = components.textEncoder
        let ids = try input(spec, "TextEncoder", "input_ids")
        try expect(ids.shape, [1, tokenizer.maxLength], "components.TextEncoder.inputs.input_ids.shape")
        let hidden = try output(spec, "TextEncoder", "last_hidden_state")
        try require(hidden.shape.count == 3 && hidden.shape[0] == 1 && hidden.shape[1] == tokenizer.maxLength
                        && hidden.shape[2] > 0, "components.TextEncoder.outputs.last_hidden_state.shape",
                    "expected [1, \(tokenizer.maxLength), C], got \(hidden.shape)")
        return hidden.shape[2]
    }

    /// `Unet`: `sample (B, C, h, w)`, `timestep (B)`, `encoder_hidden_states (B, hidden, 1, L)`,
    /// `guidance_weight (B)` for a student and never for a teacher; one output of the sample's shape.
    private func validateUnet(hiddenSize: Int) throws {
        let spec = components.unet
        let sample = try input(spec, "Unet", "sample")
        try require(sample.shape.count == 4 && sample.shape[0] >= 1, "components.Unet.inputs.sample.shape",
                    "expected [B, \(latent.channels), \(latent.height), \(latent.width)], got \(sample.shape)")
        let batch = sample.shape[0]
        try expect(sample.shape, [batch] + latentShape, "components.Unet.inputs.sample.shape")
        try expect(try input(spec, "Unet", "timestep").shape, [batch], "components.Unet.inputs.timestep.shape")
        try expect(try input(spec, "Unet", "encoder_hidden_states").shape, [batch, hiddenSize, 1, tokenizer.maxLength],
                   "components.Unet.inputs.encoder_hidden_states.shape")
        let guidance = spec.input(ExportContract.guidanceInput)
        if model.isStudent {
            guard let guidance else {
                throw ContractError(field: "components.Unet.inputs", message: "a \(model.kind.rawValue) student needs "
                                        + "a \(ExportContract.guidanceInput) input (it takes w); found "
                                        + spec.inputs.map(\.name).joined(separator: ", "))
            }
            try expect(guidance.shape, [batch], "components.Unet.inputs.guidance_weight.shape")
        } else if guidance != nil {
            throw ContractError(field: "components.Unet.inputs", message: "a teacher takes no "
                                    + "\(ExportContract.guidanceInput) input (it is guided with two evaluations); "
                                    + "is model.kind wrong?")
        }
        guard let prediction = spec.outputs.first else {
            throw ContractError(field: "components.Unet.outputs", message: "missing (expected one output, "
                                    + "e.g. noise_pred)")
        }
        try expect(prediction.shape, sample.shape, "components.Unet.outputs.\(prediction.name).shape")
        if let chunks = spec.chunks {
            try require(!chunks.isEmpty && chunks.allSatisfy { !$0.isEmpty }, "components.Unet.chunks",
                        "must list the chunk files")
        }
    }

    /// `VAEDecoder` (and an optional `VAEDecoderFull`): one input `(1, C, h, w)`, one output `(1, 3, H, W)`.
    private func validateDecoder(_ spec: ComponentSpec, _ name: String) throws {
        guard let z = spec.inputs.first else {
            throw ContractError(field: "components.\(name).inputs", message: "missing (expected one input)")
        }
        try expect(z.shape, [1] + latentShape, "components.\(name).inputs.\(z.name).shape")
        guard let pixels = spec.outputs.first else {
            throw ContractError(field: "components.\(name).outputs", message: "missing (expected one output)")
        }
        try expect(pixels.shape, [1, 3, image.height, image.width], "components.\(name).outputs.\(pixels.name).shape")
    }

    /// The optional `decoders` / `encoders` maps: keys `tiny` / `full`, each naming a listed component.
    private func validateVariants() throws {
        for (field, table) in [("decoders", decoders), ("encoders", encoders)] {
            guard let table else { continue }
            for (variant, name) in table.sorted(by: { $0.key < $1.key }) {
                try require(DecoderChoice(rawValue: variant) != nil && variant != "automatic", "\(field).\(variant)",
                            "unknown variant (expected tiny or full)")
                try require(components.named(name) != nil, "\(field).\(variant)",
                            "names \(name), which components does not list")
            }
        }
    }

    /// Optional `VAEEncoder`: one input `(1, 3, H, W)`, one output of `C` or `2C` (mean and
    /// log-variance) latent channels.
    private func validateEncoder() throws {
        guard let spec = components.vaeEncoder else { return }
        guard let x = spec.inputs.first, let moments = spec.outputs.first else {
            throw ContractError(field: "components.VAEEncoder", message: "expected one input and one output")
        }
        try expect(x.shape, [1, 3, image.height, image.width], "components.VAEEncoder.inputs.\(x.name).shape")
        let c = latent.channels
        try require(moments.shape == [1, c, latent.height, latent.width]
                        || moments.shape == [1, 2 * c, latent.height, latent.width],
                    "components.VAEEncoder.outputs.\(moments.name).shape",
                    "expected [1, \(c) or \(2 * c), \(latent.height), \(latent.width)], got \(moments.shape)")
    }

    private func input(_ spec: ComponentSpec, _ component: String, _ name: String) throws -> TensorSpec {
        guard let found = spec.input(name) else {
            throw ContractError(field: "components.\(component).inputs", message: "missing input \"\(name)\"; found "
                                    + spec.inputs.map(\.name).joined(separator: ", "))
        }
        return found
    }

    private func output(_ spec: ComponentSpec, _ component: String, _ name: String) throws -> TensorSpec {
        guard let found = spec.output(name) else {
            throw ContractError(field: "components.\(component).outputs", message: "missing output \"\(name)\"; "
                                    + "found " + spec.outputs.map(\.name).joined(separator: ", "))
        }
        return found
    }

    private func expect(_ shape: [Int], _ expected: [Int], _ field: String) throws {
        try require(shape == expected, field, "expected \(expected), got \(shape)")
    }

    private func require(_ condition: Bool, _ field: String, _ message: @autoclosure () -> String) throws {
        if !condition { throw ContractError(field: field, message: message()) }
    }
}

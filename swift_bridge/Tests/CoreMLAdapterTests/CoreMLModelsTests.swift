import XCTest
@_spi(StandIn) import CoreMLStandIn
import ANEDiffusion

/// `CoreMLModels.swift`: the text encoder, UNet (whole and chunked) and decoder adapters, run on
/// fake Core ML models whose inputs and outputs follow the export contract.
final class CoreMLModelsTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        StandInModels.reset()
        folder = try temporaryFolder(self)
    }

    func model(_ name: String) -> ManagedMLModel {
        ManagedMLModel(url: folder.appendingPathComponent(name), configuration: MLModelConfiguration())
    }

    // MARK: - Text encoder

    func textEncoderSpec(ids: TensorDType) -> ComponentSpec {
        ComponentSpec(file: "TextEncoder.mlpackage",
                      inputs: [TensorSpec(name: "input_ids", shape: [1, 5], dtype: ids)],
                      outputs: [TensorSpec(name: "pooled_outputs", shape: [1, 3], dtype: .float16),
                                TensorSpec(name: "last_hidden_state", shape: [1, 5, 3], dtype: .float16)])
    }

    /// Hidden state `[s, c]` of the fake text encoder: a function of the token id at `s`.
    func hidden(_ id: Double, _ c: Int) -> Double { id / 1000 + 0.3 * Double(c) }

    func testTextEncoderSendsTheIdsInTheContractTypeAndReadsTheNamedOutput() throws {
        let tokens = [49406, 320, 1929, 49407, 49407]
        for ids in [TensorDType.int32, .float32] {  // int32: our exports; float32: what Apple's pipeline feeds
            StandInModels.reset()
            let spec = textEncoderSpec(ids: ids)
            var received: [Double] = []
            installModel(at: folder.appendingPathComponent("TextEncoder.mlmodelc"), spec) { input, _ in
                received = values(input, "input_ids")
                let states = received.flatMap { id in (0..<3).map { self.hidden(id, $0) } }
                return try outputs(["last_hidden_state": ([1, 5, 3], .float16, states),
                                    "pooled_outputs": ([1, 3], .float16, [9, 9, 9])])
            }
            let encoder = try CoreMLTextEncoder(model: model("TextEncoder.mlmodelc"), component: spec)
            let states = try encoder.encode(tokens: tokens)
            XCTAssertEqual(received, tokens.map(Double.init), "\(ids)")
            XCTAssertEqual(states.shape, [1, 5, 3])
            let expected = tokens.flatMap { id in (0..<3).map { Float(rounded(self.hidden(Double(id), $0), .float16)) } }
            XCTAssertEqual(states.scalars, expected, "\(ids)")
        }
    }

    func testTextEncoderRejectsAWrongNumberOfIds() throws {
        let spec = textEncoderSpec(ids: .int32)
        let encoder = try CoreMLTextEncoder(model: model("TextEncoder.mlmodelc"), component: spec)
        XCTAssertThrowsError(try encoder.encode(tokens: [49406, 49407])) {
            XCTAssertEqual($0 as? PipelineError, .invalidRequest("the text encoder takes [1, 5] ids, got 2"))
        }
        XCTAssertEqual(StandInModels.loads.count, 0, "nothing is loaded for a request that cannot run")
    }

    func testTextEncoderNamesAMissingOutput() throws {
        let spec = textEncoderSpec(ids: .int32)
        installModel(at: folder.appendingPathComponent("TextEncoder.mlmodelc"), spec) { _, _ in
            try outputs(["pooled_outputs": ([1, 3], .float16, [0, 0, 0])])
        }
        let encoder = try CoreMLTextEncoder(model: model("TextEncoder.mlmodelc"), component: spec)
        XCTAssertThrowsError(try encoder.encode(tokens: [1, 2, 3, 4, 5])) {
            XCTAssertEqual($0 as? PipelineError,
                           .badModelOutput("TextEncoder.mlmodelc returned no multi-array output \"last_hidden_state\""))
        }
    }

    /// float16 cannot carry CLIP's ids (49406 would arrive as 49408), so such a contract is refused.
    func testTextEncoderRefusesFloat16Ids() {
        XCTAssertEqual(Double(Float16(49406)), 49408)
        XCTAssertEqual(thrownMessage { try CoreMLTextEncoder(model: model("TextEncoder.mlmodelc"),
                                                             component: textEncoderSpec(ids: .float16)) },
                       "components.TextEncoder.inputs.input_ids.dtype: float16 cannot hold token ids above 2048 exactly; "
                           + "expected int32 or float32")
    }

    func testTextEncoderContractMustNameInputIds() {
        var spec = textEncoderSpec(ids: .int32)
        spec.inputs[0].name = "tokens"
        XCTAssertEqual(thrownMessage { try CoreMLTextEncoder(model: model("TextEncoder.mlmodelc"), component: spec) },
                       "components.TextEncoder.inputs: missing \"input_ids\"")
    }

    // MARK: - UNet

    /// `(B, 4, 2, 2)` latents, `(B, 3, 1, 5)` text states, float16 like the exports.
    func unetSpec(batch: Int, student: Bool, file: String = "Unet.mlpackage") -> ComponentSpec {
        var inputs = [TensorSpec(name: "sample", shape: [batch, 4, 2, 2], dtype: .float16),
                      TensorSpec(name: "timestep", shape: [batch], dtype: .float16),
                      TensorSpec(name: "encoder_hidden_states", shape: [batch, 3, 1, 5], dtype: .float16)]
        if student { inputs.append(TensorSpec(name: "guidance_weight", shape: [batch], dtype: .float32)) }
        return ComponentSpec(file: file, inputs: inputs,
                             outputs: [TensorSpec(name: "noise_pred", shape: [batch, 4, 2, 2], dtype: .float16)])
    }

    func latents(rows: Int) -> Tensor {
        Tensor(shape: [rows, 4, 2, 2], scalars: (0..<(rows * 16)).map { Float($0) * 0.37 - 2 })
    }

    /// Text states `(B, 5, 3)`, as the text encoder gives them.
    func textStates(rows: Int) -> Tensor {
        Tensor(shape: [rows, 5, 3], scalars: (0..<(rows * 15)).map { Float($0) * 0.01 + 0.001 })
    }

    struct UNetCall {
        var sample: [Double], timestep: [Double], states: [Double], w: [Double]?
    }

    /// A fake UNet answering `sample * 2 + w` (student) or `sample * 2 - 1` (teacher) per row.
    func installUNet(_ spec: ComponentSpec, at name: String = "Unet.mlmodelc", calls: @escaping (UNetCall) -> Void) {
        installModel(at: folder.appendingPathComponent(name), spec) { input, _ in
            let sample = values(input, "sample")
            let w = spec.input("guidance_weight") == nil ? nil : values(input, "guidance_weight")
            calls(UNetCall(sample: sample, timestep: values(input, "timestep"),
                           states: values(input, "encoder_hidden_states"), w: w))
            let rowSize = sample.count / spec.inputs[0].shape[0]
            let noise = sample.enumerated().map { i, x in x * 2 + (w.map { $0[i / rowSize] } ?? -1) }
            return try outputs(["noise_pred": (spec.outputs[0].shape, .float16, noise)])
        }
    }

    func testStudentUNetRunsOneRowPerCallWithItsW() throws {
        let spec = unetSpec(batch: 1, student: true)
        var calls: [UNetCall] = []
        installUNet(spec) { calls.append($0) }
        let unet = try CoreMLUNet(stages: [model("Unet.mlmodelc")], component: spec)
        XCTAssertEqual(unet.modelBatch, 1)
        let z = latents(rows: 3), text = textStates(rows: 3)
        let weights: [Float] = [0, 2.5, 8]
        let noise = try unet.predict(sample: z, timestep: 999, hiddenStates: text, guidanceWeights: weights)

        XCTAssertEqual(calls.count, 3)
        let unetStates = text.textStatesForUnet()
        for (row, call) in calls.enumerated() {
            XCTAssertEqual(call.sample, z.rows(row..<(row + 1)).scalars.map { rounded(Double($0), .float16) }, "row \(row)")
            XCTAssertEqual(call.timestep, [999])
            XCTAssertEqual(call.w, [Double(weights[row])])
            XCTAssertEqual(call.states, unetStates.rows(row..<(row + 1)).scalars.map { rounded(Double($0), .float16) })
        }
        XCTAssertEqual(noise.shape, [3, 4, 2, 2])
        let expected = (0..<3).flatMap { row in
            z.rows(row..<(row + 1)).scalars.map { Float(rounded(rounded(Double($0), .float16) * 2 + Double(weights[row]), .float16)) }
        }
        XCTAssertEqual(noise.scalars, expected)
    }

    /// `(B, L, C)` text states reach the UNet as `(B, C, 1, L)`: element `[b, s, c]` at `[b, c, 0, s]`.
    func testTextStatesAreTransposedForTheUNet() throws {
        let spec = unetSpec(batch: 1, student: false)
        var received: [Double] = []
        installUNet(spec) { received = $0.states }
        let unet = try CoreMLUNet(stages: [model("Unet.mlmodelc")], component: spec)
        let text = Tensor(shape: [1, 5, 3], scalars: (0..<15).map { s in Float(s / 3 * 10 + s % 3) })  // 10 * s + c
        _ = try unet.predict(sample: latents(rows: 1), timestep: 1, hiddenStates: text, guidanceWeights: nil)
        XCTAssertEqual(received, (0..<3).flatMap { c in (0..<5).map { s in Double(10 * s + c) } })
    }

    func testTeacherUNetPadsAShortLastBatchAndDropsThePaddedRow() throws {
        let spec = unetSpec(batch: 2, student: false)
        var calls: [UNetCall] = []
        installUNet(spec) { calls.append($0) }
        let unet = try CoreMLUNet(stages: [model("Unet.mlmodelc")], component: spec)
        XCTAssertNil(unet.guidanceWeight)
        let z = latents(rows: 3)
        let noise = try unet.predict(sample: z, timestep: 500, hiddenStates: textStates(rows: 3), guidanceWeights: nil)

        XCTAssertEqual(calls.count, 2)
        let half = z.scalars.map { rounded(Double($0), .float16) }
        XCTAssertEqual(calls[0].sample, Array(half[0..<32]))
        XCTAssertEqual(calls[1].sample, Array(half[32..<48]) + Array(half[32..<48]), "last row repeated")
        XCTAssertEqual(calls.map(\.timestep), [[500, 500], [500, 500]])
        XCTAssertEqual(noise.shape, [3, 4, 2, 2])
        XCTAssertEqual(noise.scalars, half.map { Float(rounded($0 * 2 - 1, .float16)) })
    }

    /// A chunked UNet: each chunk gets the contract inputs plus the outputs of the chunks before it.
    func testChunkedUNetPassesEarlierOutputsOn() throws {
        let spec = unetSpec(batch: 1, student: true)
        let mid = TensorSpec(name: "mid", shape: [1, 4, 2, 2], dtype: .float16)
        let chunk1 = ComponentSpec(file: "UnetChunk1.mlpackage", inputs: Array(spec.inputs[0..<3]), outputs: [mid])
        let chunk2 = ComponentSpec(file: "UnetChunk2.mlpackage", inputs: [mid, spec.inputs[1], spec.inputs[3]],
                                   outputs: spec.outputs)
        var order: [String] = []
        installModel(at: folder.appendingPathComponent("UnetChunk1.mlmodelc"), chunk1) { input, _ in
            order.append("chunk1")
            let states = values(input, "encoder_hidden_states").reduce(0, +)
            return try outputs(["mid": ([1, 4, 2, 2], .float16, values(input, "sample").map { $0 + states })])
        }
        installModel(at: folder.appendingPathComponent("UnetChunk2.mlmodelc"), chunk2) { input, _ in
            order.append("chunk2")
            let w = values(input, "guidance_weight")[0], t = values(input, "timestep")[0]
            return try outputs(["noise_pred": ([1, 4, 2, 2], .float16, values(input, "mid").map { $0 * w + t })])
        }
        let unet = try CoreMLUNet(stages: [model("UnetChunk1.mlmodelc"), model("UnetChunk2.mlmodelc")], component: spec)
        let z = latents(rows: 1), text = textStates(rows: 1)
        let noise = try unet.predict(sample: z, timestep: 10, hiddenStates: text, guidanceWeights: [2])

        XCTAssertEqual(order, ["chunk1", "chunk2"])
        let states = text.textStatesForUnet().scalars.map { rounded(Double($0), .float16) }.reduce(0, +)
        let expected = z.scalars.map { x -> Float in
            let mid = rounded(rounded(Double(x), .float16) + states, .float16)
            return Float(rounded(mid * 2 + 10, .float16))
        }
        XCTAssertEqual(noise.scalars, expected)
    }

    func testChunkNeedingAnUnknownInputIsReported() throws {
        let spec = unetSpec(batch: 1, student: false)
        let skip = TensorSpec(name: "skip_7", shape: [1, 4, 2, 2], dtype: .float16)
        installModel(at: folder.appendingPathComponent("UnetChunk1.mlmodelc"),
                     ComponentSpec(file: "UnetChunk1.mlpackage", inputs: spec.inputs, outputs: [])) { _, _ in
            try outputs([:])
        }
        installModel(at: folder.appendingPathComponent("UnetChunk2.mlmodelc"),
                     ComponentSpec(file: "UnetChunk2.mlpackage", inputs: [skip], outputs: spec.outputs)) { _, _ in
            XCTFail("chunk 2 must not run")
            return try outputs([:])
        }
        let unet = try CoreMLUNet(stages: [model("UnetChunk1.mlmodelc"), model("UnetChunk2.mlmodelc")], component: spec)
        XCTAssertThrowsError(try unet.predict(sample: latents(rows: 1), timestep: 1, hiddenStates: textStates(rows: 1),
                                              guidanceWeights: nil)) {
            XCTAssertEqual($0 as? PipelineError, .badModelOutput(
                "UnetChunk2.mlmodelc needs an input \"skip_7\" that neither the contract nor an earlier chunk provides"))
        }
    }

    func testUNetRequestErrors() throws {
        let spec = unetSpec(batch: 1, student: true)
        installUNet(spec) { _ in }
        let unet = try CoreMLUNet(stages: [model("Unet.mlmodelc")], component: spec)
        let z = latents(rows: 2)
        XCTAssertEqual(thrownMessage { try unet.predict(sample: z, timestep: 1, hiddenStates: textStates(rows: 2),
                                                        guidanceWeights: nil) },
                       "this student UNet needs one guidance weight w per latent row")
        XCTAssertEqual(thrownMessage { try unet.predict(sample: z, timestep: 1, hiddenStates: textStates(rows: 2),
                                                        guidanceWeights: [1]) },
                       "this student UNet needs one guidance weight w per latent row")
        XCTAssertEqual(thrownMessage { try unet.predict(sample: z, timestep: 1, hiddenStates: textStates(rows: 1),
                                                        guidanceWeights: [1, 1]) },
                       "2 latent rows but 1 text-state rows")
        XCTAssertEqual(StandInModels.loads.count, 0, "nothing is loaded for a request that cannot run")
    }

    func testUNetOutputOfTheWrongSizeOrTypeIsReported() throws {
        let spec = unetSpec(batch: 1, student: false)
        var answer: MLFeatureProvider!
        installModel(at: folder.appendingPathComponent("Unet.mlmodelc"), spec) { _, _ in answer }
        let unet = try CoreMLUNet(stages: [model("Unet.mlmodelc")], component: spec)
        func run() -> String? {
            thrownMessage { try unet.predict(sample: latents(rows: 1), timestep: 1, hiddenStates: textStates(rows: 1),
                                             guidanceWeights: nil) }
        }
        answer = try outputs(["noise_pred": ([1, 4, 1, 2], .float16, [Double](repeating: 0, count: 8))])
        XCTAssertEqual(run(), "the UNet returned [1, 4, 1, 2], expected [1, 4, 2, 2]")
        answer = try MLDictionaryFeatureProvider(dictionary: ["noise_pred": MLFeatureValue(double: 1)])
        XCTAssertEqual(run(), "Unet.mlmodelc returned no multi-array output \"noise_pred\"")
    }

    /// A multi-size export (`convert --sizes`): the UNet answers at the latent size it is fed.
    func testMultiSizeUNetAnswersAtTheFedSize() throws {
        var spec = unetSpec(batch: 1, student: false)
        spec.inputs[0].shapes = [[1, 4, 2, 2], [1, 4, 2, 3]]
        installModel(at: folder.appendingPathComponent("Unet.mlmodelc"), spec) { input, _ in
            let sample = values(input, "sample")
            return try outputs(["noise_pred": ([1, 4, 2, sample.count / 8], .float16, sample.map { $0 * 2 })])
        }
        let unet = try CoreMLUNet(stages: [model("Unet.mlmodelc")], component: spec)
        let wide = Tensor(shape: [1, 4, 2, 3], scalars: (0..<24).map { Float($0) * 0.25 })
        let noise = try unet.predict(sample: wide, timestep: 1, hiddenStates: textStates(rows: 1), guidanceWeights: nil)
        XCTAssertEqual(noise.shape, [1, 4, 2, 3])
        XCTAssertEqual(noise.scalars, wide.scalars.map { $0 * 2 })
        let square = try unet.predict(sample: latents(rows: 1), timestep: 1, hiddenStates: textStates(rows: 1),
                                      guidanceWeights: nil)
        XCTAssertEqual(square.shape, [1, 4, 2, 2])
    }

    func testUNetContractMustNameItsInputs() {
        var spec = unetSpec(batch: 1, student: true)
        spec.inputs.remove(at: 1)
        XCTAssertEqual(thrownMessage { try CoreMLUNet(stages: [model("Unet.mlmodelc")], component: spec) },
                       "components.Unet.inputs: missing \"timestep\"")
        spec = unetSpec(batch: 1, student: true)
        spec.outputs = []
        XCTAssertEqual(thrownMessage { try CoreMLUNet(stages: [model("Unet.mlmodelc")], component: spec) },
                       "components.Unet.outputs: missing entry")
    }

    /// The output is read by the contract's name, whatever it is (`noise_pred` holds v for a v-prediction model).
    func testUNetReadsTheContractsOutputName() throws {
        var spec = unetSpec(batch: 1, student: false)
        spec.outputs[0].name = "v_pred"
        installModel(at: folder.appendingPathComponent("Unet.mlmodelc"), spec) { _, _ in
            try outputs(["v_pred": ([1, 4, 2, 2], .float16, [Double](repeating: 0.5, count: 16)),
                         "noise_pred": ([1, 4, 2, 2], .float16, [Double](repeating: 9, count: 16))])
        }
        let unet = try CoreMLUNet(stages: [model("Unet.mlmodelc")], component: spec)
        let noise = try unet.predict(sample: latents(rows: 1), timestep: 1, hiddenStates: textStates(rows: 1),
                                     guidanceWeights: nil)
        XCTAssertEqual(noise.scalars, [Float](repeating: 0.5, count: 16))
    }

    // MARK: - Decoder

    func testDecoderFeedsTheLatentsAndReadsThePixels() throws {
        let spec = ComponentSpec(file: "VAEDecoder.mlpackage",
                                 inputs: [TensorSpec(name: "z", shape: [1, 4, 2, 2], dtype: .float16)],
                                 outputs: [TensorSpec(name: "image", shape: [1, 3, 4, 4], dtype: .float16)])
        var received: [Double] = []
        installModel(at: folder.appendingPathComponent("VAEDecoder.mlmodelc"), spec) { input, _ in
            received = values(input, "z")
            let mean = received.reduce(0, +) / 16
            return try outputs(["image": ([1, 3, 4, 4], .float16, (0..<48).map { Double($0) / 48 - mean })])
        }
        let decoder = try CoreMLImageDecoder(model: model("VAEDecoder.mlmodelc"), component: spec)
        let z = latents(rows: 1)
        let pixels = try decoder.decode(latents: z)
        let half = z.scalars.map { rounded(Double($0), .float16) }
        XCTAssertEqual(received, half)
        XCTAssertEqual(pixels.shape, [1, 3, 4, 4])
        let mean = half.reduce(0, +) / 16
        XCTAssertEqual(pixels.scalars, (0..<48).map { Float(rounded(Double($0) / 48 - mean, .float16)) })

        installModel(at: folder.appendingPathComponent("VAEDecoder.mlmodelc"), spec) { _, _ in try outputs([:]) }
        let broken = try CoreMLImageDecoder(model: model("VAEDecoder.mlmodelc"), component: spec)
        XCTAssertEqual(thrownMessage { try broken.decode(latents: z) },
                       "VAEDecoder.mlmodelc returned no multi-array output \"image\"")
    }

    /// A tensor of the wrong shape reaches Core ML, which rejects it; the error comes through.
    func testCoreMLErrorsComeThrough() throws {
        let spec = ComponentSpec(file: "VAEDecoder.mlpackage",
                                 inputs: [TensorSpec(name: "z", shape: [1, 4, 2, 2], dtype: .float16)],
                                 outputs: [TensorSpec(name: "image", shape: [1, 3, 4, 4], dtype: .float16)])
        installModel(at: folder.appendingPathComponent("VAEDecoder.mlmodelc"), spec) { _, _ in
            XCTFail("Core ML must reject the input first")
            return try outputs([:])
        }
        let decoder = try CoreMLImageDecoder(model: model("VAEDecoder.mlmodelc"), component: spec)
        XCTAssertThrowsError(try decoder.decode(latents: latents(rows: 2))) {
            XCTAssertEqual(($0 as NSError).domain, MLModelErrorDomain)
        }
    }
}

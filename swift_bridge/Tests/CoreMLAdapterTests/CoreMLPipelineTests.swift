import XCTest
@_spi(StandIn) import CoreMLStandIn
import ANEDiffusion

/// `DiffusionPipeline(exportFolder:)` end to end on fake Core ML models: an export folder is
/// written from the Python pipeline's recorded runs (`Fixtures/pipeline.json`), fake models
/// replay the recorded text states, UNet outputs and pixels, check every input the Swift side
/// sends through the adapters against the recording, and the images must come out as Python's.
final class CoreMLPipelineTests: XCTestCase {
    struct Recording: Decodable {
        struct Settings: Decodable {
            let steps: Int?
            let w: Double?
            let sampler: String?
            let seed: UInt32
            let image_count: Int
            let negative_prompt: String
            let clamp: Bool
        }
        struct Encode: Decodable { let ids: [Int]; let hidden_shape: [Int]; let hidden: [Double] }
        struct Predict: Decodable {
            let t: Int
            let sample_shape: [Int]
            let sample: [Double]
            let w: [Double]?
            let hidden_row_sums: [Double]
            let output: [Double]
        }
        struct Decode: Decodable { let latents: [Double]; let image: [Double] }
        struct Image: Decodable { let width: Int; let height: Int; let rgb: [UInt8] }
        struct Case: Decodable {
            let name: String
            let prompts: [String]
            let settings: Settings
            let warnings: [String]
            let encode_calls: [Encode]
            let predict_calls: [Predict]
            let decode_calls: [Decode]
            let images: [Image]
            let metadata: [ImageMetadata]
        }
        let cases: [Case]
    }

    static let pipelineJSON = GoldenFixtures.folder.appendingPathComponent("pipeline.json")
    var folder: URL!

    override func setUpWithError() throws {
        StandInModels.reset()
        folder = try temporaryFolder(self)
    }

    func recordedCases() throws -> (cases: [Recording.Case], contracts: [[String: Any]]) {
        let data = try Data(contentsOf: Self.pipelineJSON)
        let cases = try JSONDecoder().decode(Recording.self, from: data).cases
        let raw = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        let contracts = (raw["cases"] as! [[String: Any]]).map { $0["contract"] as! [String: Any] }
        return (cases, contracts)
    }

    /// Write an export folder: the contract (every model input and output set to `dtype`, token
    /// ids to `idsType`, unless `nil`; chunk files named when `chunked`), the tokenizer, and an empty model
    /// directory per model file (`.mlmodelc` or `.mlpackage`).
    func writeExport(_ contract: [String: Any], dtype: String?, idsType: String?, modelExtension: String,
                     chunked: Bool = false) throws {
        var contract = contract
        var components = contract["components"] as! [String: [String: Any]]
        for (name, var component) in components {
            for key in ["inputs", "outputs"] {
                component[key] = (component[key] as! [[String: Any]]).map { entry -> [String: Any] in
                    var entry = entry
                    if let type = entry["name"] as? String == "input_ids" ? idsType : dtype { entry["dtype"] = type }
                    return entry
                }
            }
            if name == "Unet" && chunked { component["chunks"] = ["UnetChunk1.mlpackage", "UnetChunk2.mlpackage"] }
            components[name] = component
        }
        contract["components"] = components
        try JSONSerialization.data(withJSONObject: contract)
            .write(to: folder.appendingPathComponent(ExportContract.fileName))
        for file in ["vocab.json", "merges.txt"] {
            try FileManager.default.copyItem(at: GoldenFixtures.folder.appendingPathComponent("tokenizer/\(file)"),
                                             to: folder.appendingPathComponent(file))
        }
        let names = chunked ? ["TextEncoder", "UnetChunk1", "UnetChunk2", "VAEDecoder"] : ["TextEncoder", "Unet", "VAEDecoder"]
        for name in names {
            try FileManager.default.createDirectory(at: folder.appendingPathComponent("\(name).\(modelExtension)"),
                                                    withIntermediateDirectories: false)
        }
    }

    /// Fake models replaying one recorded case. Latents are compared to `relative` plus an
    /// `absolute` floor: 1e-5 and 1e-6 when every tensor is float32, as in the recording.
    final class Replay {
        let recording: Recording.Case
        let contract: ExportContract
        let relative: Double, absolute: Double
        var encodeIndex = 0, predictIndex = 0, predictRow = 0, decodeIndex = 0

        init(_ recording: Recording.Case, _ contract: ExportContract, relative: Double = 1e-5, absolute: Double = 1e-6) {
            (self.recording, self.contract, self.relative, self.absolute) = (recording, contract, relative, absolute)
        }

        func close(_ actual: [Double], _ expected: [Double], _ what: String) {
            XCTAssertEqual(actual.count, expected.count, what)
            let worst = zip(actual, expected).map { abs($0 - $1) - relative * abs($1) - absolute }.max() ?? 0
            XCTAssertLessThanOrEqual(worst, 0, "\(recording.name): \(what)")
        }

        func install(at folder: URL, modelExtension: String, chunked: Bool = false) {
            let c = contract.components
            installModel(at: folder.appendingPathComponent("TextEncoder.\(modelExtension)"), c.textEncoder) { input, _ in
                let call = self.recording.encode_calls[self.encodeIndex]
                self.encodeIndex += 1
                XCTAssertEqual(values(input, "input_ids"), call.ids.map(Double.init), "\(self.recording.name): token ids")
                let dtype = c.textEncoder.outputs[0].dtype
                return try outputs(["last_hidden_state": (call.hidden_shape, dtype, call.hidden),
                                    "pooled_outputs": ([1, call.hidden_shape[2]], dtype, [Double](repeating: 0, count: call.hidden_shape[2]))])
            }
            if chunked {
                // Chunk 1 passes the latents on under another name; chunk 2 is the replaying UNet.
                let mid = TensorSpec(name: "mid", shape: c.unet.inputs[0].shape, dtype: c.unet.inputs[0].dtype)
                let chunk1 = ComponentSpec(file: "UnetChunk1.mlpackage", inputs: [c.unet.inputs[0]], outputs: [mid])
                installModel(at: folder.appendingPathComponent("UnetChunk1.\(modelExtension)"), chunk1) { input, _ in
                    try outputs(["mid": (mid.shape, mid.dtype, values(input, "sample"))])
                }
                var chunk2 = c.unet
                chunk2.inputs[0] = mid
                installModel(at: folder.appendingPathComponent("UnetChunk2.\(modelExtension)"), chunk2) { input, _ in
                    try self.predict(input, sampleName: "mid")
                }
            } else {
                installModel(at: folder.appendingPathComponent("Unet.\(modelExtension)"), c.unet) { input, _ in
                    try self.predict(input, sampleName: "sample")
                }
            }
            installModel(at: folder.appendingPathComponent("VAEDecoder.\(modelExtension)"), c.vaeDecoder) { input, _ in
                let call = self.recording.decode_calls[self.decodeIndex]
                self.decodeIndex += 1
                self.close(values(input, c.vaeDecoder.inputs[0].name), call.latents, "decoder latents")
                let out = c.vaeDecoder.outputs[0]
                return try outputs([out.name: (out.shape, out.dtype, call.image)])
            }
        }

        /// One model call covers `modelBatch` rows of the recorded call (the adapter slices a
        /// pipeline call into model batches).
        func predict(_ input: MLFeatureProvider, sampleName: String) throws -> MLFeatureProvider {
            let unet = contract.components.unet
            let batch = unet.inputs[0].shape[0]
            let call = recording.predict_calls[predictIndex]
            let rowSize = call.sample.count / call.sample_shape[0]
            let rows = predictRow..<(predictRow + batch)
            let slice = (rows.lowerBound * rowSize)..<(rows.upperBound * rowSize)
            let what = "UNet call \(predictIndex) rows \(rows)"
            close(values(input, sampleName), Array(call.sample[slice]), "\(what): latents")
            XCTAssertEqual(values(input, "timestep"), [Double](repeating: Double(call.t), count: batch), what)
            if let w = call.w {
                XCTAssertEqual(values(input, ExportContract.guidanceInput), Array(w[rows]), what)
            }
            let states = values(input, "encoder_hidden_states")
            let stateRow = states.count / batch
            let sums = (0..<batch).map { states[($0 * stateRow)..<(($0 + 1) * stateRow)].reduce(0, +) }
            close(sums, Array(call.hidden_row_sums[rows]), "\(what): text-state row sums")
            predictRow += batch
            if predictRow >= call.sample_shape[0] { (predictIndex, predictRow) = (predictIndex + 1, 0) }
            let out = unet.outputs[0]
            return try outputs([out.name: (out.shape, out.dtype, Array(call.output[slice]))])
        }

        func assertAllCallsMade() {
            XCTAssertEqual(encodeIndex, recording.encode_calls.count, "\(recording.name): text encoder calls")
            XCTAssertEqual(predictIndex, recording.predict_calls.count, "\(recording.name): UNet calls")
            XCTAssertEqual(decodeIndex, recording.decode_calls.count, "\(recording.name): decoder calls")
        }
    }

    func settings(_ s: Recording.Settings) -> GenerationSettings {
        GenerationSettings(steps: s.steps, w: s.w, sampler: s.sampler.flatMap(Sampler.init(rawValue:)), seed: s.seed,
                           imageCount: s.image_count, negativePrompt: s.negative_prompt, clamp: s.clamp)
    }

    /// Every recorded case through float32 exports (as the `apple-pipeline` target makes them):
    /// the same ids, latents, text states and pixels as Python, bit for bit in the images.
    func testExportFolderPipelineMatchesPython() throws {
        let (cases, contracts) = try recordedCases()
        XCTAssertEqual(cases.count, 7)
        for (recording, contract) in zip(cases, contracts) {
            StandInModels.reset()
            folder = try temporaryFolder(self)
            // Token ids as int32 (our exports) in two cases and as float32 (Apple's pipeline) in the others.
            let idsType = recording.name.hasPrefix("student") ? "int32" : "float32"
            try writeExport(contract, dtype: "float32", idsType: idsType, modelExtension: "mlmodelc")
            let replay = Replay(recording, try ExportContract.load(folder: folder))
            replay.install(at: folder, modelExtension: "mlmodelc")

            let pipeline = try DiffusionPipeline(exportFolder: folder, computeUnits: .cpuAndGPU, decoderComputeUnits: .cpuOnly)
            let result = try pipeline.generate(prompts: recording.prompts, settings: settings(recording.settings))
            replay.assertAllCallsMade()
            XCTAssertEqual(result.images.count, recording.images.count, recording.name)
            for (image, expected) in zip(result.images, recording.images) {
                XCTAssertEqual([image.width, image.height], [expected.width, expected.height], recording.name)
                XCTAssertEqual(image.bytes, expected.rgb, "\(recording.name): pixels")
            }
            XCTAssertEqual(result.metadata, recording.metadata, recording.name)
            XCTAssertEqual(result.warnings, recording.warnings, recording.name)
            // Where each model was loaded: the decoder on its own compute units.
            XCTAssertEqual(StandInModels.loads.map { "\($0.url.lastPathComponent) \($0.computeUnits)" },
                           ["TextEncoder.mlmodelc cpuAndGPU", "Unet.mlmodelc cpuAndGPU", "VAEDecoder.mlmodelc cpuOnly"],
                           recording.name)
        }
    }

    /// The contract as exported (float16 tensors, float32 w, int32 ids): every input reaches the
    /// models in its declared type (the stand-in rejects another). The latents then differ from
    /// the float32 recording by float16 rounding: within one float16 ulp (2^-10 relative) of
    /// their magnitude, about 1 (measured here: at most 1.6e-3 for decoder latents near 4).
    func testFloat16ExportRunsWithinHalfPrecision() throws {
        let (cases, contracts) = try recordedCases()
        try writeExport(contracts[0], dtype: nil, idsType: nil, modelExtension: "mlmodelc")  // as exported
        let replay = Replay(cases[0], try ExportContract.load(folder: folder), relative: 1e-3, absolute: 1e-3)
        replay.install(at: folder, modelExtension: "mlmodelc")
        let result = try DiffusionPipeline(exportFolder: folder)
            .generate(prompts: cases[0].prompts, settings: settings(cases[0].settings))
        replay.assertAllCallsMade()
        for (image, expected) in zip(result.images, cases[0].images) {
            let worst = zip(image.bytes, expected.rgb).map { abs(Int($0) - Int($1)) }.max() ?? 0
            XCTAssertLessThanOrEqual(worst, 1, "pixels within one level of the float32 run")
        }
        XCTAssertEqual(StandInModels.loads.map(\.computeUnits), [.cpuAndNeuralEngine, .cpuAndNeuralEngine, .cpuAndNeuralEngine],
                       "the default compute units")
    }

    /// Only `.mlpackage` files and a chunked UNet, one model resident at a time: each model is
    /// compiled on first use, the chunks run in order, and the images are still Python's.
    func testPackagesAreCompiledAndChunksRunWithReducedMemory() throws {
        let (cases, contracts) = try recordedCases()
        try writeExport(contracts[0], dtype: "float32", idsType: "int32", modelExtension: "mlpackage", chunked: true)
        let replay = Replay(cases[0], try ExportContract.load(folder: folder))
        replay.install(at: folder, modelExtension: "mlpackage", chunked: true)
        let pipeline = try DiffusionPipeline(exportFolder: folder, reduceMemory: true)
        let unet = try XCTUnwrap(pipeline.unet as? CoreMLUNet)
        XCTAssertEqual(unet.stages.map(\.url.lastPathComponent), ["UnetChunk1.mlpackage", "UnetChunk2.mlpackage"])

        let result = try pipeline.generate(prompts: cases[0].prompts, settings: settings(cases[0].settings))
        replay.assertAllCallsMade()
        XCTAssertEqual(result.images.map(\.bytes), cases[0].images.map(\.rgb))
        XCTAssertEqual(StandInModels.compilations.map(\.lastPathComponent),
                       ["TextEncoder.mlpackage", "UnetChunk1.mlpackage", "UnetChunk2.mlpackage", "VAEDecoder.mlpackage"])
        XCTAssertEqual(StandInModels.loads.map(\.url.lastPathComponent),
                       ["TextEncoder.mlmodelc", "UnetChunk1.mlmodelc", "UnetChunk2.mlmodelc", "VAEDecoder.mlmodelc"])
    }

    func testExportFolderErrorsNameTheProblem() throws {
        let (_, contracts) = try recordedCases()
        XCTAssertEqual(thrownMessage { try DiffusionPipeline(exportFolder: folder) },
                       "\(folder.path) has no ane_diffusion_coreml.json: not an ane-diffusion Core ML export folder")
        try writeExport(contracts[0], dtype: "float16", idsType: "int32", modelExtension: "mlmodelc")
        try FileManager.default.removeItem(at: folder.appendingPathComponent("Unet.mlmodelc"))
        let missing = thrownMessage { try DiffusionPipeline(exportFolder: folder) }
        XCTAssertTrue(missing?.contains("Unet.mlmodelc / Unet.mlpackage") ?? false, missing ?? "no error")
        XCTAssertEqual(StandInModels.loads, [], "nothing is loaded before the folder checks out")
    }
}

import XCTest
@testable import ANEDiffusion

/// Whole `Pipeline.text_to_image` runs recorded in Python (scripted text encoder, UNet and
/// decoder), replayed through the Swift pipeline built from the same contract.
final class PipelineTests: XCTestCase {
    struct Golden: Decodable {
        struct Settings: Decodable {
            let steps: Int?
            let w: Double?
            let sampler: String?
            let seed: UInt32
            let image_count: Int
            let negative_prompt: String
            let clamp: Bool
        }
        struct Resolved: Decodable { let steps: Int; let w: Double; let sampler: String; let negative_prompt: String }
        struct Encode: Decodable { let ids: [Int]; let hidden_shape: [Int]; let hidden: [Double] }
        struct Decode: Decodable { let latents: [Double]; let latents_shape: [Int]; let image_shape: [Int]; let image: [Double] }
        struct Image: Decodable { let width: Int; let height: Int; let rgb: [UInt8] }
        struct Case: Decodable {
            let name: String
            let contract: ExportContract
            let prompts: [String]
            let settings: Settings
            let resolved: Resolved
            let warnings: [String]
            let encode_calls: [Encode]
            let predict_calls: [RecordedPredict]
            let decode_calls: [Decode]
            let images: [Image]
            let metadata: [ImageMetadata]
        }
        let cases: [Case]
    }

    final class ReplayTextEncoder: TextEncoding {
        let calls: [Golden.Encode]
        var index = 0
        init(_ calls: [Golden.Encode]) { self.calls = calls }
        func encode(tokens: [Int]) throws -> Tensor {
            let call = calls[index]
            index += 1
            XCTAssertEqual(tokens, call.ids, "text encoder call \(index - 1): token ids")
            return Tensor(shape: call.hidden_shape, doubles: call.hidden)
        }
    }

    final class ReplayDecoder: ImageDecoding {
        let calls: [Golden.Decode]
        var index = 0
        init(_ calls: [Golden.Decode]) { self.calls = calls }
        func decode(latents: Tensor) throws -> Tensor {
            let call = calls[index]
            index += 1
            XCTAssertEqual(latents.shape, call.latents_shape)
            assertClose(latents.scalars, call.latents, "decoder call \(index - 1): scaled latents")
            return Tensor(shape: call.image_shape, doubles: call.image)
        }
    }

    func testPipelineMatchesPython() throws {
        let golden = try Fixtures.load(Golden.self, "pipeline.json")
        XCTAssertEqual(golden.cases.count, 7)
        for c in golden.cases {
            let encoder = ReplayTextEncoder(c.encode_calls)
            let unet = ReplayUNet(c.predict_calls, label: c.name)
            let decoder = ReplayDecoder(c.decode_calls)
            let pipeline = DiffusionPipeline(configuration: try PipelineConfiguration(contract: c.contract),
                                             tokenizer: try Fixtures.tokenizer(), textEncoder: encoder, unet: unet,
                                             decoder: decoder)
            let s = c.settings
            let settings = GenerationSettings(steps: s.steps, w: s.w, sampler: s.sampler.flatMap(Sampler.init(rawValue:)),
                                              seed: s.seed, imageCount: s.image_count, negativePrompt: s.negative_prompt,
                                              clamp: s.clamp)
            let resolved = try pipeline.resolve(prompts: c.prompts, settings: settings)
            XCTAssertEqual([resolved.steps, Int(resolved.w * 1000)], [c.resolved.steps, Int(c.resolved.w * 1000)], c.name)
            XCTAssertEqual(resolved.sampler.rawValue, c.resolved.sampler, c.name)
            XCTAssertEqual(resolved.negativePrompt, c.resolved.negative_prompt, c.name)
            XCTAssertEqual(resolved.clamp, s.clamp, c.name)

            var reports: [PipelineProgress] = []
            let result = try pipeline.generate(prompts: c.prompts, settings: settings) { reports.append($0); return true }
            XCTAssertEqual(encoder.index, c.encode_calls.count, c.name)
            unet.assertAllCallsMade()
            XCTAssertEqual(decoder.index, c.decode_calls.count, c.name)
            XCTAssertEqual(result.images.count, c.images.count, c.name)
            for (image, expected) in zip(result.images, c.images) {
                XCTAssertEqual([image.width, image.height], [expected.width, expected.height], c.name)
                XCTAssertEqual(image.bytes, expected.rgb, "\(c.name): pixels")
            }
            XCTAssertEqual(result.metadata, c.metadata, c.name)
            XCTAssertEqual(result.warnings, c.warnings, c.name)
            XCTAssertEqual(result.latents.count, c.images.count)
            XCTAssertEqual(reports.count, c.prompts.count * resolved.timesteps.count, c.name)
            XCTAssertEqual(result.timings.unetCalls, c.predict_calls.count, c.name)
        }
    }

    // MARK: - Scripted models for behaviour checks

    final class Log {
        var events: [String] = []
    }

    struct ScriptedEncoder: TextEncoding {
        let log: Log
        func loadResources() throws { log.events.append("load text") }
        func unloadResources() { log.events.append("unload text") }
        func encode(tokens: [Int]) throws -> Tensor {
            log.events.append("encode")
            return Tensor(shape: [1, tokens.count, 2], scalars: tokens.flatMap { [Float($0) / 1000, 0.5] })
        }
    }

    struct ScriptedUNet: DenoisingModel {
        let log: Log
        func loadResources() throws { log.events.append("load unet") }
        func unloadResources() { log.events.append("unload unet") }
        func predict(sample: Tensor, timestep: Int, hiddenStates: Tensor, guidanceWeights: [Float]?) throws -> Tensor {
            log.events.append("predict")
            return sample.map { $0 * 0.5 }
        }
    }

    struct ScriptedDecoder: ImageDecoding {
        let log: Log
        func loadResources() throws { log.events.append("load decoder") }
        func unloadResources() { log.events.append("unload decoder") }
        func decode(latents: Tensor) throws -> Tensor {
            log.events.append("decode")
            return Tensor(shape: [1, 3, 8, 8], repeating: 0.25)
        }
    }

    func pipeline(card: ModelCard, log: Log = Log(), reduceMemory: Bool = false) throws -> DiffusionPipeline {
        DiffusionPipeline(configuration: PipelineConfiguration(card: card, latentShape: [4, 4, 4], imageHeight: 8, imageWidth: 8),
                          tokenizer: try Fixtures.tokenizer(), textEncoder: ScriptedEncoder(log: log),
                          unet: ScriptedUNet(log: log), decoder: ScriptedDecoder(log: log), reduceMemory: reduceMemory)
    }

    let student = ModelCard(kind: .progressive, predictionType: .vPrediction, steps: 2, wMin: 0, wMax: 8, defaultW: 3,
                            guidanceEmbeddingDim: 256, recommendedSampler: "ddim", recommendedSteps: 2)

    func testReducedMemoryLoadsOneModelAtATime() throws {
        let log = Log()
        let result = try pipeline(card: student, log: log, reduceMemory: true)
            .generate(prompt: "a red circle", settings: GenerationSettings(seed: 1, imageCount: 2))
        XCTAssertEqual(log.events, ["load text", "encode", "unload text", "load unet", "predict", "predict",
                                    "unload unet", "load decoder", "decode", "decode", "unload decoder"])
        XCTAssertEqual(result.images.count, 2)
        XCTAssertEqual(result.images[0].bytes.first, UInt8((1.25 * 127.5 + 0.5).rounded(.towardZero)))
        XCTAssertEqual(result.metadata.map(\.seed), [1, 2])
        XCTAssertEqual(result.images[0].pngData().prefix(8), Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]))
    }

    func testModelsStayLoadedByDefault() throws {
        let log = Log()
        let p = try pipeline(card: student, log: log)
        try p.loadResources()
        _ = try p.generate(prompt: "a dog")
        XCTAssertEqual(log.events, ["load text", "load unet", "load decoder", "encode", "predict", "predict", "decode"])
    }

    func testGuidedTeacherEncodesTheNegativePromptFirst() throws {
        let log = Log()
        let teacher = ModelCard(kind: .teacher, predictionType: .epsilon, defaultW: 2, recommendedSampler: "dpmpp-2m")
        let result = try pipeline(card: teacher, log: log).generate(prompt: "a dog", settings: GenerationSettings(steps: 1))
        XCTAssertEqual(log.events, ["encode", "encode", "predict", "decode"])
        XCTAssertEqual(result.warnings, ["the card recommends sampler dpmpp-2m, which only the Python package has; using ddim"])
    }

    func testInvalidRequests() throws {
        let p = try pipeline(card: student)
        func message(_ settings: GenerationSettings, prompts: [String] = ["a dog"]) -> String? {
            do {
                _ = try p.generate(prompts: prompts, settings: settings)
                return nil
            } catch {
                return "\(error)"
            }
        }
        XCTAssertEqual(message(GenerationSettings(w: 9)), "w=9.0 is outside this student's range [0.0, 8.0] (guidance_scale = 1 + w)")
        XCTAssertEqual(message(GenerationSettings(steps: 0)), "steps must be >= 1, got 0")
        XCTAssertEqual(message(GenerationSettings(imageCount: 0)), "imageCount must be >= 1, got 0")
        XCTAssertEqual(message(GenerationSettings(), prompts: []), "no prompt given")
        let long = Array(repeating: "a red circle", count: 30).joined(separator: " ")
        XCTAssertEqual(message(GenerationSettings(), prompts: [long]),
                       "prompt is 92 tokens, the text encoder takes at most 77 (including start and end tokens)")
        XCTAssertNil(message(GenerationSettings(truncatePrompts: true), prompts: [long]))
        XCTAssertEqual(message(GenerationSettings(seed: .max, imageCount: 2)), "seed 4294967295 + 1 images passes 2**32 - 1")
    }

    func testCancellation() throws {
        let p = try pipeline(card: student)
        var steps = 0
        XCTAssertThrowsError(try p.generate(prompt: "a dog") { _ in steps += 1; return false }) {
            XCTAssertEqual($0 as? PipelineError, .cancelled)
        }
        XCTAssertEqual(steps, 1)
    }

    func testBadModelOutputIsReported() throws {
        struct WrongUNet: DenoisingModel {
            func predict(sample: Tensor, timestep: Int, hiddenStates: Tensor, guidanceWeights: [Float]?) throws -> Tensor {
                Tensor(shape: [1, 4, 2, 2], repeating: 0)
            }
        }
        let p = DiffusionPipeline(configuration: PipelineConfiguration(card: student, latentShape: [4, 4, 4], imageHeight: 8,
                                                                       imageWidth: 8),
                                  tokenizer: try Fixtures.tokenizer(), textEncoder: ScriptedEncoder(log: Log()),
                                  unet: WrongUNet(), decoder: ScriptedDecoder(log: Log()))
        XCTAssertThrowsError(try p.generate(prompt: "a dog")) {
            XCTAssertEqual($0 as? PipelineError, .badModelOutput("the UNet returned shape [1, 4, 2, 2] for latents of shape [1, 4, 4, 4]"))
        }
    }
}

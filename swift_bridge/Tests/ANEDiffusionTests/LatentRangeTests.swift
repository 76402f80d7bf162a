import Foundation
import XCTest
@testable import ANEDiffusion

/// The card's `latent_range` and `GenerationSettings.clamp` (static thresholding of `x_hat`);
/// the pipeline replay of `pipeline.json` checks the clamped runs against Python.
final class LatentRangeTests: XCTestCase {
    /// The example contract with `model.latent_range` set to `range` (`NSNull()`: null; `nil`: no key).
    func contract(latentRange range: Any?) throws -> Data {
        let data = try Data(contentsOf: Fixtures.url("contract_example.json"))
        var json = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        var model = try XCTUnwrap(json["model"] as? [String: Any])
        model["latent_range"] = range
        json["model"] = model
        return try JSONSerialization.data(withJSONObject: json)
    }

    /// The ContractError the example contract with `range` gives, as text.
    func failure(_ range: [String: Any], file: StaticString = #filePath, line: UInt = #line) throws -> String {
        do {
            _ = try ExportContract.decode(contract(latentRange: range))
            XCTFail("contract was accepted", file: file, line: line)
        } catch let error as ContractError {
            return error.description
        }
        return ""
    }

    func testCardsWithoutARangeStillDecode() throws {
        XCTAssertNil(try ExportContract.decode(contract(latentRange: nil)).model.latentRange, "no key (older contracts)")
        XCTAssertNil(try ExportContract.decode(contract(latentRange: NSNull())).model.latentRange, "null")
    }

    func testRangeDecodes() throws {
        let card = try ExportContract.decode(contract(latentRange: ["low": [-1, -2, -3, -4], "high": [1, 2, 3, 4.5],
                                                                    "percentiles": [0.05, 99.95], "examples": 16] as [String: Any])).model
        XCTAssertEqual(card.latentRange, try LatentRange(low: [-1, -2, -3, -4], high: [1, 2, 3, 4.5], examples: 16))
        XCTAssertEqual(card.latentRange?.channels, 4)
        let defaults = try ExportContract.decode(contract(latentRange: ["low": [0], "high": [1]])).model.latentRange
        XCTAssertEqual(defaults?.percentiles, [0.05, 99.95])
        XCTAssertEqual(defaults?.examples, 0)
    }

    func testBadRangesAreRefused() throws {
        XCTAssertEqual(try failure(["low": [0, 1], "high": [1]]),
                       "model.latent_range: needs one low and one high bound a channel, got 2 and 1")
        XCTAssertEqual(try failure(["low": [Double](), "high": [Double]()]),
                       "model.latent_range: needs one low and one high bound a channel, got 0 and 0")
        XCTAssertEqual(try failure(["low": [0, 1], "high": [1, 1]]),
                       "model.latent_range: bounds must be finite with low < high, got [1.0, 1.0] for channel 1")
        XCTAssertEqual(try failure(["low": [2], "high": [1]]),
                       "model.latent_range: bounds must be finite with low < high, got [2.0, 1.0] for channel 0")
        XCTAssertEqual(try failure(["low": [0], "high": [1], "percentiles": [50]]),
                       "model.latent_range: percentiles must be two numbers, got [50.0]")
        XCTAssertEqual(try failure(["low": [0], "high": [1], "scale": 2, "extra": true]),
                       "model.latent_range: unknown latent_range fields: extra, scale")
        // JSON has no NaN or infinity; a range made in code is checked the same way.
        XCTAssertThrowsError(try LatentRange(low: [.nan], high: [1])) {
            XCTAssertEqual("\($0)", "model.latent_range: bounds must be finite with low < high, got [nan, 1.0] for channel 0")
        }
        XCTAssertThrowsError(try LatentRange(low: [0], high: [.infinity]))
        var card = ModelCard(kind: .teacher, predictionType: .epsilon)
        XCTAssertNoThrow(try card.validate())
        card.latentRange = try LatentRange(low: [-1], high: [1])
        XCTAssertNoThrow(try card.validate())
    }

    /// Values inside `[low[c], high[c]]` are untouched, others become the float32 bound of their
    /// channel (axis 1), in every batch row.
    func testClampClipsEachChannel() throws {
        let range = try LatentRange(low: [-1, 0.1], high: [1, 0.2])
        let x = Tensor(shape: [2, 2, 1, 3], scalars: [-3, 0.5, 2,   0.15, 0, 7,
                                                      -0.25, 1, 1.5,  0.3, 0.2, -9])
        let clamped = try range.clamp(x)
        XCTAssertEqual(clamped.shape, x.shape)
        XCTAssertEqual(clamped.scalars, [-1, 0.5, 1,  0.15, Float(0.1), Float(0.2),
                                         -0.25, 1, 1,  Float(0.2), Float(0.2), Float(0.1)])
        XCTAssertTrue(try range.clamp(Tensor(shape: [1, 2, 1, 1], scalars: [.nan, 0])).scalars[0].isNaN, "NaN stays NaN")
        XCTAssertThrowsError(try range.clamp(Tensor(shape: [1, 3, 1, 1], repeating: 0))) {
            XCTAssertEqual("\($0)", "a 2-channel latent range cannot clamp shape [1, 3, 1, 1]")
        }
    }

    /// `GuidedDenoiser` clips the estimate after the prediction-type conversion.
    func testDenoiserClampsTheEstimate() throws {
        struct Constant: DenoisingModel {
            func predict(sample: Tensor, timestep: Int, hiddenStates: Tensor, guidanceWeights: [Float]?) throws -> Tensor {
                Tensor(shape: sample.shape, scalars: [-5, 0.5, 5, 0.25])
            }
        }
        let range = try LatentRange(low: [-1, 0], high: [1, 0.3])
        func denoise(_ clampRange: LatentRange?) throws -> [Float] {
            let denoiser = GuidedDenoiser(model: Constant(), predictionType: .sample, isStudent: false,
                                          schedule: .scaledLinear(), cond: Tensor(shape: [1, 1, 1], repeating: 0),
                                          uncond: nil, w: 0, clampRange: clampRange)
            return try denoiser(Tensor(shape: [1, 2, 1, 2], repeating: 0), 999).scalars
        }
        XCTAssertEqual(try denoise(nil), [-5, 0.5, 5, 0.25])
        XCTAssertEqual(try denoise(range), [-1, 0.5, Float(0.3), 0.25])
    }

    func pipeline(card: ModelCard) throws -> DiffusionPipeline {
        DiffusionPipeline(configuration: PipelineConfiguration(card: card, latentShape: [4, 4, 4], imageHeight: 8, imageWidth: 8),
                          tokenizer: try Fixtures.tokenizer(), textEncoder: PipelineTests.ScriptedEncoder(log: .init()),
                          unet: PipelineTests.ScriptedUNet(log: .init()), decoder: PipelineTests.ScriptedDecoder(log: .init()))
    }

    func testClampNeedsARangeThatFitsTheLatents() throws {
        var card = ModelCard(kind: .teacher, predictionType: .epsilon, defaultW: 2)
        XCTAssertThrowsError(try pipeline(card: card).resolve(prompts: ["a dog"], settings: GenerationSettings(clamp: true))) {
            XCTAssertEqual($0 as? PipelineError, .invalidRequest(
                "clamp needs the data latents' range, and this model's card records none "
                    + "(students distilled by ane-diffusion from in-memory data carry one)"))
        }
        XCTAssertFalse(try pipeline(card: card).resolve(prompts: ["a dog"], settings: GenerationSettings()).clamp,
                       "no clamp asked: no range needed")
        card.latentRange = try LatentRange(low: [-1, -1, -1], high: [1, 1, 1])
        XCTAssertThrowsError(try pipeline(card: card).resolve(prompts: ["a dog"], settings: GenerationSettings(clamp: true))) {
            XCTAssertEqual("\($0)", "the card's latent_range has 3 channels; the latents have 4")
        }
        card.latentRange = try LatentRange(low: [-1, -1, -1, -1], high: [1, 1, 1, 1])
        let result = try pipeline(card: card).generate(prompt: "a dog", settings: GenerationSettings(steps: 1, clamp: true))
        XCTAssertEqual(result.metadata.map(\.clamp), [true])
    }

    func testMetadataWithoutClampDecodes() throws {
        let json = #"{"prompt": "a dog", "negative_prompt": "", "seed": 1, "steps": 4, "w": 3.0, "guidance_scale": 4.0, "#
            + #""sampler": "ddim", "height": 8, "width": 8, "model_kind": "progressive", "generator": "ane-diffusion"}"#
        let metadata = try JSONDecoder().decode(ImageMetadata.self, from: Data(json.utf8))
        XCTAssertFalse(metadata.clamp)
        let again = try JSONDecoder().decode(ImageMetadata.self, from: JSONEncoder().encode(metadata))
        XCTAssertEqual(again, metadata)
    }
}

import Foundation
import XCTest
@testable import ANEDiffusion

/// Multi-size exports (`convert --sizes`): the contract lists the sizes, the pipeline picks by size.
final class ImageSizeTests: XCTestCase {
    func example() throws -> [String: Any] {
        let data = try Data(contentsOf: Fixtures.url("contract_example.json"))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    /// The 512x512 example made a 512x512 + 512x768 export, as the converter writes it.
    func multiSize() throws -> [String: Any] {
        var json = try example()
        json["sizes"] = [["height": 512, "width": 512, "latent_height": 64, "latent_width": 64],
                         ["height": 512, "width": 768, "latent_height": 64, "latent_width": 96]]
        var components = json["components"] as! [String: Any]
        var unet = components["Unet"] as! [String: Any]
        var inputs = unet["inputs"] as! [[String: Any]]
        let index = inputs.firstIndex { $0["name"] as? String == "sample" }!
        inputs[index]["shapes"] = [[1, 4, 64, 64], [1, 4, 64, 96]]
        unet["inputs"] = inputs
        components["Unet"] = unet
        json["components"] = components
        return json
    }

    func decode(_ json: [String: Any]) throws -> ExportContract {
        try ExportContract.decode(JSONSerialization.data(withJSONObject: json))
    }

    func testContractListsEverySize() throws {
        let contract = try decode(try multiSize())
        XCTAssertEqual(contract.imageSizes.map { [$0.height, $0.width, $0.latentWidth] }, [[512, 512, 64], [512, 768, 96]])
        XCTAssertEqual(contract.components.unet.input("sample")?.shapes, [[1, 4, 64, 64], [1, 4, 64, 96]])
        let single = try decode(try example())
        XCTAssertNil(single.sizes)
        XCTAssertEqual(single.imageSizes, [ImageSize(height: 512, width: 512, latentHeight: 64, latentWidth: 64)])
        let configuration = try PipelineConfiguration(contract: contract)
        XCTAssertEqual(try configuration.latentShape(height: 512, width: 768).shape, [4, 64, 96])
        XCTAssertEqual(try configuration.latentShape(height: nil, width: nil).shape, [4, 64, 64])
        XCTAssertThrowsError(try configuration.latentShape(height: 768, width: 768)) {
            XCTAssertEqual("\($0)", "this export takes 512x512, 512x768 images (height x width), not 768x768; "
                               + "convert again with --sizes")
        }
    }

    func testInconsistentSizesAndForeignTargetsAreRefused() throws {
        func message(_ json: [String: Any]) -> String {
            do { _ = try decode(json); return "accepted" } catch { return "\(error)" }
        }
        var json = try multiSize()
        json["sizes"] = [["height": 512, "width": 768, "latent_height": 64, "latent_width": 96]]
        XCTAssertTrue(message(json).contains("the first size must be image (512x512)"), message(json))
        json = try multiSize()
        json["sizes"] = [["height": 512, "width": 512, "latent_height": 64, "latent_width": 64],
                         ["height": 512, "width": 768, "latent_height": 64, "latent_width": 90]]
        XCTAssertTrue(message(json).contains("sizes[1]"), message(json))
        json = try example()
        json["target"] = "apple-pipeline"
        XCTAssertTrue(message(json).contains("Apple's StableDiffusionPipeline"), message(json))
    }

    struct ShapeUNet: DenoisingModel {
        let seen: Shapes
        func loadResources() throws {}
        func unloadResources() {}
        func predict(sample: Tensor, timestep: Int, hiddenStates: Tensor, guidanceWeights: [Float]?) throws -> Tensor {
            seen.shapes.append(sample.shape)
            return sample.map { $0 * 0.5 }
        }
    }

    final class Shapes { var shapes: [[Int]] = [] }

    struct Encoder: TextEncoding {
        func loadResources() throws {}
        func unloadResources() {}
        func encode(tokens: [Int]) throws -> Tensor { Tensor(shape: [1, tokens.count, 2], repeating: 0.1) }
    }

    struct UpsamplingDecoder: ImageDecoding {
        func loadResources() throws {}
        func unloadResources() {}
        func decode(latents: Tensor) throws -> Tensor {
            Tensor(shape: [1, 3, latents.shape[2] * 2, latents.shape[3] * 2], repeating: 0)
        }
    }

    func testPipelineGeneratesEachListedSize() throws {
        let card = ModelCard(kind: .progressive, predictionType: .vPrediction, steps: 2, wMin: 0, wMax: 8, defaultW: 3,
                             guidanceEmbeddingDim: 256, recommendedSampler: "ddim", recommendedSteps: 2)
        var configuration = PipelineConfiguration(card: card, latentShape: [4, 4, 4], imageHeight: 8, imageWidth: 8)
        configuration.imageSizes = [ImageSize(height: 8, width: 8, latentHeight: 4, latentWidth: 4),
                                    ImageSize(height: 8, width: 12, latentHeight: 4, latentWidth: 6)]
        let seen = Shapes()
        let pipeline = DiffusionPipeline(configuration: configuration, tokenizer: try Fixtures.tokenizer(),
                                         textEncoder: Encoder(), unet: ShapeUNet(seen: seen), decoder: UpsamplingDecoder())
        let wide = try pipeline.generate(prompt: "a dog", settings: GenerationSettings(height: 8, width: 12))
        XCTAssertEqual(seen.shapes, [[1, 4, 4, 6], [1, 4, 4, 6]])
        XCTAssertEqual(wide.latents[0].shape, [1, 4, 4, 6])
        XCTAssertEqual([wide.metadata[0].height, wide.metadata[0].width], [8, 12])
        let square = try pipeline.generate(prompt: "a dog")
        XCTAssertEqual(square.latents[0].shape, [1, 4, 4, 4])
        XCTAssertThrowsError(try pipeline.generate(prompt: "a dog", settings: GenerationSettings(height: 12, width: 12)))
    }
}

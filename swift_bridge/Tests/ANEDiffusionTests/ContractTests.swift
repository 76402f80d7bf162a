import Foundation
import XCTest
@testable import ANEDiffusion

final class ContractTests: XCTestCase {
    /// The example contract (a 512x512 v-prediction progressive student, chunked UNet) as JSON.
    func example() throws -> [String: Any] {
        let data = try Data(contentsOf: Fixtures.url("contract_example.json"))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func decode(_ json: [String: Any]) throws -> ExportContract {
        try ExportContract.decode(JSONSerialization.data(withJSONObject: json))
    }

    /// The ContractError `json` gives, as text.
    func failure(_ json: [String: Any], file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            _ = try decode(json)
            XCTFail("contract was accepted", file: file, line: line)
            return ""
        } catch let error as ContractError {
            return error.description
        } catch {
            XCTFail("not a ContractError: \(error)", file: file, line: line)
            return ""
        }
    }

    func testExampleContract() throws {
        let contract = try decode(try example())
        XCTAssertEqual(contract.model.kind, .progressive)
        XCTAssertEqual(contract.model.predictionType, .vPrediction)
        XCTAssertEqual(contract.model.steps, 4)
        XCTAssertEqual(contract.model.guidanceEmbeddingDim, 256)
        XCTAssertEqual(contract.model.guidanceEmbeddingScale, 1000)  // ModelCard's default, written out by Python
        XCTAssertEqual(contract.latentShape, [4, 64, 64])
        XCTAssertEqual(contract.vaeScaleFactor, 8)
        XCTAssertEqual(contract.components.unet.chunks, ["UnetChunk1.mlpackage", "UnetChunk2.mlpackage"])
        XCTAssertEqual(contract.components.unet.input("guidance_weight")?.dtype, .float32)
        XCTAssertEqual(contract.components.textEncoder.input("input_ids")?.dtype, .int32)
        XCTAssertEqual(try NoiseSchedule(config: contract.schedule), NoiseSchedule.scaledLinear())
        let configuration = try PipelineConfiguration(contract: contract)
        XCTAssertEqual(configuration.scalingFactor, 0.18215)
        XCTAssertEqual(configuration.maxTokenLength, 77)
    }

    func testUnknownFieldsAreIgnored() throws {
        var json = try example()
        json["produced_by"] = "a future exporter"
        var model = json["model"] as! [String: Any]
        model["future_field"] = [1, 2, 3]
        json["model"] = model
        XCTAssertNoThrow(try decode(json))
    }

    func testMissingFieldsAreNamed() throws {
        var json = try example()
        var model = json["model"] as! [String: Any]
        model.removeValue(forKey: "prediction_type")
        json["model"] = model
        XCTAssertEqual(failure(json), "model.prediction_type: missing")

        json = try example()
        json.removeValue(forKey: "latent")
        XCTAssertEqual(failure(json), "latent: missing")

        json = try example()
        var components = json["components"] as! [String: Any]
        var unet = components["Unet"] as! [String: Any]
        var inputs = unet["inputs"] as! [[String: Any]]
        inputs[1].removeValue(forKey: "shape")
        unet["inputs"] = inputs
        components["Unet"] = unet
        json["components"] = components
        XCTAssertEqual(failure(json), "components.Unet.inputs[1].shape: missing")
    }

    /// `json` with the Unet's inputs transformed.
    func withUnetInputs(_ json: [String: Any], _ edit: (inout [[String: Any]]) -> Void) -> [String: Any] {
        var json = json
        var components = json["components"] as! [String: Any]
        var unet = components["Unet"] as! [String: Any]
        var inputs = unet["inputs"] as! [[String: Any]]
        edit(&inputs)
        unet["inputs"] = inputs
        components["Unet"] = unet
        json["components"] = components
        return json
    }

    func testStudentNeedsAGuidanceInput() throws {
        let json = withUnetInputs(try example()) { $0.removeAll { $0["name"] as? String == "guidance_weight" } }
        XCTAssertEqual(failure(json), "components.Unet.inputs: a progressive student needs a guidance_weight input "
                           + "(it takes w); found sample, timestep, encoder_hidden_states")
    }

    func testTeacherTakesNoGuidanceInput() throws {
        var json = try example()
        var model = json["model"] as! [String: Any]
        model["kind"] = "teacher"
        json["model"] = model
        XCTAssertTrue(failure(json).hasPrefix("components.Unet.inputs: a teacher takes no guidance_weight input"))
    }

    func testMismatchedShapesAreNamed() throws {
        let json = withUnetInputs(try example()) { inputs in
            inputs[2]["shape"] = [1, 1024, 1, 77]  // SD2-size text states for an SD1 text encoder
        }
        XCTAssertEqual(failure(json), "components.Unet.inputs.encoder_hidden_states.shape: expected [1, 768, 1, 77], "
                           + "got [1, 1024, 1, 77]")
        let sample = withUnetInputs(try example()) { $0[0]["shape"] = [1, 4, 96, 96] }
        XCTAssertEqual(failure(sample), "components.Unet.inputs.sample.shape: expected [1, 4, 64, 64], got [1, 4, 96, 96]")
    }

    func testBadValues() throws {
        var json = try example()
        json["format_version"] = 2
        XCTAssertEqual(failure(json), "format_version: unsupported version 2 (this package reads 1)")

        json = try example()
        var model = json["model"] as! [String: Any]
        model["kind"] = "distilled"
        json["model"] = model
        XCTAssertEqual(failure(json), "model.kind: \"distilled\" is not one of teacher, guidance-distilled, progressive, lcm")

        model["kind"] = "lcm"
        model["guidance_embedding_dim"] = NSNull()
        json["model"] = model
        XCTAssertEqual(failure(json), "model.guidance_embedding_dim: a lcm card needs guidance_embedding_dim")

        json = try example()
        model = json["model"] as! [String: Any]
        model["guidance_embedding_scale"] = 0
        json["model"] = model
        XCTAssertEqual(failure(json), "model.guidance_embedding_scale: card guidance_embedding_scale must be > 0, got 0.0")

        let dtype = withUnetInputs(try example()) { $0[0]["dtype"] = "int64" }
        XCTAssertTrue(failure(dtype).hasPrefix("components.Unet.inputs[0].dtype:"), failure(dtype))
    }

    func testExportFolderResolvesModelFiles() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ane-contract-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }

        XCTAssertThrowsError(try ExportFolder(url: folder)) {
            XCTAssertTrue("\($0)".contains("has no ane_diffusion_coreml.json"), "\($0)")
        }
        try FileManager.default.copyItem(at: Fixtures.url("contract_example.json"),
                                         to: folder.appendingPathComponent(ExportContract.fileName))
        for name in ["vocab.json", "merges.txt"] {
            try FileManager.default.copyItem(at: Fixtures.url("tokenizer/\(name)"), to: folder.appendingPathComponent(name))
        }
        let export = try ExportFolder(url: folder)
        XCTAssertEqual(try export.tokenizer().encode("a dog"), try Fixtures.tokenizer().encode("a dog"))
        let unet = export.contract.components.unet
        XCTAssertThrowsError(try export.modelURLs(for: unet))

        func make(_ name: String) throws {
            try FileManager.default.createDirectory(at: folder.appendingPathComponent(name), withIntermediateDirectories: true)
        }
        try make("Unet.mlpackage")
        XCTAssertEqual(try export.modelURLs(for: unet).map(\.lastPathComponent), ["Unet.mlpackage"])
        try make("Unet.mlmodelc")
        XCTAssertEqual(try export.modelURLs(for: unet).map(\.lastPathComponent), ["Unet.mlmodelc"])
        try make("UnetChunk1.mlmodelc")
        XCTAssertEqual(try export.modelURLs(for: unet).map(\.lastPathComponent), ["Unet.mlmodelc"], "chunks need every part")
        try make("UnetChunk2.mlpackage")
        XCTAssertEqual(try export.modelURLs(for: unet).map(\.lastPathComponent), ["UnetChunk1.mlmodelc", "UnetChunk2.mlpackage"])
    }

    /// The contract of an export with a tiny decoder: the `decoders` / `encoders` maps say which
    /// component is which, and an export from before tiny decoders still parses (full decoder only).
    func testDecoderChoiceThroughTheContract() throws {
        let data = try Data(contentsOf: Fixtures.url("contract_tiny_decoder.json"))
        let tiny = try ExportContract.decode(data)
        XCTAssertEqual(try tiny.decoderName(), "VAEDecoder")
        XCTAssertEqual(try tiny.decoder(.tiny).variant, "tiny")
        XCTAssertEqual(try tiny.decoder(.full).file, "VAEDecoderFull.mlpackage")
        XCTAssertEqual(try tiny.decoder(.full).variant, "full")
        XCTAssertEqual(try tiny.encoderName(.tiny), "VAEEncoder")
        XCTAssertThrowsError(try tiny.encoderName(.full)) {
            XCTAssertTrue("\($0)".contains("no full encoder"), "\($0)")
        }

        let old = try decode(try example())
        XCTAssertNil(old.decoders)
        XCTAssertEqual(try old.decoder().file, "VAEDecoder.mlpackage")
        XCTAssertEqual(try old.decoderName(.full), "VAEDecoder")
        XCTAssertThrowsError(try old.decoder(.tiny)) {
            XCTAssertTrue("\($0)".contains("no tiny decoder"), "\($0)")
        }

        var json = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        json["decoders"] = ["tiny": "VAEDecoder", "full": "VAEDecoderLarge"]
        XCTAssertEqual(failure(json), "decoders.full: names VAEDecoderLarge, which components does not list")
        json["decoders"] = ["small": "VAEDecoder"]
        XCTAssertEqual(failure(json), "decoders.small: unknown variant (expected tiny or full)")
    }
}

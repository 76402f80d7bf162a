import Foundation

/// A Core ML export folder: its validated contract and where each model file is.
public struct ExportFolder: Sendable {
    public let url: URL
    public let contract: ExportContract

    /// Read and validate the folder's `ane_diffusion_coreml.json`.
    public init(url: URL) throws {
        self.url = url
        self.contract = try ExportContract.load(folder: url)
    }

    public var vocabularyURL: URL { url.appendingPathComponent(contract.tokenizer.vocab) }
    public var mergesURL: URL { url.appendingPathComponent(contract.tokenizer.merges) }

    /// The folder's tokenizer (`vocab.json` + `merges.txt`).
    public func tokenizer() throws -> CLIPTokenizer {
        try CLIPTokenizer(vocabularyURL: vocabularyURL, mergesURL: mergesURL, padToken: contract.tokenizer.padToken)
    }

    /// The model files of a component, in execution order: its chunks when every chunk is present,
    /// else the single model. For each file a compiled `Name.mlmodelc` next to it is preferred to
    /// the `Name.mlpackage` the contract names (which must then be compiled before loading).
    public func modelURLs(for spec: ComponentSpec) throws -> [URL] {
        if let chunks = spec.chunks, !chunks.isEmpty {
            let found = chunks.map(existingModel)
            if found.allSatisfy({ $0 != nil }) { return found.map { $0! } }
        }
        if let single = existingModel(spec.file) { return [single] }
        let names = [spec.file] + (spec.chunks ?? [])
        throw ContractError(field: "", message: "\(url.path) holds none of "
                                + names.map { "\(compiledName($0)) / \($0)" }.joined(separator: ", "))
    }

    private func existingModel(_ file: String) -> URL? {
        for name in [compiledName(file), file] {
            let candidate = url.appendingPathComponent(name)
            if FileManager.default.fileExists(atPath: candidate.path) { return candidate }
        }
        return nil
    }

    private func compiledName(_ file: String) -> String {
        (file as NSString).deletingPathExtension + ".mlmodelc"
    }
}

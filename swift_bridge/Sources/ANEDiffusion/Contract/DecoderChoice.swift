import Foundation

/// Which VAE decoder (or encoder) an export runs: its distilled tiny one or its full VAE.
///
/// Both take the same input (latents divided by the contract's scaling factor) and return an image
/// in [-1, 1], so the rest of the pipeline does not change; the tiny one does a fraction of the work.
public enum DecoderChoice: String, CaseIterable, Sendable {
    /// The tiny decoder when the export has one, else the full one (the Python runtime's default).
    case automatic
    case tiny
    case full
}

extension ExportContract {
    /// The contract name of the decoder `choice` selects, through the optional `decoders` map.
    ///
    /// - Throws: ``ContractError`` when the export lacks that decoder (an export made before tiny
    ///   decoders has only the full one, as `VAEDecoder`).
    public func decoderName(_ choice: DecoderChoice = .automatic) throws -> String {
        try vaeName(choice, table: decoders, field: "decoders", fallback: "VAEDecoder")
    }

    /// The decoder `choice` selects (see ``decoderName(_:)``).
    public func decoder(_ choice: DecoderChoice = .automatic) throws -> ComponentSpec {
        let name = try decoderName(choice)
        guard let spec = components.named(name) else {
            throw ContractError(field: "decoders", message: "names \(name), which components does not list")
        }
        return spec
    }

    /// The contract name of the encoder `choice` selects, through the optional `encoders` map.
    public func encoderName(_ choice: DecoderChoice = .automatic) throws -> String {
        try vaeName(choice, table: encoders, field: "encoders", fallback: "VAEEncoder")
    }

    private func vaeName(_ choice: DecoderChoice, table: [String: String]?, field: String,
                         fallback: String) throws -> String {
        guard let table else {  // an export from before tiny decoders: the full VAE only
            if choice == .tiny {
                throw ContractError(field: field, message: "this export has no tiny \(field.dropLast()); use .full")
            }
            return fallback
        }
        switch choice {
        case .automatic:
            if let name = table["tiny"] ?? table["full"] { return name }
            throw ContractError(field: field, message: "lists neither a tiny nor a full one")
        case .tiny, .full:
            if let name = table[choice.rawValue] { return name }
            throw ContractError(field: field, message: "this export has no \(choice.rawValue) "
                                    + "\(field.dropLast()); found \(table.keys.sorted().joined(separator: ", "))")
        }
    }
}

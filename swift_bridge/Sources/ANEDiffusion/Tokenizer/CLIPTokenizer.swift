import Foundation

/// A prompt the tokenizer cannot turn into ids, or tokenizer files it cannot read.
public enum TokenizerError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// The prompt needs more ids than the text encoder takes (and truncation was not asked for).
    case promptTooLong(tokens: Int, maxLength: Int)
    case missingSpecialTokens([String])
    case invalidMaxLength(Int)
    case malformedMerges(line: Int, text: String)
    case unreadableFile(String)

    public var description: String {
        switch self {
        case let .promptTooLong(tokens, maxLength):
            return "prompt is \(tokens) tokens, the text encoder takes at most \(maxLength) "
                + "(including start and end tokens)"
        case let .missingSpecialTokens(tokens):
            return "special tokens missing from the vocabulary: \(tokens)"
        case let .invalidMaxLength(length):
            return "max_length must leave room for the start and end tokens, got \(length)"
        case let .malformedMerges(line, text):
            return "merges.txt line \(line) is not a \"left right\" pair: \(text.debugDescription)"
        case let .unreadableFile(message):
            return message
        }
    }

    public var errorDescription: String? { description }
}

/// CLIP's byte-level BPE tokenizer: prompt text to the fixed-length ids the text encoder takes.
///
/// Reads the same `vocab.json` / `merges.txt` pair as transformers' `CLIPTokenizer` and gives
/// the same ids as `ane_diffusion.tokenizer.CLIPTokenizer.encode`: special tokens written in
/// the prompt are cut out first; the rest is NFC-normalised, white space collapsed, lowercased,
/// split into words, written as bytes (GPT-2's byte-to-unicode map) with `</w>` on the last
/// symbol, and merged by BPE rank.
public struct CLIPTokenizer: Sendable {
    /// Context length of the CLIP text encoder, start and end tokens included.
    public static let maxLength = 77
    public static let startOfText = "<|startoftext|>"
    public static let endOfText = "<|endoftext|>"
    /// Suffix CLIP glues to the last symbol of every word.
    public static let endOfWord = "</w>"

    /// One learned BPE merge.
    public struct Merge: Hashable, Sendable {
        public let left: String
        public let right: String
        public init(_ left: String, _ right: String) {
            self.left = left
            self.right = right
        }
    }

    public let vocabulary: [String: Int]
    /// Merges, highest priority first.
    public let merges: [Merge]
    public let bosToken: String
    public let eosToken: String
    public let unkToken: String
    /// The token that fills a prompt up to `maxLength` ids (`eosToken` for Stable Diffusion 1.x).
    public let padToken: String

    private let ranks: [Merge: Int]
    private let specialTokens: [[Unicode.Scalar]]

    /// A tokenizer from a vocabulary and merges. `padToken` `nil` means `eosToken`.
    public init(vocabulary: [String: Int], merges: [Merge], bosToken: String = startOfText,
                eosToken: String = endOfText, unkToken: String = endOfText, padToken: String? = nil) throws {
        let pad = padToken ?? eosToken
        var special: [String] = []
        for token in [bosToken, eosToken, unkToken, pad] where !special.contains(token) {
            special.append(token)
        }
        let missing = special.filter { vocabulary[$0] == nil }
        guard missing.isEmpty else { throw TokenizerError.missingSpecialTokens(missing) }
        self.vocabulary = vocabulary
        self.merges = merges
        (self.bosToken, self.eosToken, self.unkToken, self.padToken) = (bosToken, eosToken, unkToken, pad)
        var ranks: [Merge: Int] = [:]
        for (rank, merge) in merges.enumerated() {
            ranks[merge] = rank  // a repeated merge keeps its last rank, as a Python dict does
        }
        self.ranks = ranks
        // Longest first: the alternation picks the longest special token at a position.
        self.specialTokens = special.map { Array($0.unicodeScalars) }.sorted { $0.count > $1.count }
    }

    /// A tokenizer from the contents of `vocab.json` and `merges.txt`.
    public init(vocabularyJSON: Data, mergesText: String, padToken: String? = nil) throws {
        let vocabulary: [String: Int]
        do {
            vocabulary = try JSONDecoder().decode([String: Int].self, from: vocabularyJSON)
        } catch {
            throw TokenizerError.unreadableFile("vocab.json is not a JSON object of token ids: \(error)")
        }
        try self.init(vocabulary: vocabulary, merges: CLIPTokenizer.parseMerges(mergesText), padToken: padToken)
    }

    /// Load CLIP's `vocab.json` and `merges.txt`.
    public init(vocabularyURL: URL, mergesURL: URL, padToken: String? = nil) throws {
        func read(_ url: URL) throws -> Data {
            do { return try Data(contentsOf: url) } catch {
                throw TokenizerError.unreadableFile("cannot read \(url.path): \(error.localizedDescription)")
            }
        }
        guard let merges = String(data: try read(mergesURL), encoding: .utf8) else {
            throw TokenizerError.unreadableFile("\(mergesURL.path) is not UTF-8 text")
        }
        try self.init(vocabularyJSON: try read(vocabularyURL), mergesText: merges, padToken: padToken)
    }

    /// The merges in the text of a `merges.txt`: a `#version` line, then one `left right` pair
    /// a line (blank lines skipped).
    public static func parseMerges(_ text: String) throws -> [Merge] {
        var merges: [Merge] = []
        for (index, line) in splitLines(text).enumerated() {
            if line.isEmpty || line.hasPrefix("#version") { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw TokenizerError.malformedMerges(line: index + 1, text: line) }
            merges.append(Merge(String(parts[0]), String(parts[1])))
        }
        return merges
    }

    public var bosID: Int { vocabulary[bosToken]! }
    public var eosID: Int { vocabulary[eosToken]! }
    public var padID: Int { vocabulary[padToken]! }

    /// `maxLength` ids: start token, the prompt's tokens, end token, then padding.
    ///
    /// Throws ``TokenizerError/promptTooLong(tokens:maxLength:)`` when the prompt does not fit,
    /// unless `truncate`, which drops the prompt's last tokens and keeps the end token.
    public func encode(_ text: String, maxLength: Int = CLIPTokenizer.maxLength, truncate: Bool = false) throws -> [Int] {
        guard maxLength >= 2 else { throw TokenizerError.invalidMaxLength(maxLength) }
        var ids = [bosID] + tokenIDs(text) + [eosID]
        if ids.count > maxLength {
            guard truncate else { throw TokenizerError.promptTooLong(tokens: ids.count, maxLength: maxLength) }
            ids = Array(ids.prefix(maxLength - 1)) + [eosID]
        }
        return ids + [Int](repeating: padID, count: maxLength - ids.count)
    }

    /// Number of ids the prompt takes, start and end tokens included, padding not.
    public func countTokens(_ text: String) -> Int { tokenIDs(text).count + 2 }

    /// The prompt's ids without start, end and padding tokens.
    public func tokenIDs(_ text: String) -> [Int] {
        let scalars = Array(text.unicodeScalars)
        var ids: [Int] = []
        var pieceStart = 0
        var position = 0
        while position < scalars.count {
            if let special = specialTokens.first(where: { CLIPText.hasPrefix(scalars, $0, at: position) }) {
                ids += plainTextIDs(Array(scalars[pieceStart..<position]))
                ids.append(vocabulary[String(String.UnicodeScalarView(special))]!)
                position += special.count
                pieceStart = position
            } else {
                position += 1
            }
        }
        return ids + plainTextIDs(Array(scalars[pieceStart...]))
    }

    /// Ids of text that holds no special token.
    private func plainTextIDs(_ text: [Unicode.Scalar]) -> [Int] {
        guard !text.isEmpty else { return [] }
        let unkID = vocabulary[unkToken]!
        return CLIPText.preTokenize(CLIPText.normalize(text)).flatMap { word in
            applyMerges(CLIPTokenizer.wordSymbols(word)).map { vocabulary[$0] ?? unkID }
        }
    }

    /// A word's initial symbols: one per UTF-8 byte, `</w>` glued to the last one.
    static func wordSymbols(_ word: [Unicode.Scalar]) -> [String] {
        var symbols = String(String.UnicodeScalarView(word)).utf8.map { String(byteEncoder[Int($0)]) }
        symbols[symbols.count - 1] += endOfWord
        return symbols
    }

    /// BPE: repeatedly merge (everywhere, left to right) the adjacent pair learned first.
    private func applyMerges(_ initial: [String]) -> [String] {
        var symbols = initial
        while symbols.count > 1 {
            var best: (merge: Merge, rank: Int)?
            for i in 0..<(symbols.count - 1) {
                let pair = Merge(symbols[i], symbols[i + 1])
                if let rank = ranks[pair], rank < best?.rank ?? Int.max { best = (pair, rank) }
            }
            guard let merge = best?.merge else { break }
            var merged: [String] = []
            merged.reserveCapacity(symbols.count)
            var i = 0
            while i < symbols.count {
                if i + 1 < symbols.count && symbols[i] == merge.left && symbols[i + 1] == merge.right {
                    merged.append(merge.left + merge.right)
                    i += 2
                } else {
                    merged.append(symbols[i])
                    i += 1
                }
            }
            symbols = merged
        }
        return symbols
    }

    /// GPT-2's reversible map from the 256 byte values to printable characters: printable
    /// Latin-1 bytes map to themselves, the others to `U+0100 + k` in byte order.
    public static let byteEncoder: [Unicode.Scalar] = {
        let printable = Set(Array(0x21...0x7E) + Array(0xA1...0xAC) + Array(0xAE...0xFF))
        var next = 0
        return (0..<256).map { byte in
            if printable.contains(byte) { return Unicode.Scalar(UInt32(byte))! }
            defer { next += 1 }
            return Unicode.Scalar(UInt32(256 + next))!
        }
    }()

    /// Python's `str.splitlines()` for the line breaks a merges file can hold.
    private static func splitLines(_ text: String) -> [String] {
        let breaks: Set<UInt32> = [0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029]
        var lines: [String] = []
        var current = String.UnicodeScalarView()
        var previousWasCR = false
        for scalar in text.unicodeScalars {
            if breaks.contains(scalar.value) {
                // "\r\n" is one line break.
                if !(previousWasCR && scalar.value == 0x0A) { lines.append(String(current)) }
                current = String.UnicodeScalarView()
                previousWasCR = scalar.value == 0x0D
            } else {
                current.append(scalar)
                previousWasCR = false
            }
        }
        if !current.isEmpty { lines.append(String(current)) }
        return lines
    }
}

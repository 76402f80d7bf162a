import Foundation

/// CLIP's text normalisation and pre-tokenizer, on Unicode scalars (Python's code points).
/// Mirrors `normalize` and `pre_tokenize` of `ane_diffusion.tokenizer`.
enum CLIPText {
    /// The Unicode White_Space characters: what CLIP's regex engine means by `\s`.
    static let whiteSpace: Set<UInt32> = [
        0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680,
        0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A,
        0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
    ]

    /// CLIP's start and end tokens, which the pre-tokenizer pattern spells out literally.
    static let startOfText = Array("<|startoftext|>".unicodeScalars)
    static let endOfText = Array("<|endoftext|>".unicodeScalars)

    static let contractions: [[Unicode.Scalar]] = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"].map {
        Array($0.unicodeScalars)
    }

    static func isWhiteSpace(_ scalar: Unicode.Scalar) -> Bool { whiteSpace.contains(scalar.value) }

    /// `\p{L}`: general categories Lu, Ll, Lt, Lm, Lo (Python's `str.isalpha`).
    static func isLetter(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }

    /// `\p{N}`: general categories Nd, Nl, No.
    static func isNumber(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    /// `[^\s\p{L}\p{N}]`: punctuation, symbols, marks, controls.
    static func isOther(_ scalar: Unicode.Scalar) -> Bool {
        !(isWhiteSpace(scalar) || isLetter(scalar) || isNumber(scalar))
    }

    /// NFC, every run of white space to one space, per-scalar full lowercase mapping.
    static func normalize(_ text: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var string = String()
        string.unicodeScalars.append(contentsOf: text)
        let composed = string.precomposedStringWithCanonicalMapping.unicodeScalars
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(composed.count)
        var inSpace = false
        for scalar in composed {
            if isWhiteSpace(scalar) {
                if !inSpace { out.append(" ") }
                inSpace = true
                continue
            }
            inSpace = false
            out.append(contentsOf: scalar.properties.lowercaseMapping.unicodeScalars)
        }
        return out
    }

    /// Split normalised text into words: the first of CLIP's alternatives that matches at each
    /// position (`<|startoftext|>`, `<|endoftext|>`, contractions, a run of letters, one number,
    /// a run of other characters); white space is dropped. A literal start/end token word is then
    /// re-split into `<|`, its name and `|>`, as transformers' second (GPT-2) split does.
    static func preTokenize(_ text: [Unicode.Scalar]) -> [[Unicode.Scalar]] {
        var words: [[Unicode.Scalar]] = []
        var position = 0
        while position < text.count {
            if isWhiteSpace(text[position]) {
                position += 1
                continue
            }
            let word = match(text, at: position, literals: [startOfText, endOfText] + contractions)
            if word == startOfText || word == endOfText {
                words += [Array(word[..<2]), Array(word[2..<(word.count - 2)]), Array(word[(word.count - 2)...])]
            } else {
                words.append(word)
            }
            position += word.count
        }
        return words
    }

    private static func match(_ text: [Unicode.Scalar], at position: Int,
                              literals: [[Unicode.Scalar]]) -> [Unicode.Scalar] {
        for literal in literals where hasPrefix(text, literal, at: position) {
            return literal
        }
        let first = text[position]
        if isNumber(first) { return [first] }
        let sameClass: (Unicode.Scalar) -> Bool = isLetter(first) ? isLetter : isOther
        var end = position + 1
        while end < text.count && sameClass(text[end]) { end += 1 }
        return Array(text[position..<end])
    }

    static func hasPrefix(_ text: [Unicode.Scalar], _ prefix: [Unicode.Scalar], at position: Int) -> Bool {
        guard !prefix.isEmpty, position + prefix.count <= text.count else { return false }
        for (offset, scalar) in prefix.enumerated() where text[position + offset] != scalar {
            return false
        }
        return true
    }
}

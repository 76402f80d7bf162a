import Foundation
import XCTest
@testable import ANEDiffusion

final class TokenizerTests: XCTestCase {
    struct Golden: Decodable {
        struct Case: Decodable {
            let text: String
            let max_length: Int
            let truncate: Bool
            let ids: [Int]?
            let error: String?
            let tokens: Int?
        }
        let cases: [Case]
        let bos_id: Int
        let eos_id: Int
        let pad_id: Int
        let vocab_size: Int
        let merge_count: Int
    }

    func testIdsMatchPython() throws {
        let golden = try Fixtures.load(Golden.self, "tokenizer.json")
        let tokenizer = try Fixtures.tokenizer()
        XCTAssertEqual(tokenizer.vocabulary.count, golden.vocab_size)
        XCTAssertEqual(tokenizer.merges.count, golden.merge_count)
        XCTAssertEqual([tokenizer.bosID, tokenizer.eosID, tokenizer.padID], [golden.bos_id, golden.eos_id, golden.pad_id])
        XCTAssertGreaterThan(golden.cases.count, 20)
        for c in golden.cases {
            let label = "\(c.text.debugDescription) max_length=\(c.max_length) truncate=\(c.truncate)"
            if let ids = c.ids {
                XCTAssertEqual(try tokenizer.encode(c.text, maxLength: c.max_length, truncate: c.truncate), ids, label)
            } else {
                XCTAssertEqual(c.error, "prompt_too_long")
                XCTAssertThrowsError(try tokenizer.encode(c.text, maxLength: c.max_length, truncate: c.truncate)) {
                    XCTAssertEqual($0 as? TokenizerError, .promptTooLong(tokens: c.tokens!, maxLength: c.max_length), label)
                }
                XCTAssertEqual(tokenizer.countTokens(c.text), c.tokens, label)
            }
        }
    }

    func testEveryCorpusWordIsOneToken() throws {
        let tokenizer = try Fixtures.tokenizer()
        for word in ["astronaut", "background", "watercolor"] {
            XCTAssertEqual(tokenizer.tokenIDs(word), [tokenizer.vocabulary[word + "</w>"]!], word)
        }
    }

    func testByteEncoderIsGPT2Map() {
        let map = CLIPTokenizer.byteEncoder
        XCTAssertEqual(map.count, 256)
        XCTAssertEqual(Set(map).count, 256)
        XCTAssertEqual(map[Int(UInt8(ascii: "a"))], "a")
        XCTAssertEqual(map[0x20], "\u{120}")  // space: 'Ġ'
        XCTAssertEqual(map[0x00], "\u{100}")
        XCTAssertEqual(map[0xAD], "\u{143}")  // the soft hyphen is the last remapped byte
    }

    func testMissingSpecialTokens() {
        XCTAssertThrowsError(try CLIPTokenizer(vocabulary: ["a": 0], merges: [])) {
            XCTAssertEqual($0 as? TokenizerError, .missingSpecialTokens(["<|startoftext|>", "<|endoftext|>"]))
        }
    }

    func testMergesParsing() throws {
        let merges = try CLIPTokenizer.parseMerges("#version: 0.2\r\na b\n\nab c</w>\n")
        XCTAssertEqual(merges, [.init("a", "b"), .init("ab", "c</w>")])
        XCTAssertThrowsError(try CLIPTokenizer.parseMerges("#version: 0.2\na b c\n")) {
            XCTAssertEqual($0 as? TokenizerError, .malformedMerges(line: 2, text: "a b c"))
        }
    }

    func testPadTokenAndMaxLength() throws {
        let base = try Fixtures.tokenizer()
        let tokenizer = try CLIPTokenizer(vocabulary: base.vocabulary, merges: base.merges, padToken: "!")
        let ids = try tokenizer.encode("a", maxLength: 5)
        XCTAssertEqual(ids, [base.bosID] + base.tokenIDs("a") + [base.eosID, base.vocabulary["!"]!, base.vocabulary["!"]!])
        XCTAssertThrowsError(try tokenizer.encode("a", maxLength: 1)) {
            XCTAssertEqual($0 as? TokenizerError, .invalidMaxLength(1))
        }
    }
}

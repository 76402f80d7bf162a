import Foundation
import XCTest
@testable import ANEDiffusion

/// The golden vectors written by `swift_bridge/make_fixtures.py` from the Python package.
enum Fixtures {
    static var folder: URL {
        Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    }

    static func url(_ name: String) -> URL { folder.appendingPathComponent(name) }

    static func load<T: Decodable>(_ type: T.Type, _ name: String) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(contentsOf: url(name)))
    }

    static func tokenizer() throws -> CLIPTokenizer {
        try CLIPTokenizer(vocabularyURL: url("tokenizer/vocab.json"), mergesURL: url("tokenizer/merges.txt"))
    }
}

/// Doubles in the fixtures are exact; float32 values convert back exactly.
extension Array where Element == Double {
    var float32: [Float] { map(Float.init) }
}

/// Asserts `actual` is within `relative * |expected| + absolute` of `expected`, element-wise,
/// and returns the largest relative error seen (for reports).
@discardableResult
func assertClose(_ actual: [Float], _ expected: [Double], relative: Double = 1e-5, absolute: Double = 1e-6,
                 _ message: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line) -> Double {
    assertClose(actual.map(Double.init), expected, relative: relative, absolute: absolute, message(), file: file, line: line)
}

@discardableResult
func assertClose(_ actual: [Double], _ expected: [Double], relative: Double = 1e-5, absolute: Double = 1e-6,
                 _ message: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line) -> Double {
    guard actual.count == expected.count else {
        XCTFail("\(message()): \(actual.count) values, expected \(expected.count)", file: file, line: line)
        return .infinity
    }
    var worst = 0.0
    for (index, (a, e)) in zip(actual, expected).enumerated() {
        let error = abs(a - e)
        worst = Swift.max(worst, error / Swift.max(abs(e), 1e-30))
        if !(error <= relative * abs(e) + absolute) {
            XCTFail("\(message()): element \(index) is \(a), expected \(e)", file: file, line: line)
            return worst
        }
    }
    return worst
}

// A TEST-ONLY stand-in for the part of Apple's Core ML that swift_bridge's adapters use, so that
// those adapters compile and run their unit tests on Linux (see swift_bridge/README.md, "Core ML
// adapters on Linux"). Declarations follow Apple's published Core ML documentation; the bodies are
// our own minimal model of the documented behaviour. It checks our code, not Apple's framework.
// It is declared in Package.swift only on Linux, belongs to no product, and is never used on
// Apple platforms, where the adapters import the real CoreML.
import Foundation

/// Element types of a multiarray (Core ML's `MLMultiArrayDataType`; raw values as in Apple's headers).
public enum MLMultiArrayDataType: Int, Sendable {
    case double = 65600   // 0x10000 | 64
    case float32 = 65568  // 0x10000 | 32
    case float16 = 65552  // 0x10000 | 16
    case int32 = 131104   // 0x20000 | 32

    public static var float64: MLMultiArrayDataType { .double }
    public static var float: MLMultiArrayDataType { .float32 }

    /// Bytes per element.
    var byteSize: Int {
        switch self {
        case .double: return 8
        case .float32, .int32: return 4
        case .float16: return 2
        }
    }

    /// `value` as an element of this type holds it: rounded to nearest for floats, rounded
    /// toward zero for int32 (as Core ML's conversions are documented to do).
    func stored(_ value: Double) -> Double {
        switch self {
        case .double: return value
        case .float32: return Double(Float(value))
        case .float16: return Double(Float16(value))
        case .int32:
            precondition(value.isFinite && abs(value) < 2_147_483_648, "MLMultiArray: \(value) is not an int32")
            return Double(Int32(value.rounded(.towardZero)))
        }
    }
}

/// A multidimensional array of numbers (Core ML's `MLMultiArray`).
///
/// Stand-in model: the values are kept as `Double`s in logical (row-major) order, already
/// rounded to `dataType`; `strides` are reported as created. Element access goes through
/// `MLShapedArray`, as in the adapters.
open class MLMultiArray {
    public let dataType: MLMultiArrayDataType
    public let shape: [NSNumber]
    public let strides: [NSNumber]
    /// The element count: the product of the shape.
    public var count: Int { values.count }
    /// Logical row-major values, each exactly representable in `dataType`.
    var values: [Double]

    init(shapeInts: [Int], dataType: MLMultiArrayDataType, strides: [Int]? = nil, values: [Double]) {
        precondition(values.count == shapeInts.reduce(1, *), "MLMultiArray: \(values.count) values for shape \(shapeInts)")
        self.dataType = dataType
        self.shape = shapeInts.map { NSNumber(value: $0) }
        self.strides = (strides ?? contiguousStrides(shapeInts)).map { NSNumber(value: $0) }
        self.values = values.map(dataType.stored)
    }

    /// A zero-filled contiguous array (Core ML leaves the memory for the caller to set).
    public convenience init(shape: [NSNumber], dataType: MLMultiArrayDataType) throws {
        let dims = shape.map(\.intValue)
        guard dims.allSatisfy({ $0 >= 0 }) else { throw coreMLError("negative dimension in shape \(dims)") }
        self.init(shapeInts: dims, dataType: dataType, values: [Double](repeating: 0, count: dims.reduce(1, *)))
    }

    /// An array over existing memory with the given element strides (Core ML uses it for, e.g.,
    /// the padded rows of Neural Engine outputs). The stand-in copies the elements at creation
    /// and calls `deallocator` when the array is freed.
    public convenience init(dataPointer: UnsafeMutableRawPointer, shape: [NSNumber], dataType: MLMultiArrayDataType,
                            strides: [NSNumber], deallocator: ((UnsafeMutableRawPointer) -> Void)? = nil) throws {
        let dims = shape.map(\.intValue), steps = strides.map(\.intValue)
        guard dims.count == steps.count else { throw coreMLError("shape \(dims) and strides \(steps) differ in rank") }
        var values: [Double] = []
        values.reserveCapacity(dims.reduce(1, *))
        for index in logicalIndices(dims) {
            let offset = zip(index, steps).reduce(0) { $0 + $1.0 * $1.1 } * dataType.byteSize
            switch dataType {
            case .double: values.append(dataPointer.load(fromByteOffset: offset, as: Double.self))
            case .float32: values.append(Double(dataPointer.load(fromByteOffset: offset, as: Float.self)))
            case .float16: values.append(Double(dataPointer.load(fromByteOffset: offset, as: Float16.self)))
            case .int32: values.append(Double(dataPointer.load(fromByteOffset: offset, as: Int32.self)))
            }
        }
        self.init(shapeInts: dims, dataType: dataType, strides: steps, values: values)
        self.deallocator = deallocator.map { free in { free(dataPointer) } }
    }

    /// The arrays joined along `axis` (negative counts from the end), converted to `dataType`.
    /// Core ML raises an exception when the shapes disagree off the axis; the stand-in traps.
    public convenience init(concatenating multiArrays: [MLMultiArray], axis: Int, dataType: MLMultiArrayDataType) {
        precondition(!multiArrays.isEmpty, "MLMultiArray(concatenating:): no arrays")
        let first = multiArrays[0].shape.map(\.intValue)
        let axis = axis < 0 ? axis + first.count : axis
        precondition(axis >= 0 && axis < first.count, "MLMultiArray(concatenating:): axis out of range")
        for array in multiArrays {
            var dims = array.shape.map(\.intValue)
            precondition(dims.count == first.count, "MLMultiArray(concatenating:): ranks differ")
            dims[axis] = first[axis]
            precondition(dims == first, "MLMultiArray(concatenating:): shapes differ off axis \(axis)")
        }
        let outer = first[..<axis].reduce(1, *)
        var values: [Double] = []
        for block in 0..<outer {
            for array in multiArrays {
                let size = array.shape.map(\.intValue)[axis...].reduce(1, *)
                values.append(contentsOf: array.values[(block * size)..<((block + 1) * size)])
            }
        }
        var shape = first
        shape[axis] = multiArrays.reduce(0) { $0 + $1.shape[axis].intValue }
        self.init(shapeInts: shape, dataType: dataType, values: values)
    }

    /// A multiarray holding a shaped array's elements (Apple's is generic over
    /// `MLShapedArrayProtocol`; this stand-in takes `MLShapedArray` only).
    public convenience init<Scalar>(_ shapedArray: MLShapedArray<Scalar>) {
        self.init(shapeInts: shapedArray.shape, dataType: elementType(of: Scalar.self),
                  values: shapedArray.scalars.map(double))
    }

    private var deallocator: (() -> Void)?
    deinit { deallocator?() }
}

func contiguousStrides(_ shape: [Int]) -> [Int] {
    var strides = [Int](repeating: 1, count: shape.count)
    for axis in stride(from: shape.count - 2, through: 0, by: -1) {
        strides[axis] = strides[axis + 1] * shape[axis + 1]
    }
    return strides
}

/// Every index of `shape` in row-major order.
func logicalIndices(_ shape: [Int]) -> [[Int]] {
    guard !shape.contains(0) else { return [] }
    var out: [[Int]] = []
    var index = [Int](repeating: 0, count: shape.count)
    while true {
        out.append(index)
        var axis = shape.count - 1
        while axis >= 0 {
            index[axis] += 1
            if index[axis] < shape[axis] { break }
            index[axis] = 0
            axis -= 1
        }
        if axis < 0 { return out }
    }
}

/// Element types an `MLShapedArray` can hold (Core ML's `MLShapedArrayScalar`).
public protocol MLShapedArrayScalar {}

extension Float: MLShapedArrayScalar {}
extension Double: MLShapedArrayScalar {}
extension Float16: MLShapedArrayScalar {}
extension Int32: MLShapedArrayScalar {}

/// The multiarray element type that holds `Scalar`s.
func elementType<Scalar: MLShapedArrayScalar>(of _: Scalar.Type) -> MLMultiArrayDataType {
    switch Scalar.self {
    case is Float.Type: return .float32
    case is Double.Type: return .double
    case is Float16.Type: return .float16
    case is Int32.Type: return .int32
    default: preconditionFailure("MLShapedArrayScalar: \(Scalar.self) is not modelled by the stand-in")
    }
}

func double<Scalar: MLShapedArrayScalar>(_ value: Scalar) -> Double {
    switch value {
    case let v as Float: return Double(v)
    case let v as Double: return v
    case let v as Float16: return Double(v)
    case let v as Int32: return Double(v)
    default: preconditionFailure("MLShapedArrayScalar: \(Scalar.self) is not modelled by the stand-in")
    }
}

func scalar<Scalar: MLShapedArrayScalar>(_ value: Double, as _: Scalar.Type) -> Scalar {
    switch Scalar.self {
    case is Float.Type: return Float(value) as! Scalar
    case is Double.Type: return value as! Scalar
    case is Float16.Type: return Float16(value) as! Scalar
    case is Int32.Type: return Int32(value) as! Scalar
    default: preconditionFailure("MLShapedArrayScalar: \(Scalar.self) is not modelled by the stand-in")
    }
}

/// A typed multidimensional array (Core ML's `MLShapedArray`).
public struct MLShapedArray<Scalar: MLShapedArrayScalar> {
    public private(set) var shape: [Int]
    public var scalars: [Scalar]

    public init<S: Sequence>(scalars: S, shape: [Int]) where S.Element == Scalar {
        let scalars = Array(scalars)
        precondition(scalars.count == shape.reduce(1, *), "MLShapedArray: \(scalars.count) scalars for shape \(shape)")
        self.shape = shape
        self.scalars = scalars
    }

    /// The elements of a multiarray, which must hold `Scalar`s (Apple: "with the same underlying
    /// type as the shaped array type"; the stand-in traps otherwise).
    public init(_ multiArray: MLMultiArray) {
        precondition(multiArray.dataType == elementType(of: Scalar.self),
                     "MLShapedArray<\(Scalar.self)>: the multiarray holds \(multiArray.dataType)")
        self.init(scalars: multiArray.values.map { scalar($0, as: Scalar.self) }, shape: multiArray.shape.map(\.intValue))
    }
}

/// Core ML's error domain; the stand-in throws `NSError`s in it, as Core ML does.
public let MLModelErrorDomain = "com.apple.CoreML"

func coreMLError(_ message: String) -> NSError {
    NSError(domain: MLModelErrorDomain, code: 0, userInfo: [NSLocalizedDescriptionKey: message])
}

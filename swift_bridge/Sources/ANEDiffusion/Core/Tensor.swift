/// A dense float32 array in row-major (C) order: the shape plus its scalars.
///
/// Deliberately small: the samplers only need element-wise arithmetic, which they do on
/// `scalars` directly (in `Double` where the Python reference computes in float64), and the
/// pipeline only needs to slice, stack and repeat along the batch axis.
public struct Tensor: Equatable, Sendable {
    /// Dimensions, outermost first; `[]` is a scalar.
    public private(set) var shape: [Int]
    /// `shape.reduce(1, *)` values in row-major order.
    public private(set) var scalars: [Float]

    /// A tensor of `shape` holding `scalars` (their count must equal the shape's element count).
    public init(shape: [Int], scalars: [Float]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Tensor: negative dimension in \(shape)")
        precondition(shape.reduce(1, *) == scalars.count,
                     "Tensor: \(scalars.count) scalars do not fill shape \(shape)")
        self.shape = shape
        self.scalars = scalars
    }

    /// A tensor of `shape` filled with `value`.
    public init(shape: [Int], repeating value: Float) {
        self.init(shape: shape, scalars: [Float](repeating: value, count: shape.reduce(1, *)))
    }

    /// Number of scalars.
    public var count: Int { scalars.count }

    /// Size of the leading (batch) axis.
    public var batchSize: Int { shape.first ?? 1 }

    /// Scalars per row of the leading axis.
    public var rowSize: Int { shape.dropFirst().reduce(1, *) }

    /// The same scalars under another shape with the same element count.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        Tensor(shape: newShape, scalars: scalars)
    }

    /// Rows `range` of the leading axis (numpy's `x[a:b]`).
    public func rows(_ range: Range<Int>) -> Tensor {
        precondition(!shape.isEmpty && range.lowerBound >= 0 && range.upperBound <= shape[0],
                     "Tensor: rows \(range) out of bounds for shape \(shape)")
        var newShape = shape
        newShape[0] = range.count
        let size = rowSize
        return Tensor(shape: newShape,
                      scalars: Array(scalars[(range.lowerBound * size)..<(range.upperBound * size)]))
    }

    /// Each row repeated `times` times in place (numpy's `np.repeat(x, times, axis=0)`).
    public func repeatingRows(_ times: Int) -> Tensor {
        precondition(times >= 1 && !shape.isEmpty, "Tensor: cannot repeat rows \(times) times")
        var newShape = shape
        newShape[0] *= times
        let size = rowSize
        var out: [Float] = []
        out.reserveCapacity(count * times)
        for row in 0..<shape[0] {
            let slice = scalars[(row * size)..<((row + 1) * size)]
            for _ in 0..<times { out.append(contentsOf: slice) }
        }
        return Tensor(shape: newShape, scalars: out)
    }

    /// Tensors stacked along the existing leading axis (numpy's `np.concatenate(xs, axis=0)`).
    public static func concatenate(_ tensors: [Tensor]) -> Tensor {
        guard let first = tensors.first else { preconditionFailure("Tensor: nothing to concatenate") }
        let tail = Array(first.shape.dropFirst())
        precondition(tensors.allSatisfy { Array($0.shape.dropFirst()) == tail },
                     "Tensor: cannot concatenate shapes \(tensors.map(\.shape))")
        return Tensor(shape: [tensors.reduce(0) { $0 + $1.batchSize }] + tail,
                      scalars: tensors.flatMap(\.scalars))
    }

    /// Tensors of one shape stacked along a new leading axis (numpy's `np.stack`).
    public static func stack(_ tensors: [Tensor]) -> Tensor {
        guard let first = tensors.first else { preconditionFailure("Tensor: nothing to stack") }
        precondition(tensors.allSatisfy { $0.shape == first.shape },
                     "Tensor: cannot stack shapes \(tensors.map(\.shape))")
        return Tensor(shape: [tensors.count] + first.shape, scalars: tensors.flatMap(\.scalars))
    }

    /// The same values with every scalar transformed.
    public func map(_ transform: (Float) throws -> Float) rethrows -> Tensor {
        Tensor(shape: shape, scalars: try scalars.map(transform))
    }

    /// Text-encoder states `(B, S, C)` in the UNet's `(B, C, 1, S)` layout (Apple's ANE contract).
    public func textStatesForUnet() -> Tensor {
        precondition(shape.count == 3, "Tensor: text encoder states must be (B, S, C), got \(shape)")
        let (batch, length, channels) = (shape[0], shape[1], shape[2])
        var out = [Float](repeating: 0, count: count)
        for b in 0..<batch {
            for s in 0..<length {
                for c in 0..<channels {
                    out[(b * channels + c) * length + s] = scalars[(b * length + s) * channels + c]
                }
            }
        }
        return Tensor(shape: [batch, channels, 1, length], scalars: out)
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String { "Tensor(shape: \(shape))" }
}

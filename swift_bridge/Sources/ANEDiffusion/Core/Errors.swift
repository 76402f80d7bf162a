import Foundation

/// A sampler, schedule or noise request that cannot be run.
public enum SamplingError: Error, Equatable, CustomStringConvertible, LocalizedError {
    case timestepOutOfRange(Int, numTrainTimesteps: Int)
    case invalidStepCount(Int, allowed: ClosedRange<Int>)
    case seedOutOfRange(UInt64)
    case invalidEmbeddingSize(Int)

    public var description: String {
        switch self {
        case let .timestepOutOfRange(t, n):
            return "timestep out of range [-1, \(n - 1)]: \(t)"
        case let .invalidStepCount(steps, allowed):
            return "steps must be in \(allowed.lowerBound)...\(allowed.upperBound), got \(steps)"
        case let .seedOutOfRange(seed):
            return "seed must be in [0, 2**32), got \(seed)"
        case let .invalidEmbeddingSize(dim):
            return "guidance embedding size must be >= 2, got \(dim)"
        }
    }

    public var errorDescription: String? { description }
}

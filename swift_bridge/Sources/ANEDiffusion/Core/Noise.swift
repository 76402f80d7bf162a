import Foundation

/// The 32-bit Mersenne Twister (MT19937) with `init_genrand` seeding, as numpy's legacy
/// `RandomState(seed)` seeds it for an integer seed.
public struct MersenneTwister: Sendable {
    private static let n = 624
    private static let m = 397
    private var state: [UInt32]
    private var index: Int

    public init(seed: UInt32) {
        var state = [UInt32](repeating: 0, count: MersenneTwister.n)
        state[0] = seed
        for i in 1..<MersenneTwister.n {
            let previous = state[i - 1]
            state[i] = 1_812_433_253 &* (previous ^ (previous >> 30)) &+ UInt32(i)
        }
        self.state = state
        self.index = MersenneTwister.n
    }

    /// The next tempered 32-bit output.
    public mutating func next() -> UInt32 {
        if index >= MersenneTwister.n { twist() }
        var y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        y ^= y >> 18
        return y
    }

    private mutating func twist() {
        let (n, m) = (MersenneTwister.n, MersenneTwister.m)
        for i in 0..<n {
            let y = (state[i] & 0x8000_0000) | (state[(i + 1) % n] & 0x7FFF_FFFF)
            state[i] = state[(i + m) % n] ^ (y >> 1) ^ ((y & 1) == 0 ? 0 : 0x9908_B0DF)
        }
        index = 0
    }
}

/// numpy's legacy `RandomState`: 53-bit doubles from two MT19937 draws and the polar
/// Box-Muller `standard_normal`, which caches its second value for the next call.
public struct NumPyRandomSource: Sendable {
    private var generator: MersenneTwister
    private var cachedGaussian: Double?

    public init(seed: UInt32) {
        generator = MersenneTwister(seed: seed)
    }

    /// The next raw 32-bit output of the underlying generator.
    public mutating func nextUInt32() -> UInt32 { generator.next() }

    /// A double in [0, 1): `(a >> 5) * 2^26 + (b >> 6)` over `2^53` (`random_sample`).
    public mutating func nextDouble() -> Double {
        let a = Double(generator.next() >> 5)
        let b = Double(generator.next() >> 6)
        return (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// One standard-normal double (`legacy_gauss`).
    public mutating func nextGaussian() -> Double {
        if let cached = cachedGaussian {
            cachedGaussian = nil
            return cached
        }
        var x1 = 0.0, x2 = 0.0, r2 = 0.0
        repeat {
            x1 = 2.0 * nextDouble() - 1.0
            x2 = 2.0 * nextDouble() - 1.0
            r2 = x1 * x1 + x2 * x2
        } while r2 >= 1.0 || r2 == 0.0
        let f = (-2.0 * log(r2) / r2).squareRoot()
        cachedGaussian = f * x1
        return f * x2
    }

    /// `standard_normal(size=shape).astype(float32)`.
    public mutating func normal(shape: [Int]) -> Tensor {
        let count = shape.reduce(1, *)
        var values = [Float](repeating: 0, count: count)
        for i in 0..<count { values[i] = Float(nextGaussian()) }
        return Tensor(shape: shape, scalars: values)
    }
}

/// A stream of float32 standard-normal tensors from one seed (`ane_diffusion.noise.NoiseSource`).
///
/// Draw order for one image: the initial latent first, then one draw per stochastic re-noise,
/// in step order. Image `i` of a batch uses seed `seed + i`.
public final class NoiseSource {
    public let seed: UInt32
    private var random: NumPyRandomSource

    public init(seed: UInt32) {
        self.seed = seed
        self.random = NumPyRandomSource(seed: seed)
    }

    /// Fresh noise of `shape`.
    public func normal(shape: [Int]) -> Tensor { random.normal(shape: shape) }

    /// Initial latents `(count, *shape)` for seeds `seed ..< seed + count`, and their streams
    /// (`batch_noise`). Throws when a seed would pass `2^32 - 1`.
    public static func batch(seed: UInt32, count: Int, shape: [Int]) throws -> (latents: Tensor, sources: [NoiseSource]) {
        precondition(count >= 1, "NoiseSource.batch: count must be >= 1")
        let last = UInt64(seed) + UInt64(count - 1)
        guard last <= UInt64(UInt32.max) else { throw SamplingError.seedOutOfRange(last) }
        let sources = (0..<count).map { NoiseSource(seed: seed + UInt32($0)) }
        return (Tensor.stack(sources.map { $0.normal(shape: shape) }), sources)
    }

    /// One fresh draw per stream, stacked: the re-noise of a stochastic step for a batch
    /// (`stacked_normal`).
    public static func stackedNormal(_ sources: [NoiseSource], shape: [Int]) -> Tensor {
        Tensor.stack(sources.map { $0.normal(shape: shape) })
    }
}

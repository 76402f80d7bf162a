/// Which processors Core ML may use for a model (`MLModelConfiguration.computeUnits`).
/// Declared on every platform so settings can be stored and passed around anywhere; only the
/// Core ML adapters (Apple platforms) act on it.
public enum ComputeUnits: String, CaseIterable, Codable, Sendable {
    /// CPU, GPU and Neural Engine.
    case all
    /// CPU and Neural Engine: what the ANE-optimised exports are made for.
    case cpuAndNeuralEngine
    /// CPU and GPU.
    case cpuAndGPU
    /// CPU only.
    case cpuOnly
}

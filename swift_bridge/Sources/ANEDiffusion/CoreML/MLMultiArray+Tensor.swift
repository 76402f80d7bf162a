#if canImport(CoreML) || APPLE_STAND_INS
#if canImport(CoreML)
import CoreML
#else  // Linux tests: compiled into CoreMLAdapterTests against a stand-in (README.md, "Core ML adapters on Linux")
import ANEDiffusion
import CoreMLStandIn
#endif

extension Tensor {
    /// The values of a Core ML output, whatever its element type (float16 included) and strides.
    ///
    /// Converts to float32 with `MLMultiArray(concatenating:axis:dataType:)`, as Apple's
    /// ml-stable-diffusion does, then reads the scalars in logical (row-major) order.
    public init(_ array: MLMultiArray) {
        let float32 = array.dataType == .float32
            ? array
            : MLMultiArray(concatenating: [array], axis: 0, dataType: .float32)
        let shaped = MLShapedArray<Float>(float32)
        self.init(shape: shaped.shape, scalars: shaped.scalars)
    }

    /// A new `MLMultiArray` holding this tensor as an input of type `dtype` (int32 values are
    /// the scalars rounded toward zero: token ids).
    public func multiArray(_ dtype: TensorDType) -> MLMultiArray {
        switch dtype {
        case .float32:
            return MLMultiArray(MLShapedArray<Float>(scalars: scalars, shape: shape))
        case .float16:
            let float32 = MLMultiArray(MLShapedArray<Float>(scalars: scalars, shape: shape))
            return MLMultiArray(concatenating: [float32], axis: 0, dataType: .float16)
        case .int32:
            return MLMultiArray(MLShapedArray<Int32>(scalars: scalars.map { Int32($0) }, shape: shape))
        }
    }

    /// This tensor as a feature value for an input of type `dtype`.
    func featureValue(_ dtype: TensorDType) -> MLFeatureValue {
        MLFeatureValue(multiArray: multiArray(dtype))
    }
}
#endif

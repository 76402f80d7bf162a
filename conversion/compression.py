"""Weight compression of converted packages (coremltools ``ct.optimize.coreml``), run on Linux.

- palettization: k-means lookup tables of 2**nbits float16 values (``constexpr_lut_to_dense``);
  one table per weight tensor (iOS16+) or per group of output channels (``group_size``, iOS18+);
- linear quantization: int8 per output channel (iOS16+) or int4 in blocks of 32 input channels
  (iOS18+), ``constexpr_affine_dequantize`` / ``constexpr_blockwise_shift_scale``.

Tensors under coremltools' default threshold (2048 elements: norms, biases, small convolutions)
stay float16. A chunked UNet is compressed chunk by chunk, after the split: bisect_model finds its
cut by the size of the float16 weights, and chunks must each be under the ~1 GB iOS limit as shipped.
"""

from __future__ import annotations

from .options import CompressionSpec


def op_config(spec: CompressionSpec):
    import coremltools as ct

    oc = ct.optimize.coreml
    if spec.mode == "palettize":
        kwargs = {"nbits": spec.nbits, "mode": "kmeans"}
        if spec.group_size:
            kwargs.update(granularity="per_grouped_channel", group_size=spec.group_size)
        # num_kmeans_workers stays 1: coremltools forks a process pool for per-group k-means, and a
        # fork of a process that already ran torch (OpenMP threads) deadlocks (measured: the workers
        # sat idle on a futex for minutes).
        return oc.OpPalettizerConfig(**kwargs)
    if spec.block_size:
        return oc.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                          block_size=spec.block_size)
    return oc.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")


def compress_model(mlmodel, spec: CompressionSpec):
    """A compressed copy of ``mlmodel`` (an ML Program ``MLModel``)."""
    import coremltools as ct

    oc = ct.optimize.coreml
    config = oc.OptimizationConfig(global_config=op_config(spec))
    if spec.mode == "palettize":
        return oc.palettize_weights(mlmodel, config)
    return oc.linear_quantize_weights(mlmodel, config)

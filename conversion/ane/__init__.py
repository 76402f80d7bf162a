"""Neural-Engine friendly PyTorch building blocks and model rewrites.

Everything here works on sequence tensors laid out as (B, C, 1, S): batch, channels, a singleton
height and the sequence along the last axis. The ANE prefers 4-D channels-first tensors whose last
axis is padded to 64 bytes, and 1x1 convolutions over such tensors map onto its convolution engine,
while (B, S, C) matmuls with a small last axis waste memory and bandwidth.

Modules: ``layer_norm`` (LayerNormANE), ``attention`` (split_einsum / split_einsum_v2 / original and
the ``attention(..., kind=...)`` dispatcher) and ``rewrite`` (diffusers / transformers model rewrites,
needs diffusers). Only names that cannot shadow a sub-module are re-exported here.
"""

from .attention import ATTENTION_KINDS
from .layer_norm import LayerNormANE

__all__ = ["ATTENTION_KINDS", "LayerNormANE"]

"""LayerNorm over the channel axis of a (B, C, 1, S) tensor.

What: ``LayerNormANE`` normalises every sequence position over its C channels, exactly what
``nn.LayerNorm(C)`` does on the same data laid out as (B, S, C).

Why: on the Neural Engine sequence tensors live as (B, C, 1, S) (channels first, sequence last), so
the normalised axis is axis 1, not the last one, and ``nn.LayerNorm`` (last axis) would need a
transpose on either side. The mean / variance / rsqrt form below is what Apple's reference uses;
coremltools fuses it into one MIL ``layer_norm`` over axis 1 (seen in the tiny test UNet's program).
Parameter names (``weight``, ``bias``) and shapes (C,) match ``nn.LayerNorm``, so a LayerNorm's state
dict loads unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerNormANE(nn.Module):
    """LayerNorm over axis 1 of a (B, C, 1, S) tensor; numerically equal to ``nn.LayerNorm(C)`` on (B, S, C).

    Args:
        num_channels: C, the size of the normalised axis.
        eps: added to the variance before the reciprocal square root.
        elementwise_affine: learn a per-channel scale (``weight``).
        bias: learn a per-channel shift (``bias``); only used when ``elementwise_affine``.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(num_channels))  # (C,)
            self.bias = nn.Parameter(torch.zeros(num_channels)) if bias else None  # (C,)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_layer_norm(cls, layer_norm: nn.LayerNorm) -> "LayerNormANE":
        """Build the channel-axis equivalent of ``layer_norm`` (sharing no storage with it)."""
        if len(layer_norm.normalized_shape) != 1:
            raise ValueError(
                f"only a LayerNorm over one axis maps to the channel axis, got {layer_norm.normalized_shape}"
            )
        has_weight = layer_norm.weight is not None
        has_bias = getattr(layer_norm, "bias", None) is not None
        ln = cls(
            layer_norm.normalized_shape[0],
            eps=layer_norm.eps,
            elementwise_affine=has_weight,
            bias=has_bias,
        )
        ln.to(device=layer_norm.weight.device if has_weight else None)
        with torch.no_grad():
            if has_weight:
                ln.weight.copy_(layer_norm.weight)
            if has_bias and ln.bias is not None:
                ln.bias.copy_(layer_norm.bias)
        return ln

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, 1, S)
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"expected (B, {self.num_channels}, 1, S), got {tuple(x.shape)}")
        mean = x.mean(dim=1, keepdim=True)  # (B, 1, 1, S)
        centred = x - mean  # (B, C, 1, S)
        var = (centred * centred).mean(dim=1, keepdim=True)  # (B, 1, 1, S), biased like nn.LayerNorm
        out = centred * torch.rsqrt(var + self.eps)  # (B, C, 1, S)
        if self.weight is not None:
            out = out * self.weight.view(1, -1, 1, 1)  # (B, C, 1, S) * (1, C, 1, 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)  # (B, C, 1, S) + (1, C, 1, 1)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"

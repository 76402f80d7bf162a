"""The data latents' per-channel range, and clamping the x estimate to it (static thresholding).

At high guidance weights a few-step sampler's clean-sample estimate ``x_hat`` can leave the range
the data latents occupy; the decoder draws such values as white or as a colour cast ("burn"). A
teacher's many steps pull them back, a 4-step student's cannot. Clamping every step's ``x_hat``
per channel to the data latents' range is Imagen's *static thresholding* (Saharia et al. 2022,
"Photorealistic Text-to-Image Diffusion Models...", section 2.3: ``x_hat`` clipped to [-1, 1] in
pixel space), moved to latent space, where the range is measured rather than known: the
``LOW_PERCENTILE`` .. ``HIGH_PERCENTILE`` percentiles of each channel over the training latents.

Units: diffusion latents, i.e. VAE posterior means x the VAE's scaling factor (what the UNet
samples). The range travels in the model card (``latent_range``) and so in a Core ML export's
contract; ``Settings.clamp`` / ``--clamp`` turn it on at sampling time (Python and Swift alike).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LOW_PERCENTILE, HIGH_PERCENTILE = 0.05, 99.95
"""Percentiles of each channel's training latents that bound the clamp (issue 11, section 9 of
``benchmarks/results/issue11/README.md``: the bounds that removed the w = 6 burn)."""

MAX_RANGE_EXAMPLES = 4096
"""Latents read to measure a range: evenly spaced through larger sets (percentiles of a 0.05%
tail need a few thousand values a channel; one 64x64 latent already gives 4096)."""


class LatentRangeError(ValueError):
    """A latent range that makes no sense (lengths differ, low >= high, not finite)."""


@dataclass(frozen=True)
class LatentRange:
    """Per-channel bounds ``low[c] < high[c]`` of the data latents, in diffusion-latent units."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    percentiles: tuple[float, float] = (LOW_PERCENTILE, HIGH_PERCENTILE)
    examples: int = 0
    """How many latents the bounds were measured on (0: unknown)."""

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high) or not self.low:
            raise LatentRangeError(f"latent_range needs one low and one high bound a channel, got "
                                   f"{len(self.low)} and {len(self.high)}")
        for lo, hi in zip(self.low, self.high):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise LatentRangeError(f"latent_range bounds must be finite with low < high, got [{lo}, {hi}]")

    @property
    def channels(self) -> int:
        return len(self.low)

    @classmethod
    def from_latents(cls, latents, percentiles: tuple[float, float] = (LOW_PERCENTILE, HIGH_PERCENTILE),
                     max_examples: int = MAX_RANGE_EXAMPLES) -> "LatentRange":
        """The range of ``latents`` (N, C, h, w) (numpy or torch): per channel, the two percentiles
        of at most ``max_examples`` latents, evenly spaced through the set."""
        array = latents.detach().cpu().float().numpy() if hasattr(latents, "detach") else np.asarray(latents)
        if array.ndim != 4 or array.shape[0] == 0:
            raise LatentRangeError(f"latents must be (N, C, h, w) with N >= 1, got shape {array.shape}")
        if array.shape[0] > max_examples:
            array = array[np.linspace(0, array.shape[0] - 1, max_examples).round().astype(int)]
        per_channel = array.transpose(1, 0, 2, 3).reshape(array.shape[1], -1).astype(np.float64)
        low, high = np.percentile(per_channel, list(percentiles), axis=1)
        return cls(tuple(float(v) for v in low), tuple(float(v) for v in high),
                   (float(percentiles[0]), float(percentiles[1])), int(array.shape[0]))

    def clamp(self, x0: np.ndarray) -> np.ndarray:
        """``x0`` (B, C, H, W) float32 with channel c clipped to ``[low[c], high[c]]`` (float32 bounds)."""
        if x0.ndim != 4 or x0.shape[1] != self.channels:
            raise LatentRangeError(f"a {self.channels}-channel latent range cannot clamp shape {x0.shape}")
        low = np.asarray(self.low, np.float32).reshape(1, -1, 1, 1)
        high = np.asarray(self.high, np.float32).reshape(1, -1, 1, 1)
        return np.clip(x0, low, high).astype(np.float32)

    def fraction_outside(self, x0: np.ndarray) -> float:
        """Share of ``x0``'s values (B, C, H, W) outside the range: what :meth:`clamp` would change."""
        return float(np.mean(self.clamp(x0) != x0))

    def to_dict(self) -> dict:
        return {"low": list(self.low), "high": list(self.high), "percentiles": list(self.percentiles),
                "examples": self.examples}

    @classmethod
    def from_dict(cls, data) -> "LatentRange":
        """Raises :class:`LatentRangeError` for anything but ``{"low": [...], "high": [...], ...}``."""
        if not (isinstance(data, dict) and isinstance(data.get("low"), list) and isinstance(data.get("high"), list)):
            raise LatentRangeError(f"latent_range must be an object with lists low and high, got {data!r}")
        unknown = sorted(set(data) - {"low", "high", "percentiles", "examples"})
        if unknown:
            raise LatentRangeError(f"unknown latent_range fields: {', '.join(unknown)}")
        numbers = data["low"] + data["high"] + list(data.get("percentiles", []))
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
            raise LatentRangeError("latent_range bounds and percentiles must be numbers")
        percentiles = tuple(float(p) for p in data.get("percentiles", (LOW_PERCENTILE, HIGH_PERCENTILE)))
        if len(percentiles) != 2:
            raise LatentRangeError(f"latent_range percentiles must be two numbers, got {list(percentiles)}")
        return cls(tuple(float(v) for v in data["low"]), tuple(float(v) for v in data["high"]), percentiles,
                   int(data.get("examples", 0)))


__all__ = ["HIGH_PERCENTILE", "LOW_PERCENTILE", "LatentRange", "LatentRangeError"]

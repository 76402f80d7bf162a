"""Seeded Gaussian noise: the single source of randomness for sampling, in every backend.

The generator is numpy's legacy ``RandomState`` (Mersenne Twister MT19937, seeded with an
unsigned 32-bit integer) and its ``standard_normal`` (the polar Box-Muller method, float64),
cast to float32. It is fully specified and small, so the Swift bridge re-implements it bit for
bit (Apple's Swift Stable Diffusion package uses the same generator), and one seed gives the
same starting latents in Python, Core ML and Swift.

Draw order for one image: the initial latent first, then one draw per stochastic re-noise in
step order. Image ``i`` of a batch uses seed ``seed + i``, so every image can be reproduced alone.
"""

from __future__ import annotations

import numpy as np


class NoiseSource:
    """A stream of float32 standard-normal arrays from one seed."""

    def __init__(self, seed: int):
        if not 0 <= int(seed) < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        self.seed = int(seed)
        self._state = np.random.RandomState(self.seed)

    def normal(self, shape) -> np.ndarray:
        return self._state.standard_normal(size=shape).astype(np.float32)


def batch_noise(seed: int, count: int, shape) -> tuple[np.ndarray, list[NoiseSource]]:
    """Initial latents (count, *shape) for images ``seed .. seed+count-1`` and their streams."""
    sources = [NoiseSource(seed + i) for i in range(count)]
    return np.stack([s.normal(shape) for s in sources]), sources


def stacked_normal(sources: list[NoiseSource], shape) -> np.ndarray:
    """One fresh draw per image, stacked: the re-noise of a stochastic step for a batch."""
    return np.stack([s.normal(shape) for s in sources])

"""Types shared by the samplers."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

Denoiser = Callable[[np.ndarray, int], np.ndarray]
"""``denoise(z, t) -> x_hat``: a clean-sample estimate for latents z (B, C, H, W) at timestep t."""

NoiseFn = Callable[[Sequence[int]], np.ndarray]
"""``noise(shape) -> eps``: fresh standard-normal noise (see :mod:`ane_diffusion.noise`)."""

StepCallback = Optional[Callable[[int, int, np.ndarray], None]]
"""``callback(step_index, t, z)`` after each step (progress bars, trajectory recording)."""


def next_timesteps(timesteps: Sequence[int]) -> list[int]:
    """Each grid point's successor; the last one goes to the clean end (``CLEAN``)."""
    from ..schedule import CLEAN

    return [int(t) for t in timesteps[1:]] + [CLEAN]

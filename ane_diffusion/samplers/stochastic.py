"""The N-step stochastic sampler of Meng et al. (2023).

From grid point t it jumps deterministically two step-lengths, to k, then adds noise back one
step-length, to s, with the forward transition ``q(z_s | z_k)``. The last step is deterministic.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..schedule import CLEAN
from .base import Denoiser, NoiseFn, StepCallback
from .ddim import ddim_step


def renoise(z_k, eps, alpha_k, sigma_k, alpha_s, sigma_s):
    """A draw from q(z_s | z_k) for s noisier than k.

    ``alpha_{s|k} = alpha_s / alpha_k``, ``sigma_{s|k}^2 = sigma_s^2 - alpha_{s|k}^2 sigma_k^2``.
    """
    alpha_sk = alpha_s / alpha_k
    sigma_sk = np.sqrt(np.maximum(sigma_s**2 - alpha_sk**2 * sigma_k**2, 0.0))
    return alpha_sk * z_k + sigma_sk * eps


def sample_stochastic(denoise: Denoiser, z: np.ndarray, timesteps: Sequence[int], schedule,
                      noise: NoiseFn, callback: StepCallback = None) -> np.ndarray:
    grid = [int(t) for t in timesteps] + [CLEAN]
    n = len(timesteps)
    for i in range(n):
        t, s = grid[i], grid[i + 1]
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        x0 = denoise(z, t)
        if i == n - 1:
            z = x0.astype(np.float32)
        else:
            k = grid[min(i + 2, n)]
            alpha_k, sigma_k = schedule.alpha_sigma(k)
            alpha_s, sigma_s = schedule.alpha_sigma(s)
            z_k = ddim_step(x0, z, alpha_t, sigma_t, alpha_k, sigma_k)
            z = renoise(z_k, noise(z.shape), alpha_k, sigma_k, alpha_s, sigma_s).astype(np.float32)
        if callback is not None:
            callback(i, t, z)
    return z

"""Deterministic DDIM (eta = 0), the sampler distilled students are trained for."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..schedule import to_eps
from .base import Denoiser, StepCallback, next_timesteps


def ddim_step(x0, z_t, alpha_t, sigma_t, alpha_s, sigma_s):
    """``z_s = alpha_s x_hat + sigma_s (z_t - alpha_t x_hat) / sigma_t``. Arrays or tensors."""
    return alpha_s * x0 + sigma_s * to_eps(x0, z_t, alpha_t, sigma_t)


def sample_ddim(denoise: Denoiser, z: np.ndarray, timesteps: Sequence[int], schedule,
                callback: StepCallback = None) -> np.ndarray:
    """Run DDIM along ``timesteps`` (noisiest first) and on to the clean end; returns x."""
    for i, (t, s) in enumerate(zip(timesteps, next_timesteps(timesteps))):
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        alpha_s, sigma_s = schedule.alpha_sigma(s)
        x0 = denoise(z, int(t))
        z = ddim_step(x0, z, alpha_t, sigma_t, alpha_s, sigma_s).astype(np.float32)
        if callback is not None:
            callback(i, int(t), z)
    return z

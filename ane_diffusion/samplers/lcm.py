"""Consistency-style multistep sampling, as Latent Consistency Model students need.

Each step predicts the clean sample (with LCM's boundary-condition skip connection, when the
student was trained with one) and re-noises it to the next timestep with fresh noise.
Agrees with diffusers' ``LCMScheduler`` given the same timesteps and noise.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Denoiser, NoiseFn, StepCallback, next_timesteps

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def lcm_timesteps(num_steps: int, original_steps: int = 50, num_train_timesteps: int = 1000) -> np.ndarray:
    """LCM's timesteps: evenly spaced points of its ``original_steps``-point training grid."""
    if not 1 <= num_steps <= original_steps:
        raise ValueError(f"LCM steps must be in 1..{original_steps}, got {num_steps}")
    c = num_train_timesteps // original_steps
    origin = np.arange(1, original_steps + 1) * c - 1
    indices = np.floor(np.linspace(0, len(origin), num=num_steps, endpoint=False)).astype(np.int64)
    return origin[::-1][indices].astype(np.int64)


def lcm_boundary_scalings(t: int, timestep_scaling: float = TIMESTEP_SCALING):
    """``(c_skip, c_out)`` so that ``x = c_skip z + c_out x_hat`` equals z at t = 0."""
    scaled = t * timestep_scaling
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


def sample_lcm(denoise: Denoiser, z: np.ndarray, timesteps: Sequence[int], schedule,
               noise: NoiseFn, boundary_condition: bool = True,
               callback: StepCallback = None) -> np.ndarray:
    for i, (t, s) in enumerate(zip(timesteps, next_timesteps(timesteps))):
        x0 = denoise(z, int(t))
        if boundary_condition:
            c_skip, c_out = lcm_boundary_scalings(int(t))
            x0 = c_skip * z + c_out * x0
        if i == len(timesteps) - 1:
            z = x0.astype(np.float32)
        else:
            alpha_s, sigma_s = schedule.alpha_sigma(s)
            z = (alpha_s * x0 + sigma_s * noise(z.shape)).astype(np.float32)
        if callback is not None:
            callback(i, int(t), z)
    return z

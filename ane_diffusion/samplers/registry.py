"""Sampler names, as the CLI, the Core ML runtime and the Swift bridge spell them."""

from __future__ import annotations

import numpy as np

from ..schedule import trailing_timesteps
from .lcm import lcm_timesteps

SAMPLERS = ("ddim", "stochastic", "lcm", "dpmpp-2m")
"""``ddim``: deterministic, trailing grid; ``stochastic``: the paper's N-step sampler;
``lcm``: consistency multistep; ``dpmpp-2m``: DPM-Solver++(2M) (guided baseline, via diffusers)."""


def get_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return name


def default_timesteps(name: str, num_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """The timestep grid each sampler uses for ``num_steps`` steps."""
    get_sampler(name)
    if name == "lcm":
        return lcm_timesteps(num_steps, num_train_timesteps=num_train_timesteps)
    return trailing_timesteps(num_steps, num_train_timesteps)

"""Few-step samplers over plain numpy arrays.

Every sampler is a short function ``sample_x(denoise, z, timesteps, schedule, ...)`` where
``denoise(z, t) -> x_hat`` is the model (guided or distilled, any backend) already turned into a
clean-sample estimate. Keeping the model behind that callable is what lets the PyTorch backend, the
Core ML backend and the Swift bridge share the exact same update rules.
"""

from .base import Denoiser, NoiseFn, StepCallback
from .ddim import ddim_step, sample_ddim
from .dpm_solver import sample_dpmpp_2m
from .lcm import lcm_boundary_scalings, lcm_timesteps, sample_lcm
from .registry import SAMPLERS, default_timesteps, get_sampler
from .stochastic import renoise, sample_stochastic

__all__ = [
    "Denoiser", "NoiseFn", "StepCallback", "ddim_step", "sample_ddim", "sample_dpmpp_2m",
    "lcm_boundary_scalings", "lcm_timesteps", "sample_lcm", "SAMPLERS", "default_timesteps",
    "get_sampler", "renoise", "sample_stochastic",
]

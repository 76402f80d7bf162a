"""DPM-Solver++(2M), the standard multistep solver of the guided baseline.

Not rewritten here: diffusers' ``DPMSolverMultistepScheduler`` does the work, fed with our
clean-sample estimates (``prediction_type="sample"``), so it needs the ``torch`` extra.
"""

from __future__ import annotations

import numpy as np

from .base import Denoiser, StepCallback


def dpmpp_2m_scheduler(schedule, num_steps: int):
    """The diffusers scheduler for ``schedule`` on a trailing grid of ``num_steps``."""
    try:
        import torch  # noqa: F401
        from diffusers import DPMSolverMultistepScheduler
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("the dpmpp-2m sampler needs PyTorch and diffusers: "
                           "pip install 'ane-diffusion[torch]'") from exc
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=schedule.num_train_timesteps,
        trained_betas=(1 - schedule.alphas_cumprod / np.concatenate([[1.0], schedule.alphas_cumprod[:-1]])).tolist(),
        prediction_type="sample", algorithm_type="dpmsolver++", solver_order=2,
        timestep_spacing="trailing", final_sigmas_type="zero", lower_order_final=True,
    )
    scheduler.set_timesteps(num_steps)
    return scheduler


def dpmpp_2m_timesteps(schedule, num_steps: int) -> np.ndarray:
    return dpmpp_2m_scheduler(schedule, num_steps).timesteps.numpy().astype(np.int64)


def sample_dpmpp_2m(denoise: Denoiser, z: np.ndarray, num_steps: int, schedule,
                    callback: StepCallback = None) -> np.ndarray:
    import torch

    scheduler = dpmpp_2m_scheduler(schedule, num_steps)
    sample = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)).double()
    for i, t in enumerate(scheduler.timesteps):
        x0 = denoise(sample.float().numpy(), int(t))
        sample = scheduler.step(torch.from_numpy(np.asarray(x0, dtype=np.float64)), t, sample).prev_sample
        if callback is not None:
            callback(i, int(t), sample.float().numpy())
    return sample.float().numpy()

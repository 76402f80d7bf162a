"""Torch-side glue shared by both stages: schedule coefficients, x estimates, student bundles.

Every network evaluation during distillation goes through :func:`predict_x0`, which feeds w the
same way the runtime does (:class:`ane_diffusion.guidance.GuidanceEmbedding` into diffusers'
``timestep_cond``) and converts the output with :func:`ane_diffusion.schedule.to_x0`.
"""

from __future__ import annotations

import copy
from typing import Optional

from ..card import ModelCard
from ..guidance import GuidanceEmbedding
from ..schedule import expand_like, to_x0


def alpha_sigma(schedule, t, device):
    """``(alpha, sigma)`` as float32 tensors (B,) on ``device`` for integer timesteps ``t`` (B,)
    (a CPU tensor; :data:`~ane_diffusion.schedule.CLEAN` allowed)."""
    import torch

    alpha, sigma = schedule.alpha_sigma(t.numpy())
    return (torch.as_tensor(alpha, dtype=torch.float32, device=device),
            torch.as_tensor(sigma, dtype=torch.float32, device=device))


def predict_x0(unet, z, t, hidden, alpha, sigma, kind: str, w=None, embedding: Optional["GuidanceEmbedding"] = None):
    """The clean-sample estimate (B, C, H, W) float32 of ``unet`` at ``z`` (B, C, H, W).

    ``t`` (B,) long, ``hidden`` (B, 77, D), ``alpha``/``sigma`` (B,); ``w`` (B,) goes in through
    ``embedding`` when it is set (students), and is ignored otherwise.
    """
    cond = embedding.torch(w) if embedding is not None else None
    out = unet(z, t, encoder_hidden_states=hidden, timestep_cond=cond).sample.float()
    return to_x0(out, z, expand_like(alpha, z), expand_like(sigma, z), kind)


def freeze(unet, dtype=None):
    """The frozen, eval-mode teacher (optionally cast to the mixed-precision dtype to save memory)."""
    import torch

    unet.eval().requires_grad_(False)
    if dtype is None:
        return unet
    return unet.half() if dtype == torch.float16 else unet.bfloat16()


def trainable_copy(unet):
    """A float32, train-mode copy of ``unet`` that will become the student."""
    return copy.deepcopy(unet).float().train().requires_grad_(True)


def student_scheduler_config(teacher_config: dict, prediction_type: str) -> dict:
    """The teacher's scheduler config, switched to DDIM with trailing spacing, a clean final step
    (alpha = 1) and the student's parameterisation: diffusers then samples students correctly too."""
    return {**teacher_config, "_class_name": "DDIMScheduler", "prediction_type": prediction_type,
            "timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False}


def lineage_entry(card: ModelCard, source: str) -> dict:
    """How a card names one ancestor in ``lineage``."""
    return {"source": str(source), "kind": card.kind, "steps": card.steps, "prediction_type": card.prediction_type}

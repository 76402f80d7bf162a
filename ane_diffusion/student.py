"""Turning a teacher UNet into a guidance-conditioned student (stage-1 initialisation).

The student is the teacher's UNet with diffusers' ``time_cond_proj_dim`` hook switched on: the
sinusoidal embedding of w (:mod:`ane_diffusion.guidance`) is projected by a new bias-free linear
layer and added to the time embedding. Every shared weight is copied from the teacher and the new
projection starts at zero, so the untrained student IS the teacher's conditional model.
"""

from __future__ import annotations

DEFAULT_EMBEDDING_DIM = 256


def add_guidance_input(teacher_unet, embedding_dim: int = DEFAULT_EMBEDDING_DIM):
    """A new UNet equal to ``teacher_unet`` plus a zero-initialised guidance-weight input."""
    import torch
    from diffusers import UNet2DConditionModel

    if teacher_unet.config.get("time_cond_proj_dim"):
        raise ValueError("this UNet already has a guidance input (time_cond_proj_dim is set)")
    # "_use_default_values" would make from_config ignore the new setting: drop private keys.
    config = {k: v for k, v in teacher_unet.config.items() if not k.startswith("_")}
    config["time_cond_proj_dim"] = int(embedding_dim)
    student = UNet2DConditionModel.from_config(config)
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    if unexpected or any("cond_proj" not in k for k in missing):
        raise RuntimeError(f"teacher and student UNets differ beyond the guidance input: {missing} {unexpected}")
    with torch.no_grad():
        student.time_embedding.cond_proj.weight.zero_()
    reference = next(teacher_unet.parameters())
    student.to(reference.device)
    return student if reference.dtype == torch.float32 else student.to(reference.dtype)

"""Guided diffusion distillation (Meng et al., CVPR 2023) for Stable-Diffusion-architecture models.

>>> from ane_diffusion.distill import DistillConfig, distill_guidance, distill_progressive
>>> student = distill_guidance(DistillConfig(model="teacher/", data="images/", output="run1"))
>>> phases = distill_progressive(DistillConfig(model=str(student), data="images/", output="run2",
...                                            start_steps=8, target_steps=2))

Modules: :mod:`.config` (settings), :mod:`.targets` (the method's formulas), :mod:`.data`
(manifests, latent and embedding cache), :mod:`.engine` (accelerate, optimiser, EMA, logs),
:mod:`.checkpoint` (pickle-free checkpoints), :mod:`.models` (torch glue), :mod:`.stage1`,
:mod:`.stage2`, :mod:`.decoder` (stage 3: a tiny VAE decoder). The ``python -m ane_diffusion distill``
command is a thin shell around this API.
"""

from .checkpoint import CheckpointError
from .config import DistillConfig, halving_schedule
from .data import DataError
from .stage1 import distill_guidance
from .stage2 import distill_progressive


def distill_decoder(cfg):
    """Stage 3, the tiny decoder: see :func:`ane_diffusion.distill.decoder.distill_decoder`."""
    from .decoder import distill_decoder as run

    return run(cfg)


__all__ = ["CheckpointError", "DataError", "DistillConfig", "distill_decoder", "distill_guidance",
           "distill_progressive",
           "halving_schedule"]

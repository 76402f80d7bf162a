"""Classifier-free guidance and the guidance-weight embedding: defined once, used everywhere.

**Convention.** ``w`` is the paper's guidance weight (Meng et al. 2023): the guided prediction is
``(1 + w) * x_c - w * x_u``. diffusers and Stable Diffusion call ``1 + w`` the
``guidance_scale``; ``w = 0`` is the plain conditional model. LCM students use the same ``w``
(their pipeline embeds ``guidance_scale - 1``), so they load here unchanged.

**Embedding.** A guidance-distilled student takes ``w`` through diffusers'
``UNet2DConditionModel(time_cond_proj_dim=d)`` hook: the input ``timestep_cond`` is the
sinusoidal embedding below of ``w x scale``, projected and added to the time embedding inside the
UNet. The scale is the card's ``guidance_embedding_scale``: 1000 for LCM students (diffusers' LCM
pipeline), :data:`STUDENT_W_SCALE` for students distilled here (issue 11: at 1000, 114 of the 128
frequencies of a 256-wide embedding wrap around many times over w in [0, 6] and read as noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

W_SCALE = 1000.0
"""w is multiplied by this before the sinusoid in LCM students (diffusers' LCM pipeline) and in cards
that name no ``guidance_embedding_scale`` (every student distilled before the field existed)."""

STUDENT_W_SCALE = 1.0
"""The scale of students distilled here: over w in [0, 6] every frequency turns at most once, so the
embedding varies smoothly with w (docs/training.md, "Guidance fidelity")."""


def guidance_scale_from_w(w: float) -> float:
    return 1.0 + w


def w_from_guidance_scale(guidance_scale: float) -> float:
    return guidance_scale - 1.0


def combine(cond, uncond, w):
    """The guided prediction ``(1 + w) * cond - w * uncond`` (linear: eps, v or x alike)."""
    return cond + w * (cond - uncond)


def embedding_frequencies(dim: int) -> np.ndarray:
    """The ``dim // 2`` float32 frequencies of the guidance embedding."""
    if dim < 2:
        raise ValueError(f"guidance embedding size must be >= 2, got {dim}")
    half = dim // 2
    scale = math.log(10000.0) / (half - 1) if half > 1 else 0.0
    return np.exp(np.arange(half, dtype=np.float32) * -scale).astype(np.float32)


def guidance_embedding(w, dim: int, scale: float = W_SCALE) -> np.ndarray:
    """Sinusoidal embedding of ``w x scale``: (B,) -> (B, dim) float32, ``[sin | cos]`` (+ zero pad
    if odd). At ``scale = 1000`` it matches diffusers'
    ``LatentConsistencyModelPipeline.get_guidance_scale_embedding``.
    """
    w = np.atleast_1d(np.asarray(w, dtype=np.float32)) * np.float32(scale)
    angles = w[:, None] * embedding_frequencies(dim)[None, :]
    emb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if dim % 2 == 1:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)


def torch_guidance_embedding(w, dim: int, scale: float = W_SCALE):
    """The same embedding on a torch tensor ``w`` (B,), differentiable and traceable.

    Used inside the Core ML UNet wrapper so that the package takes w itself as an input.
    """
    import torch

    freqs = torch.from_numpy(embedding_frequencies(dim)).to(device=w.device, dtype=torch.float32)
    angles = (w.float() * float(scale))[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


@dataclass(frozen=True)
class GuidanceEmbedding:
    """A student's w input: embedding width ``dim`` and the factor ``scale`` w is multiplied by
    (both from its card: :attr:`ane_diffusion.card.ModelCard.guidance_embedding`)."""

    dim: int
    scale: float = W_SCALE

    def numpy(self, w) -> np.ndarray:
        """(B,) -> (B, dim) float32."""
        return guidance_embedding(w, self.dim, self.scale)

    def torch(self, w):
        """(B,) torch tensor -> (B, dim) float32 on its device."""
        return torch_guidance_embedding(w, self.dim, self.scale)

"""Classifier-free guidance and the guidance-weight embedding: defined once, used everywhere.

**Convention.** ``w`` is the paper's guidance weight (Meng et al. 2023): the guided prediction is
``(1 + w) * x_c - w * x_u``. diffusers and Stable Diffusion call ``1 + w`` the
``guidance_scale``; ``w = 0`` is the plain conditional model. LCM students use the same ``w``
(their pipeline embeds ``guidance_scale - 1``), so they load here unchanged.

**Embedding.** A guidance-distilled student takes ``w`` through diffusers'
``UNet2DConditionModel(time_cond_proj_dim=d)`` hook: the input ``timestep_cond`` is the
sinusoidal embedding below, projected and added to the time embedding inside the UNet.
"""

from __future__ import annotations

import math

import numpy as np

W_SCALE = 1000.0
"""w is multiplied by this before the sinusoid, as diffusers' LCM pipeline does."""


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


def guidance_embedding(w, dim: int) -> np.ndarray:
    """Sinusoidal embedding of w: (B,) -> (B, dim) float32, ``[sin | cos]`` (+ zero pad if odd).

    Matches diffusers' ``LatentConsistencyModelPipeline.get_guidance_scale_embedding``.
    """
    w = np.atleast_1d(np.asarray(w, dtype=np.float32)) * W_SCALE
    angles = w[:, None] * embedding_frequencies(dim)[None, :]
    emb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if dim % 2 == 1:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)


def torch_guidance_embedding(w, dim: int):
    """The same embedding on a torch tensor ``w`` (B,), differentiable and traceable.

    Used inside the Core ML UNet wrapper so that the package takes w itself as an input.
    """
    import torch

    freqs = torch.from_numpy(embedding_frequencies(dim)).to(device=w.device, dtype=torch.float32)
    angles = w.float()[:, None] * W_SCALE * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb

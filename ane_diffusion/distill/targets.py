"""The regression targets and the loss weight of guided distillation: each formula once.

* :func:`guided_target`: stage 1's target, the guided teacher's clean-sample estimate
  ``(1 + w) x_c - w x_u`` (the combination itself is :func:`ane_diffusion.guidance.combine`).
* :func:`two_step_target`: stage 2's target ``x_tilde``, the x that makes ONE student DDIM step
  from t land exactly where two teacher DDIM steps ``t -> t' -> t''`` landed.
* :func:`truncated_snr_weight` and :func:`weighted_mse`: the loss ``max(SNR, 1) * ||x_hat - x||^2``.

Plain arithmetic on arrays or tensors; per-sample coefficients are (B,) and are broadcast with
:func:`ane_diffusion.schedule.expand_like`.
"""

from __future__ import annotations

from ..guidance import combine
from ..schedule import expand_like, to_x0


def guided_target(out_cond, out_uncond, z, alpha, sigma, w, kind: str):
    """The guided teacher's x estimate from its conditional and unconditional outputs.

    ``out_*``: (B, C, H, W) teacher outputs in its own parameterisation ``kind``; ``z``: (B, C, H, W);
    ``alpha``, ``sigma``, ``w``: (B,). Guidance is linear, so combining outputs then converting
    equals converting then combining.
    """
    alpha, sigma, w = (expand_like(c, z) for c in (alpha, sigma, w))
    return to_x0(combine(out_cond, out_uncond, w), z, alpha, sigma, kind)


def two_step_target(z_t, z_end, alpha_t, sigma_t, alpha_end, sigma_end):
    """``x_tilde = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)``.

    ``z_t``: the student's input at t; ``z_end``: the teacher's two-step endpoint at t''. When t'' is
    the clean end (alpha 1, sigma 0) this is ``z_end`` itself, the teacher's final x estimate.
    Coefficients (B,) or scalars.
    """
    alpha_t, sigma_t, alpha_end, sigma_end = (expand_like(c, z_t) for c in (alpha_t, sigma_t, alpha_end, sigma_end))
    ratio = sigma_end / sigma_t
    return (z_end - ratio * z_t) / (alpha_end - ratio * alpha_t)


def truncated_snr_weight(alpha, sigma):
    """``omega = max(alpha^2 / sigma^2, 1)``: x-space loss weight, equal to ``max(x_mse, eps_mse)``."""
    snr = alpha**2 / sigma**2
    return snr.clamp(min=1.0) if hasattr(snr, "clamp") else snr.clip(min=1.0)


def sqrt_truncated_snr_weight(alpha, sigma):
    """``sqrt(max(SNR, 1))``: between the x-space and the eps-space loss at low noise."""
    return truncated_snr_weight(alpha, sigma) ** 0.5


def x_weight(alpha, sigma):
    """Weight 1 at every noise level: the plain x-space MSE."""
    return alpha * 0 + 1


LOSS_WEIGHTINGS = {"truncated_snr": truncated_snr_weight, "sqrt_truncated_snr": sqrt_truncated_snr_weight,
                   "x": x_weight}
"""Stage-1 loss weights by name (``DistillConfig.loss_weighting``); each maps (alpha, sigma) (B,) -> (B,)."""


def weighted_mse(x_hat, target, weight):
    """Mean over the batch of ``weight_i * mean_pixels((x_hat_i - target_i)^2)``; weight (B,)."""
    per_sample = ((x_hat - target) ** 2).reshape(x_hat.shape[0], -1).mean(1)
    return (weight * per_sample).mean()

"""Noise schedules and prediction parameterisations: the one place for these formulas.

A noisy latent is ``z_t = alpha_t * x + sigma_t * eps``. Two schedules are provided:

* :class:`DiscreteSchedule`: Stable Diffusion's 1000-step schedule (``scaled_linear`` betas and
  the other diffusers beta schedules), indexed by integer model timestep ``0 .. T-1``.
* :class:`CosineSchedule`: the continuous cosine schedule of the pixel-space papers, indexed by a
  real model timestep in ``[0, T]``.

Both use the timestep :data:`CLEAN` (``-1``) for the end of every sampling chain, where
``alpha = 1`` and ``sigma = 0``: a deterministic sampler's last step lands on its ``x`` estimate.

The parameterisation helpers (:func:`to_x0`, :func:`to_eps`, :func:`from_x0`) are plain
arithmetic, so they work on numpy arrays and torch tensors alike; training, runtime and tests all
call them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

CLEAN = -1
"""Timestep of the clean end of a chain (alpha = 1, sigma = 0)."""

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
"""diffusers' names for eps-, v- and x-prediction."""


def trailing_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """The "trailing" grid of ``num_steps`` model timesteps, noisiest first.

    Same as diffusers' ``timestep_spacing="trailing"``: the first step starts at ``T - 1`` (pure
    noise for Stable Diffusion), never at an interior timestep. ``num_steps = 4`` gives
    ``[999, 749, 499, 249]``. Grids of n and 2n steps are nested when ``T`` is divisible by 2n.
    """
    if num_steps < 1 or num_steps > num_train_timesteps:
        raise ValueError(f"steps must be in 1..{num_train_timesteps}, got {num_steps}")
    # diffusers writes np.arange(T, 0, -T/n), which for some n (61, 103, ...) yields n + 1 points
    # ending at -1 through float rounding; this counts exactly n points and is otherwise identical.
    grid = np.round(num_train_timesteps - np.arange(num_steps) * (num_train_timesteps / num_steps)) - 1
    return grid.astype(np.int64)


@dataclass(frozen=True)
class DiscreteSchedule:
    """A discrete schedule given by its cumulative products ``abar_i = prod_{j<=i} (1 - beta_j)``."""

    alphas_cumprod: np.ndarray

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @classmethod
    def scaled_linear(
        cls, beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000
    ) -> "DiscreteSchedule":
        """Stable Diffusion's schedule: betas linear in sqrt-space."""
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
        return cls.from_betas(betas)

    @classmethod
    def from_betas(cls, betas: np.ndarray) -> "DiscreteSchedule":
        return cls(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))

    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any]) -> "DiscreteSchedule":
        """Build from a diffusers ``scheduler_config.json`` (any scheduler class)."""
        kind = config.get("beta_schedule", "scaled_linear")
        n = int(config.get("num_train_timesteps", 1000))
        start = float(config.get("beta_start", 0.00085))
        end = float(config.get("beta_end", 0.012))
        if config.get("trained_betas") is not None:
            return cls.from_betas(np.asarray(config["trained_betas"], dtype=np.float64))
        if kind == "scaled_linear":
            return cls.scaled_linear(start, end, n)
        if kind == "linear":
            return cls.from_betas(np.linspace(start, end, n, dtype=np.float64))
        if kind == "squaredcos_cap_v2":
            u = np.arange(n + 1, dtype=np.float64) / n
            abar = np.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
            return cls.from_betas(np.minimum(1 - abar[1:] / abar[:-1], 0.999))
        raise ValueError(f"unsupported beta_schedule {kind!r} in the scheduler config")

    def to_config(self) -> dict:
        """A diffusers scheduler config that rebuilds this schedule (scaled_linear defaults)."""
        return {"num_train_timesteps": self.num_train_timesteps, "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "beta_end": 0.012}

    def alpha_sigma(self, t) -> tuple[np.ndarray, np.ndarray]:
        """``(alpha_t, sigma_t)`` for integer timesteps; :data:`CLEAN` gives ``(1, 0)``."""
        t = np.asarray(t, dtype=np.int64)
        if np.any((t < CLEAN) | (t >= self.num_train_timesteps)):
            raise ValueError(f"timestep out of range [-1, {self.num_train_timesteps - 1}]: {t}")
        abar = np.where(t == CLEAN, 1.0, self.alphas_cumprod[np.clip(t, 0, None)])
        return np.sqrt(abar), np.sqrt(1.0 - abar)

    def log_snr(self, t) -> np.ndarray:
        alpha, sigma = self.alpha_sigma(t)
        with np.errstate(divide="ignore"):
            return np.log(alpha**2) - np.log(sigma**2)


@dataclass(frozen=True)
class CosineSchedule:
    """Continuous cosine schedule (Nichol & Dhariwal offset ``s = 0.008``) on ``t in [0, T]``."""

    num_train_timesteps: int = 1000
    offset: float = 0.008

    def alpha_sigma(self, t) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        u = np.clip(t / self.num_train_timesteps, 0.0, 1.0)
        s = self.offset
        alpha = np.cos((u + s) / (1 + s) * math.pi / 2) / math.cos(s / (1 + s) * math.pi / 2)
        alpha = np.where(t <= CLEAN, 1.0, np.clip(alpha, 0.0, 1.0))
        return alpha, np.sqrt(1.0 - alpha**2)

    def log_snr(self, t) -> np.ndarray:
        alpha, sigma = self.alpha_sigma(t)
        with np.errstate(divide="ignore"):
            return np.log(alpha**2) - np.log(sigma**2)


def expand_like(coefficient, like):
    """Reshape a per-sample coefficient (B,) or scalar to broadcast over ``like`` (B, ...)."""
    if np.ndim(coefficient) == 0:
        return coefficient
    shape = (-1,) + (1,) * (like.ndim - 1)
    return coefficient.reshape(shape)


def _check(kind: str) -> None:
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {kind!r}; expected one of {PREDICTION_TYPES}")


def to_x0(prediction, z, alpha, sigma, kind: str):
    """The clean-sample estimate ``x_hat`` from a model output of the given parameterisation."""
    _check(kind)
    if kind == "epsilon":
        return (z - sigma * prediction) / alpha
    if kind == "v_prediction":
        return alpha * z - sigma * prediction
    return prediction


def to_eps(x0, z, alpha, sigma):
    """The noise estimate implied by ``x_hat`` at ``z``: ``(z - alpha x_hat) / sigma``."""
    return (z - alpha * x0) / sigma


def eps_from_prediction(prediction, z, alpha, sigma, kind: str):
    """The noise estimate from a model output of any parameterisation, without dividing by sigma.

    ``v = alpha eps - sigma x`` and ``z = alpha x + sigma eps`` give ``eps = sigma z + alpha v``
    (Salimans & Ho 2022, "Progressive Distillation", appendix D): exact where ``sigma`` is small,
    unlike ``to_eps(to_x0(v))``, which divides by it (float16 graphs lose digits there). An
    epsilon output is returned as is; an x0 output goes through :func:`to_eps`.
    """
    _check(kind)
    if kind == "epsilon":
        return prediction
    if kind == "v_prediction":
        return sigma * z + alpha * prediction
    return to_eps(prediction, z, alpha, sigma)


def from_x0(x0, z, alpha, sigma, kind: str):
    """The model output (eps, v or x) whose clean-sample estimate is ``x0`` at ``z``."""
    _check(kind)
    if kind == "sample":
        return x0
    eps = to_eps(x0, z, alpha, sigma)
    if kind == "epsilon":
        return eps
    return alpha * eps - sigma * x0


def add_noise(x0, eps, alpha, sigma):
    """The forward process ``z_t = alpha_t x + sigma_t eps``."""
    return alpha * x0 + sigma * eps

"""Nothing silent: checks of what a run is given (numbers) and of what each stage produces (finite values).

Two kinds of check live here, each raising an error whose message is one line:

* **request values** (:func:`whole_number`, :func:`finite_number`, :func:`image_side`): a step count
  of 2.5, a seed of 2.5, a w of NaN or a side of 100000 pixels are refused instead of run (or
  silently rounded). Errors are :class:`InputValueError` (a ``ValueError``).
* **stage outputs** (:func:`require_finite`): the text embeddings, every denoiser output, the final
  latents and the decoded image are checked for NaN / inf on every backend. A non-finite value
  would otherwise become an all-black PNG with exit code 0. :class:`NonFiniteError` names the
  component and the step, and :func:`remedy` suggests what to do about it. The best-known cause is
  a float16 VAE decoder whose activations overflow (Stable Diffusion's VAE is the classic case, see
  the fp16-fix VAE discussions in diffusers); its remedies are a float32 decoder: ``--vae-precision
  float32`` on the torch backend, ``convert --vae-decoder-precision float32`` for a Core ML export.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import numpy as np

MAX_IMAGE_SIDE = 4096
"""Largest image side (pixels) a request may ask for: SD-1.5 latents of 512 x 512, beyond what any
supported device holds in memory for the UNet's attention; larger requests are refused up front."""

MAX_BATCH_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
"""Largest number of pixels one prompt's images may have together (they run as one batch): one
4096 x 4096 image, or 64 of 512 x 512. ``--num-images 1000000000`` is refused, not allocated."""

MAX_IMAGES = 65536
"""Most images one prompt may ask for, whatever their size (checked before output paths are made);
the pixel budget :data:`MAX_BATCH_PIXELS` is the finer limit."""

SEED_LIMIT = 2 ** 32
"""Seeds are unsigned 32-bit integers (numpy's legacy MT19937, see :mod:`ane_diffusion.noise`)."""


class InputValueError(ValueError):
    """A number in a request that cannot be used (wrong type, not finite, out of range)."""


class NonFiniteError(ValueError):
    """A stage produced NaN or inf; the message names the component, the step and a remedy."""


# -- request values ---------------------------------------------------------------------------------
def whole_number(value, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``value`` as an int: ints (and integral floats such as 4.0) pass; 2.5, True, "4" and NaN are refused.

    Raises :class:`InputValueError` naming ``name`` and what was given.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputValueError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    else:
        if not math.isfinite(float(value)) or not float(value).is_integer():
            raise InputValueError(f"{name} must be a whole number, got {value!r}")
        number = int(value)
    if minimum is not None and number < minimum:
        raise InputValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and number > maximum:
        raise InputValueError(f"{name} must be <= {maximum}, got {value!r}")
    return number


def finite_number(value, name: str) -> float:
    """``value`` as a finite float; NaN, inf, bools and strings are refused (:class:`InputValueError`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InputValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def image_side(value, name: str, factor: int, default: int) -> int:
    """An image side in pixels: ``None`` takes ``default``; otherwise a positive multiple of ``factor``
    no larger than :data:`MAX_IMAGE_SIDE`."""
    if value is None:
        return int(default)
    side = whole_number(value, name)
    if side <= 0:
        raise InputValueError(f"{name} must be positive, got {value!r}")
    if side > MAX_IMAGE_SIDE:
        raise InputValueError(f"{name} {side} is larger than the {MAX_IMAGE_SIDE}-pixel limit a side")
    if side % factor:
        raise InputValueError(f"{name} {side} is not a multiple of {factor} (VAE factor x UNet downsampling)")
    return side


def image_count(value) -> int:
    """``--num-images`` as an int in ``1 ..`` :data:`MAX_IMAGES` (:class:`InputValueError` otherwise)."""
    return whole_number(value, "--num-images", minimum=1, maximum=MAX_IMAGES)


def batch_pixels(count: int, height: int, width: int) -> None:
    """Refuse ``count`` images of ``height`` x ``width`` when together they exceed :data:`MAX_BATCH_PIXELS`."""
    if count * height * width > MAX_BATCH_PIXELS:
        most = max(MAX_BATCH_PIXELS // (height * width), 1)
        raise InputValueError(f"--num-images {count} at {width}x{height} is more than one batch can hold "
                              f"({MAX_BATCH_PIXELS} pixels): use at most {most} and run again for more")


def seeds(seed, count: int) -> int:
    """Check that images ``seed .. seed + count - 1`` all have valid seeds; returns ``seed`` as an int.

    The message names the seed that was typed, not the first one out of range.
    """
    first = whole_number(seed, "seed")
    if not 0 <= first < SEED_LIMIT:
        raise InputValueError(f"seed must be in [0, {SEED_LIMIT - 1}], got {seed!r}")
    if first + count > SEED_LIMIT:
        raise InputValueError(f"seed {seed!r} with {count} images needs seeds up to {first + count - 1}, past the "
                              f"largest seed {SEED_LIMIT - 1}: use a seed <= {SEED_LIMIT - count}")
    return first


# -- stage outputs ----------------------------------------------------------------------------------
def describe_non_finite(array: np.ndarray) -> str:
    nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    parts = [f"{nan} NaN" if nan else "", f"{inf} inf" if inf else ""]
    return " and ".join(p for p in parts if p) + f" of {array.size} values"


def require_finite(array, what: str, remedy_text: str = "") -> np.ndarray:
    """Return ``array`` unchanged if every value is finite, else raise :class:`NonFiniteError`:
    ``"<what> is not finite (3 NaN of 1024 values): <remedy>"``."""
    values = np.asarray(array)
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        tail = f": {remedy_text}" if remedy_text else ""
        raise NonFiniteError(f"{what} is not finite ({describe_non_finite(values)}){tail}")
    return array


COMPONENT_LABELS = {"text_encoder": "text encoder", "unet": "UNet", "vae_decoder": "VAE decoder",
                    "vae_encoder": "VAE encoder"}


def check_output(array, backend, component: str, what: str) -> np.ndarray:
    """The check each pipeline stage runs on ``backend``'s output of ``component``: finite values
    (:func:`require_finite`), and no float16 overflow inside the component when the backend can see
    one (``backend.internal_overflow(component)``: the Core ML backend's numpy executor). ``what``
    names the output and the step, e.g. "the UNet's output at denoising step 2 (timestep 499)"."""
    text = remedy(component, backend)
    require_finite(array, what, text)
    inside = getattr(backend, "internal_overflow", lambda _component: None)(component)
    if inside:
        raise NonFiniteError(f"{what} cannot be trusted: float16 arithmetic overflowed inside the "
                             f"{COMPONENT_LABELS.get(component, component)} at {inside}: {text}")
    return array


def remedy(component: str, backend) -> str:
    """What to try when ``component`` (``text_encoder``, ``unet``, ``vae_decoder``, ``vae_encoder``)
    of ``backend`` produced NaN / inf. ``backend.precision(component)`` names the compute precision
    (``float16`` / ``float32``) when the backend knows it."""
    precision = getattr(backend, "precision", lambda _name: None)(component)
    name = getattr(backend, "name", "")
    if component == "vae_decoder" and precision == "float16":
        if name == "coreml":
            return ("float16 VAE decoders overflow on some latents: convert a float32 decoder with `convert "
                    "--components vae_decoder --vae-decoder-precision float32 --force` into this export")
        return "float16 VAE decoders overflow on some latents: pass --vae-precision float32"
    if precision == "float16":
        how = ("convert the export again with --precision float32" if name == "coreml"
               else "run in float32 (--device cpu)")
        return f"its float16 activations may overflow ({how}), or its weights hold NaN/inf (check the model)"
    return "its weights probably hold NaN/inf: check or re-create the model"


__all__ = ["InputValueError", "MAX_BATCH_PIXELS", "MAX_IMAGES", "MAX_IMAGE_SIDE", "NonFiniteError", "SEED_LIMIT",
           "batch_pixels", "check_output", "finite_number", "image_count", "image_side", "remedy", "require_finite",
           "seeds", "whole_number"]

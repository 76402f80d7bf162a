"""Validating the distribution distance's feature space on controls it must rank.

A Frechet distance is only worth reporting if its features see the damage that matters. The
controls: the real-vs-real floor (two independent draws of real images of the same prompts), and
two damaged copies of the second draw: Gaussian-blurred (:data:`BLUR_RADIUS` px) and colour-shifted
(:data:`COLOUR_SHIFT` added to R, G, B). Both must score at least :data:`MIN_CONTROL_RATIO` times
the floor, and at least :data:`MIN_RELATIVE_SHIFT` of the real features' total variance (so that a
zero floor, e.g. features that only count classes, does not validate a change nobody can see);
otherwise the features cannot tell damaged images from real ones and the harness marks the
distance as not validated.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .frechet import frechet_distance_features

BLUR_RADIUS = 1.0
COLOUR_SHIFT = (20, 0, -20)
MIN_CONTROL_RATIO = 3.0
MIN_RELATIVE_SHIFT = 0.01


def blurred(images: np.ndarray, radius: float = BLUR_RADIUS) -> np.ndarray:
    """uint8 (N, H, W, 3) -> the same, Gaussian-blurred by ``radius`` pixels (PIL)."""
    from PIL import Image, ImageFilter

    return np.stack([np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(radius))) for x in images])


def colour_shifted(images: np.ndarray, shift=COLOUR_SHIFT) -> np.ndarray:
    """uint8 (N, H, W, 3) -> the same with ``shift`` (3,) added to the channels, clipped to 0..255."""
    return np.clip(images.astype(np.int16) + np.asarray(shift, dtype=np.int16), 0, 255).astype(np.uint8)


def validate_features(features: Callable[[np.ndarray], np.ndarray], real: np.ndarray, real_again: np.ndarray,
                      min_ratio: float = MIN_CONTROL_RATIO) -> dict:
    """Frechet distances of the controls against ``features(real)``: ``{"floor", "blurred",
    "colour_shifted", "ratios", "min_ratio", "total_variance", "validated", ...}``; ``validated`` when
    both damaged copies score at least ``min_ratio`` x the floor and :data:`MIN_RELATIVE_SHIFT` x the
    total variance (trace of the covariance) of the real features."""
    reference = features(real)
    total_variance = float(np.trace(np.atleast_2d(np.cov(np.asarray(reference, np.float64), rowvar=False))))
    scores = {"floor": frechet_distance_features(features(real_again), reference),
              "blurred": frechet_distance_features(features(blurred(real_again)), reference),
              "colour_shifted": frechet_distance_features(features(colour_shifted(real_again)), reference)}
    floor = max(scores["floor"], 1e-12)
    ratios = {name: scores[name] / floor for name in ("blurred", "colour_shifted")}
    visible = all(scores[name] >= MIN_RELATIVE_SHIFT * total_variance for name in ratios)
    return {**scores, "ratios": ratios, "min_ratio": min_ratio, "total_variance": total_variance,
            "min_relative_shift": MIN_RELATIVE_SHIFT,
            "settings": {"blur_radius": BLUR_RADIUS, "colour_shift": list(COLOUR_SHIFT)},
            "validated": bool(visible and all(r >= min_ratio for r in ratios.values()))}


__all__ = ["BLUR_RADIUS", "COLOUR_SHIFT", "MIN_CONTROL_RATIO", "MIN_RELATIVE_SHIFT", "blurred", "colour_shifted",
           "validate_features"]

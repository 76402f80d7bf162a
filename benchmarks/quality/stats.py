"""Accuracy with 95% bootstrap intervals, resampling prompts (the unit the images cluster in).

Images of one prompt share the caption and so their errors: resampling images alone would make the
interval too narrow. :func:`accuracy_with_intervals` draws the prompts with replacement (a cluster
bootstrap, Efron & Tibshirani 1993, ch. 8) and reports the percentile interval of each attribute's
and of all five attributes' accuracy.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ane_diffusion.demo.shapes import Scene

from .evaluator import scene_labels

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


def correctness(predictions: dict[str, np.ndarray], scenes: Sequence[Scene],
                classes: dict[str, list[str]] | None = None) -> dict[str, np.ndarray]:
    """Per image (N,) bool: is each attribute read as the prompt's, and ``"all"`` five at once."""
    labels = scene_labels(scenes, classes)
    correct = {name: np.asarray(predictions[name]) == labels[name] for name in labels}
    correct["all"] = np.logical_and.reduce(list(correct.values()))
    return correct


def bootstrap_interval(correct: np.ndarray, groups: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                       confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of ``correct`` (N,) when the ``groups`` (N,) are resampled
    with replacement. Raises ValueError on empty or mismatched input."""
    correct, groups = np.asarray(correct, dtype=np.float64), np.asarray(groups)
    if correct.shape != groups.shape or correct.size == 0:
        raise ValueError(f"need equal non-empty (N,) arrays, got {correct.shape} and {groups.shape}")
    names, index = np.unique(groups, return_inverse=True)
    sums = np.bincount(index, weights=correct, minlength=len(names))
    counts = np.bincount(index, minlength=len(names)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(samples, len(names)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def accuracy_with_intervals(correct: dict[str, np.ndarray], groups: np.ndarray, **kwargs) -> dict[str, dict]:
    """``{name: {"accuracy": mean, "interval": [low, high]}}`` for every entry of :func:`correctness`."""
    return {name: {"accuracy": float(np.mean(c)), "interval": list(bootstrap_interval(c, groups, **kwargs))}
            for name, c in correct.items()}


__all__ = ["BOOTSTRAP_SAMPLES", "CONFIDENCE", "accuracy_with_intervals", "bootstrap_interval", "correctness"]

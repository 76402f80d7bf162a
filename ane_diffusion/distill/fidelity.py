"""Guidance fidelity: does a student follow the guided teacher at EVERY guidance weight w?

A guidance-distilled student takes w as an input. A student that learned one guidance strength
(the failure mode of issue 11) still scores well at that strength, so accuracy alone cannot see
it; this module compares whole w sweeps instead. Inputs are the images (or x estimates) of a
student and of its teacher for the same prompts and seeds at each w of a sweep:

* ``distance[i][j]``: mean absolute difference between the student at ``ws[i]`` and the teacher at
  ``ws[j]`` (same prompts, same seeds), in the inputs' units (0-255 for uint8 images);
* ``response``: mean absolute change from the first w (usually 0) to each w, student and teacher;
* the verdict :func:`w_fidelity` ``["passed"]``: for each w the student is closest to the teacher
  at the SAME w, and the student's change from the first to the last w is at least ``min_ratio``
  of the teacher's (issue 11's targets: nearest at every w of {0, 1, 3, 6}; ratio >= 0.8).

A model that ignores w fails both (every row of ``distance`` has the same nearest column; its
response is 0). Plain numpy; used by the stage-1 tests, the quality harness and the recipe trials.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

MIN_RESPONSE_RATIO = 0.8
"""Default bar: the student's change from the first to the last w, relative to the teacher's."""


def _stack(by_w: Mapping[float, np.ndarray], ws: Sequence[float]) -> np.ndarray:
    missing = [w for w in ws if w not in by_w]
    if missing:
        raise ValueError(f"no outputs at w = {missing}")
    arrays = [np.asarray(by_w[w], dtype=np.float64) for w in ws]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"outputs differ in shape across w: {[a.shape for a in arrays]}")
    stacked = np.stack(arrays)
    if not np.isfinite(stacked).all():
        raise ValueError("outputs contain NaN or infinity")
    return stacked


def mean_abs_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two equally shaped arrays (same prompts and seeds, same order)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).mean())


def w_response(by_w: Mapping[float, np.ndarray], ws: Sequence[float] | None = None) -> dict[float, float]:
    """Mean absolute change of the outputs from ``ws[0]`` to each w: ``{w: distance}``."""
    ws = list(ws if ws is not None else sorted(by_w))
    stacked = _stack(by_w, ws)
    return {w: float(np.abs(stacked[i] - stacked[0]).mean()) for i, w in enumerate(ws)}


def w_fidelity(student: Mapping[float, np.ndarray], teacher: Mapping[float, np.ndarray],
               ws: Sequence[float] | None = None, min_ratio: float = MIN_RESPONSE_RATIO) -> dict:
    """Compare a student's w sweep with its teacher's (same prompts and seeds at every w).

    ``student`` / ``teacher``: ``{w: array}`` with equally shaped arrays, e.g. uint8 images
    (N, H, W, 3) or x estimates (N, C, H, W). ``ws``: the sweep (default: the student's w values,
    sorted); the response ratio is measured from ``ws[0]`` to ``ws[-1]``. Returns a JSON-ready dict:
    ``ws``, ``distance`` (len(ws) x len(ws), student row, teacher column), ``nearest_teacher_w``
    (per student w), ``nearest_ok``, ``student_response`` / ``teacher_response`` ({w: change from
    ws[0]}), ``response_ratio``, ``min_ratio`` and ``passed``. Raises ValueError on missing w,
    mismatched shapes or non-finite values.
    """
    ws = [float(w) for w in (ws if ws is not None else sorted(student))]
    if len(ws) < 2:
        raise ValueError(f"a w sweep needs at least two values, got {ws}")
    s, t = _stack(student, ws), _stack(teacher, ws)
    if s.shape != t.shape:
        raise ValueError(f"student and teacher outputs differ in shape: {s.shape[1:]} vs {t.shape[1:]}")
    distance = [[float(np.abs(s[i] - t[j]).mean()) for j in range(len(ws))] for i in range(len(ws))]
    nearest = [ws[int(np.argmin(row))] for row in distance]
    student_response = {w: float(np.abs(s[i] - s[0]).mean()) for i, w in enumerate(ws)}
    teacher_response = {w: float(np.abs(t[i] - t[0]).mean()) for i, w in enumerate(ws)}
    ratio = student_response[ws[-1]] / teacher_response[ws[-1]] if teacher_response[ws[-1]] > 0 else float("nan")
    nearest_ok = all(n == w for n, w in zip(nearest, ws))
    return {"ws": ws, "distance": distance, "nearest_teacher_w": nearest, "nearest_ok": nearest_ok,
            "student_response": {str(w): v for w, v in student_response.items()},
            "teacher_response": {str(w): v for w, v in teacher_response.items()},
            "response_ratio": ratio, "min_ratio": min_ratio,
            "passed": bool(nearest_ok and np.isfinite(ratio) and ratio >= min_ratio)}


__all__ = ["MIN_RESPONSE_RATIO", "mean_abs_distance", "w_fidelity", "w_response"]

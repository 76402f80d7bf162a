"""The w sweep: the same prompts and seeds at several guidance weights, teacher beside students.

:func:`sweep_images` renders one model at every w of a sweep; :func:`fidelity_table` compares each
student's sweep with the teacher's (:func:`ane_diffusion.distill.fidelity.w_fidelity`): the mean
image distance to the teacher at the same w and at the other w, the change from w = 0, and the
verdict (closest to the teacher at the same w everywhere; change from the first to the last w at
least 0.8 of the teacher's).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from ane_diffusion.distill.fidelity import MIN_RESPONSE_RATIO, w_fidelity

DEFAULT_WS = (0.0, 1.0, 3.0, 6.0)


def sweep_images(pipe, prompts: Sequence[str], ws: Sequence[float], steps: int, seed: int,
                 images_per_prompt: int, sampler: str = "ddim", clamp: bool = False) -> dict[float, list]:
    """``{w: PIL images}`` of one loaded pipeline: ``images_per_prompt`` images per prompt,
    prompt-major, each with its own noise (:mod:`.noise`), the same noise at every w; ``clamp``:
    x estimates clipped to the card's latent range (``Settings.clamp``)."""
    from ane_diffusion.pipeline import Settings

    from .noise import text_to_image_distinct

    out = {}
    for w in ws:
        settings = Settings(steps=steps, w=float(w), sampler=sampler, seed=seed, num_images=images_per_prompt,
                            clamp=clamp)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="this student was distilled for")
            out[float(w)] = text_to_image_distinct(pipe, list(prompts), settings).images
    return out


def as_arrays(by_w: dict[float, list]) -> dict[float, np.ndarray]:
    """PIL images per w -> uint8 arrays (N, H, W, 3) per w."""
    return {w: np.stack([np.asarray(image.convert("RGB")) for image in images]) for w, images in by_w.items()}


def fidelity_table(teacher: dict[float, np.ndarray], students: dict[str, dict[float, np.ndarray]],
                   ws: Sequence[float] = DEFAULT_WS, min_ratio: float = MIN_RESPONSE_RATIO) -> dict:
    """``{student label: w_fidelity(...)}`` plus ``"teacher"``: its own change from ``ws[0]``."""
    table = {label: w_fidelity(sweep, teacher, ws, min_ratio) for label, sweep in students.items()}
    first = np.asarray(teacher[float(ws[0])], dtype=np.float64)
    table["teacher"] = {"response": {str(w): float(np.abs(np.asarray(teacher[float(w)], np.float64) - first).mean())
                                     for w in ws}}
    return table


def markdown_fidelity(table: dict, ws: Sequence[float] = DEFAULT_WS) -> str:
    """One row per student: distance to the teacher at each teacher w (same-w cell in bold), change
    from the first w, response ratio and verdict."""
    wcols = [f"{w:g}" for w in ws]
    header = ["student", "at w", *[f"to teacher w={c}" for c in wcols], "change from w=" + wcols[0],
              "teacher change"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    teacher_response = table["teacher"]["response"]
    verdicts = []
    for label, result in table.items():
        if label == "teacher":
            continue
        for i, w in enumerate(result["ws"]):
            cells = [f"**{d:.1f}**" if j == i else f"{d:.1f}" for j, d in enumerate(result["distance"][i])]
            lines.append(f"| {label} | {w:g} | " + " | ".join(cells) +
                         f" | {result['student_response'][str(w)]:.1f} | {teacher_response[str(w)]:.1f} |")
        verdicts.append(f"- {label}: {'PASS' if result['passed'] else 'FAIL'} (closest to the teacher at the same w: "
                        f"{'yes' if result['nearest_ok'] else 'no, nearest ' + str(result['nearest_teacher_w'])}; "
                        f"change w={wcols[0]}->{wcols[-1]} is {result['response_ratio']:.2f} of the teacher's, "
                        f"needs >= {result['min_ratio']:.2f})")
    return "\n".join(lines + [""] + verdicts)


__all__ = ["DEFAULT_WS", "as_arrays", "fidelity_table", "markdown_fidelity", "sweep_images"]

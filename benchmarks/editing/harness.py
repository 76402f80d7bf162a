"""The editing sweep: image-to-image and inpainting on real scenes, judged by the attribute evaluator.

**Cases** (:mod:`benchmarks.editing.cases`): ``--num-scenes`` distinct train-split scenes rendered
at 32x32 without jitter; each changes one attribute (colour for half of them, shape for the other
half) into a valid, not held-out value; the prompt is the source's full caption with that one word
changed. Every row sees the same cases and the same noise seed per case (``seed + case index``).

**Image-to-image rows**: each student of ``--models`` sampled on its own grid (its card's step
count N) at strength k/N for k in ``--edit-steps`` (2, 3, 4; k <= N), so that exactly k steps of its
grid run: the 8-step student at 0.25 / 0.375 / 0.5, the 4-step student at 0.5 / 0.75 / 1.0. The guided
teacher (``--teacher``, batch-2 classifier-free guidance at w) with DDIM at ``--teacher-steps``
(16, 64) and ``--teacher-strength`` (0.5): 8 and 32 steps run.

**Inpainting rows**: the mask is the object's bounding box dilated by ``--dilate`` pixels; each
student of ``--inpaint-models`` runs the whole grid at k steps for k in ``--inpaint-steps`` (2, 3, 4;
k <= N; fewer than N is allowed, the pipeline's warning is kept as a note), and the teacher at
``--teacher-inpaint-steps`` (16).

**Judging**: the evaluator reads every output (resized to 32x32 if the model makes another size).
An edit succeeds when the edited attribute reads as the target *and* each other attribute reads as
the source's. Columns: edit success rate, target-attribute rate, kept-attributes rate (all four other
attributes kept), evaluations per image (UNet evaluations: a guided teacher step is two), wall-clock
seconds per image (the whole edit: VAE encode, text encoder, sampling, decode; after one warm-up
edit per model), and for inpainting the PSNR of the unmasked pixels against the source (99.0 stands
for identical pixels: infinite PSNR). Two reference rows: the evaluator on the source renders (what
"no edit" scores) and on real renders of the target scenes (the ceiling).

Outputs, each written atomically into ``--out``: ``editing.json`` (date, machine, versions,
settings, evaluator accuracy, cases, both tables), ``editing.md`` and ``edit-samples.png`` /
``inpaint-samples.png`` (rows: source, [mask,] real target, each setting; columns: the first cases).

Run it through ``benchmarks/editing.py``; ``main(argv)`` here is the same entry point.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks.quality.evaluator import DEFAULT_DIR, TRUST_THRESHOLD, Evaluator, is_trusted, measure_accuracy
from benchmarks.quality.harness import environment, to_array

from .cases import ALL_ATTRIBUTES, EDITABLE, PSNR_IDENTICAL, EditCase, object_mask, plan_cases, resize_to, \
    scale_mask, unmasked_psnr

EDIT_MODELS = ("demo-8step", "default")
INPAINT_MODELS = ("default", "demo-2step")
TEACHER = "demo-teacher"
EDIT_STEPS = (2, 3, 4)
INPAINT_STEPS = (2, 3, 4)
TEACHER_STEPS = (16, 64)
TEACHER_STRENGTH = 0.5
TEACHER_INPAINT_STEPS = (16,)
QUICK_TEACHER_STEPS = (4,)
QUICK_TEACHER_INPAINT_STEPS = (4,)
NUM_SCENES = 48
QUICK_NUM_SCENES = 4
RESOLUTION = 32
PSNR_FLOOR = 35.0
"""Minimum PSNR (dB) of the unmasked pixels against the source for an inpainting row to pass."""
TRUST_SEED_OFFSET = 30_000
GRID_COLUMNS = 8
GRID_CELL = 64
GRID_GAP = 2
PSNR_NOTE = (f"PSNR of the unmasked (black) pixels against the source, 8-bit; {PSNR_IDENTICAL} stands for "
             "identical pixels (infinite PSNR): the inpainting blend keeps every unmasked pixel by construction")

EDIT_COLUMNS = ("setting", "model", "kind", "grid_steps", "strength", "steps_run", "evaluations_per_image",
                "edit_success", "target_attribute", "kept_attributes", "success_by_attribute",
                "kept_per_attribute", "seconds_per_image", "images")
INPAINT_COLUMNS = EDIT_COLUMNS + ("unmasked_psnr_min", "unmasked_psnr_mean", "unmasked_identical", "psnr_ok")
"""Keys of every setting row in ``editing.json`` (reference rows hold None where a key does not apply)."""

TASKS = ("edit", "inpaint")
TASK_TITLES = {"edit": "Image-to-image (SDEdit): change one attribute",
               "inpaint": "Inpainting: regenerate the object's bounding box"}
SAMPLE_FILES = {"edit": "edit-samples.png", "inpaint": "inpaint-samples.png"}


class PlanError(ValueError):
    """Something the run cannot start with; the message is one line."""


@dataclass
class RowSpec:
    """One setting: a model run on every case with one grid, strength and step count."""

    task: str
    label: str
    model: str
    """The model's label (its embedded name, or its folder's name)."""
    ref: str
    """What :func:`ane_diffusion.load_pipeline` is given."""
    grid_steps: int
    strength: float
    steps_run: int
    notes: list = field(default_factory=list)


# -- planning ---------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/editing.py",
        description="Editing benchmark of the demo models: image-to-image and inpainting on real scenes, "
                    "judged by the attribute evaluator.")
    parser.add_argument("--models", nargs="+", help="students for image-to-image: embedded names or bundle "
                        f"paths (default: {' '.join(EDIT_MODELS)})")
    parser.add_argument("--inpaint-models", nargs="*", help="students for inpainting (default: "
                        f"{' '.join(INPAINT_MODELS)}; the --models list when --models is given)")
    parser.add_argument("--teacher", default=TEACHER, help="guided teacher baseline, name or path; 'none' to "
                        "skip it (default: %(default)s)")
    parser.add_argument("--edit-steps", type=int, nargs="+", default=list(EDIT_STEPS),
                        help="steps run by image-to-image rows: strength k/N on a student's N-step grid "
                        "(default: %(default)s)")
    parser.add_argument("--inpaint-steps", type=int, nargs="+", default=list(INPAINT_STEPS),
                        help="step counts of inpainting rows, at most the student's own (default: %(default)s)")
    parser.add_argument("--teacher-steps", type=int, nargs="*", help="teacher DDIM grids for image-to-image "
                        f"(default {' '.join(map(str, TEACHER_STEPS))}; {' '.join(map(str, QUICK_TEACHER_STEPS))} "
                        "with --quick)")
    parser.add_argument("--teacher-strength", type=float, default=TEACHER_STRENGTH,
                        help="teacher image-to-image strength (default: %(default)s)")
    parser.add_argument("--teacher-inpaint-steps", type=int, nargs="*", help="teacher inpainting step counts "
                        f"(default {' '.join(map(str, TEACHER_INPAINT_STEPS))}; "
                        f"{' '.join(map(str, QUICK_TEACHER_INPAINT_STEPS))} with --quick)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="default: both")
    parser.add_argument("--num-scenes", type=int, help=f"edit cases (default {NUM_SCENES}; "
                        f"{QUICK_NUM_SCENES} with --quick)")
    parser.add_argument("--dilate", type=int, default=2, help="mask margin around the object's bounding box, "
                        "pixels at 32x32 (default: %(default)s)")
    parser.add_argument("--allow-heldout", action="store_true", help="let targets be held-out (shape, colour) "
                        "pairs (labelled in the cases)")
    parser.add_argument("--w", type=float, help="guidance weight (guidance_scale = 1 + w) of every row; default: "
                        "the teacher card's default_w")
    parser.add_argument("--sampler", default="ddim", choices=("ddim", "stochastic", "lcm"),
                        help="sampler of every row (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="case choice and first noise seed")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--decoder", choices=("tiny", "full"), help="VAE encoder/decoder of every row (default: "
                        "each model's own default, the tiny one when it has one)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--evaluator", type=Path, default=DEFAULT_DIR, help="attribute evaluator folder")
    parser.add_argument("--trust-images", type=int, help="fresh real images per split for the evaluator's "
                        "trust check (default 500; 100 with --quick)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/editing"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="few cases and teacher steps: a smoke test")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.inpaint_models is None:
        args.inpaint_models = list(args.models) if args.models else list(INPAINT_MODELS)
    args.models = list(args.models or EDIT_MODELS)
    args.teacher = None if str(args.teacher).lower() == "none" else args.teacher
    if args.teacher_steps is None:
        args.teacher_steps = list(QUICK_TEACHER_STEPS if quick else TEACHER_STEPS)
    if args.teacher_inpaint_steps is None:
        args.teacher_inpaint_steps = list(QUICK_TEACHER_INPAINT_STEPS if quick else TEACHER_INPAINT_STEPS)
    args.num_scenes = args.num_scenes or (QUICK_NUM_SCENES if quick else NUM_SCENES)
    args.trust_images = args.trust_images or (100 if quick else 500)
    counts = args.edit_steps + args.inpaint_steps + args.teacher_steps + args.teacher_inpaint_steps
    if any(n < 1 for n in counts):
        parser.error("step counts must be >= 1")
    if args.num_scenes < 1:
        parser.error("--num-scenes must be >= 1")
    if not 0.0 < args.teacher_strength <= 1.0:
        parser.error("--teacher-strength must be in (0, 1]")
    if args.dilate < 0:
        parser.error("--dilate must be >= 0")
    return args


def strength_for(steps_run: int, grid_steps: int) -> float:
    """The strength that runs exactly ``steps_run`` steps of an N-step grid (``int(N * s) == k``)."""
    from ane_diffusion.editing import strength_timesteps

    if not 1 <= steps_run <= grid_steps:
        raise ValueError(f"cannot run {steps_run} steps of a {grid_steps}-step grid")
    strength = steps_run / grid_steps
    while int(grid_steps * strength) < steps_run:  # float rounding, e.g. 3/7 * 7 < 3
        strength = float(np.nextafter(strength, 2.0))
    assert len(strength_timesteps(np.arange(grid_steps), strength)) == steps_run
    return strength


def model_label(ref: str) -> str:
    from ane_diffusion.bundle import EMBEDDED_MODELS

    return ref if ref in EMBEDDED_MODELS else Path(ref).name or ref


def resolve_models(refs: Sequence[str]) -> dict:
    """``{ref: Bundle}`` for every distinct ref; a missing model raises :class:`PlanError` (one line)."""
    from ane_diffusion.bundle import EMBEDDED_MODELS, ModelLoadError, resolve_bundle

    bundles = {}
    for ref in refs:
        if ref in bundles:
            continue
        try:
            bundles[ref] = resolve_bundle(ref)
        except ModelLoadError as exc:
            if ref in EMBEDDED_MODELS and "not installed" in str(exc):
                raise PlanError(f"the embedded model {ref!r} is not installed with this package; pass bundle "
                                "paths with --models / --inpaint-models / --teacher") from None
            raise PlanError(str(exc)) from None
    labels = [model_label(ref) for ref in bundles]
    duplicates = {label for label in labels if labels.count(label) > 1}
    if duplicates:
        raise PlanError(f"two models share the label {min(duplicates)!r}: give bundles distinct folder names")
    return bundles


def own_steps(card) -> int:
    """The grid a student is sampled on: the step count it was distilled for, else its recommendation."""
    return int(card.steps or card.recommended_steps)


def plan_rows(args: argparse.Namespace, bundles: dict) -> tuple[list[RowSpec], list[str]]:
    """The settings to run, in table order, and one note per requested setting that cannot run."""
    rows, skipped = [], []
    if "edit" in args.tasks:
        for ref in args.models:
            card, label = bundles[ref].card, model_label(ref)
            n = own_steps(card)
            runnable = [k for k in args.edit_steps if k <= n]
            if not runnable:
                skipped.append(f"edit {label}: none of {args.edit_steps} steps fits its {n}-step grid; no row")
            for k in runnable:
                s = strength_for(k, n)
                rows.append(RowSpec("edit", f"{label} s={s:.4g}", label, ref, n, s, k))
        if args.teacher is not None:
            label = model_label(args.teacher)
            for n in args.teacher_steps:
                k = int(n * args.teacher_strength)
                if k < 1:
                    skipped.append(f"edit {label}: strength {args.teacher_strength} of {n} steps runs no step; skipped")
                    continue
                rows.append(RowSpec("edit", f"{label} {n} s={args.teacher_strength:g}", label, args.teacher, n,
                                    args.teacher_strength, k))
    if "inpaint" in args.tasks:
        for ref in args.inpaint_models:
            card, label = bundles[ref].card, model_label(ref)
            n = own_steps(card)
            runnable = [k for k in args.inpaint_steps if k <= n]
            if not runnable:
                skipped.append(f"inpaint {label}: none of {args.inpaint_steps} steps is at most the {n} it was "
                               "distilled for; no row")
            rows += [RowSpec("inpaint", f"{label} {k} steps", label, ref, k, 1.0, k) for k in runnable]
        if args.teacher is not None:
            label = model_label(args.teacher)
            rows += [RowSpec("inpaint", f"{label} {k} steps", label, args.teacher, k, 1.0, k)
                     for k in args.teacher_inpaint_steps]
    return rows, skipped


def check_rows(rows: list[RowSpec], bundles: dict, w: float, teacher: str | None) -> tuple[list[RowSpec], list[str]]:
    """Drop rows whose w is outside a student's range; note kinds and step counts on the rest."""
    keep, skipped = [], []
    for spec in rows:
        card = bundles[spec.ref].card
        if card.is_student and not card.w_min <= w <= card.w_max:
            skipped.append(f"{spec.task} {spec.label}: w={w} is outside the student's range "
                           f"[{card.w_min}, {card.w_max}]; skipped")
            continue
        if spec.ref == teacher and card.is_student:
            spec.notes.append(f"the teacher bundle is a {card.kind} model")
        if spec.ref != teacher and not card.is_student:
            spec.notes.append("bundle is a teacher, not a student (guided: two evaluations a step)")
        keep.append(spec)
    return keep, skipped


def default_w(args: argparse.Namespace, bundles: dict) -> float:
    if args.w is not None:
        return float(args.w)
    ref = args.teacher if args.teacher is not None else next(iter(bundles))
    return float(bundles[ref].card.default_w)


# -- running ----------------------------------------------------------------------------------

@dataclass
class Inputs:
    """What one model size is fed: sources, masks and prompts of every case."""

    sources: list
    masks: list


def case_inputs(cases: Sequence[EditCase], renders: list, masks32: list, size: int) -> Inputs:
    """Sources and masks at a model's ``size`` (a 16x16 test model gets box-downsampled sources and a
    mask that still covers the object)."""
    return Inputs([resize_to(image, size) for image in renders], [scale_mask(mask, size) for mask in masks32])


class Runner:
    """Loads each model once (plus one untimed warm-up edit), then runs settings over every case."""

    def __init__(self, backend: str, w: float, sampler: str, seed: int, decoder: str | None = None):
        self.backend, self.w, self.sampler, self.seed, self.decoder = backend, w, sampler, seed, decoder
        self._editors: dict[str, object] = {}

    def editor(self, ref: str, warm_prompt: str):
        if ref not in self._editors:
            from PIL import Image

            from ane_diffusion import load_pipeline
            from ane_diffusion.editing import EditSettings, Editor

            editor = Editor(load_pipeline(ref, backend=self.backend))
            size = editor.bundle.default_size
            with warnings.catch_warnings():  # first calls pay one-off costs; keep them out of the timings
                warnings.simplefilter("ignore")
                editor.image_to_image(Image.new("RGB", (size, size), (120, 120, 120)), warm_prompt,
                                      EditSettings(steps=1, w=self.w, sampler=self.sampler, seed=self.seed,
                                                   strength=1.0, decoder=self.decoder))
            self._editors[ref] = editor
        return self._editors[ref]

    def run(self, spec: RowSpec, cases: Sequence[EditCase], inputs_for) -> tuple[list, dict, Inputs]:
        """Outputs (one per case), timing figures and the inputs (at the model's size) of one setting."""
        from ane_diffusion.editing import EditSettings

        editor = self.editor(spec.ref, cases[0].target_caption)
        inputs = inputs_for(editor.bundle.default_size)
        images, seconds, unet, evaluations, caught, decoders = [], 0.0, 0.0, 0, [], set()
        guided = not editor.pipe.card.is_student and self.w != 0
        for case, source, mask in zip(cases, inputs.sources, inputs.masks):
            settings = EditSettings(steps=spec.grid_steps, w=self.w, sampler=self.sampler,
                                    seed=self.seed + case.index, strength=spec.strength, decoder=self.decoder)
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                start = time.perf_counter()
                if spec.task == "edit":
                    result = editor.image_to_image(source, case.target_caption, settings)
                else:
                    result = editor.inpaint(source, mask, case.target_caption, settings)
                seconds += time.perf_counter() - start
            caught += [str(w.message) for w in record]
            ran = result.metadata[0]["steps_run"]
            if ran != spec.steps_run:
                raise RuntimeError(f"{spec.label}: planned {spec.steps_run} steps but {ran} ran")
            images.append(result.images[0])
            decoders.add(result.metadata[0]["decoder"])
            unet += result.timings.unet
            evaluations += result.timings.unet_calls * (2 if guided else 1)
        for message in dict.fromkeys(caught):
            spec.notes.append(f"warning: {message}")
        count = len(cases)
        per_image = evaluations / count
        return images, {"kind": editor.pipe.card.kind, "decoder": "/".join(sorted(decoders)),
                        "evaluations_per_image": int(per_image) if per_image == int(per_image) else per_image,
                        "seconds_per_image": seconds / count, "unet_seconds_per_image": unet / count,
                        "images": count, "resolution": editor.bundle.default_size}, inputs


# -- judging ----------------------------------------------------------------------------------

def readings(predictions: dict[str, np.ndarray], classes: dict[str, list[str]]) -> list[dict[str, str]]:
    """Per image, the attribute values the evaluator read: [{attribute: value}]."""
    count = len(next(iter(predictions.values())))
    return [{name: classes[name][int(predictions[name][i])] for name in classes} for i in range(count)]


def judge(read: Sequence[dict[str, str]], cases: Sequence[EditCase]) -> dict:
    """Edit success, target-attribute and kept-attributes rates of the readings of ``cases``' outputs."""
    target_ok = np.array([r[c.attribute] == getattr(c.target, c.attribute) for r, c in zip(read, cases)])
    kept_ok = np.array([all(r[a] == getattr(c.source, a) for a in c.kept) for r, c in zip(read, cases)])
    success = target_ok & kept_ok
    kept_per_attribute = {}
    for name in ALL_ATTRIBUTES:
        held = [r[name] == getattr(c.source, name) for r, c in zip(read, cases) if name in c.kept]
        kept_per_attribute[name] = float(np.mean(held)) if held else None
    by_attribute = {}
    for name in EDITABLE:
        picked = [bool(s) for s, c in zip(success, cases) if c.attribute == name]
        by_attribute[name] = float(np.mean(picked)) if picked else None
    return {"edit_success": float(success.mean()), "target_attribute": float(target_ok.mean()),
            "kept_attributes": float(kept_ok.mean()), "success_by_attribute": by_attribute,
            "kept_per_attribute": kept_per_attribute, "outcomes": "".join("1" if s else "0" for s in success)}


def psnr_figures(outputs: Sequence, inputs: Inputs) -> dict:
    values = [unmasked_psnr(out, src, mask) for out, src, mask in zip(outputs, inputs.sources, inputs.masks)]
    return {"unmasked_psnr_min": float(min(values)), "unmasked_psnr_mean": float(np.mean(values)),
            "unmasked_identical": float(np.mean([v == PSNR_IDENTICAL for v in values])),
            "psnr_ok": bool(min(values) >= PSNR_FLOOR)}


def reference_row(label: str, read, cases, task: str, note: str) -> dict:
    row = {key: None for key in (INPAINT_COLUMNS if task == "inpaint" else EDIT_COLUMNS)}
    row.update({"setting": label, "model": "real images", "evaluations_per_image": 0, "images": len(cases),
                **judge(read, cases), "notes": [note], "reference": True})
    return row


# -- outputs ----------------------------------------------------------------------------------

def sample_grid(rows: list[tuple[str, list]], cell: int = GRID_CELL):
    """One image: a label column sized to the longest label, then one ``cell``-pixel tile per image
    (nearest-neighbour upscaled), ``GRID_GAP`` white pixels apart; ``rows`` = [(label, PIL images)]."""
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = int(max(probe.textlength(label) for label, _ in rows)) + 12
    step = cell + GRID_GAP
    columns = max(len(images) for _, images in rows)
    grid = Image.new("RGB", (label_width + columns * step, len(rows) * step), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        draw.text((4, r * step + cell // 2 - 6), label, fill=(0, 0, 0))
        for c, image in enumerate(images):
            tile = image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (label_width + c * step, r * step))
    return grid


def mask_overlay(image, mask):
    """The source with the mask's white region tinted, for the grid."""
    from PIL import Image

    pixels = np.asarray(image.convert("RGB"), np.float32)
    white = (np.asarray(mask.convert("L")) >= 128)[..., None]
    tinted = np.where(white, 0.45 * pixels + 0.55 * np.array([255.0, 255.0, 255.0]), pixels)
    return Image.fromarray(tinted.round().astype(np.uint8))


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(task: str, rows: list[dict]) -> str:
    header = ["setting", "strength", "steps run", "evals/image", "edit success", "target attr", "kept attrs",
              "success: colour", "success: shape"]
    if task == "inpaint":
        header += ["unmasked PSNR min (dB)", "identical"]
    header += ["s/image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        by = row["success_by_attribute"]
        strength = row["strength"] if task == "edit" else None
        cells = [row["setting"], _fmt(strength, 4) if strength is not None else "-", _fmt(row["steps_run"]),
                 _fmt(row["evaluations_per_image"], 0) if row["evaluations_per_image"] is not None else "-",
                 _fmt(row["edit_success"]), _fmt(row["target_attribute"]), _fmt(row["kept_attributes"]),
                 _fmt(by["colour"]), _fmt(by["shape"])]
        if task == "inpaint":
            cells += [_fmt(row["unmasked_psnr_min"], 1), _fmt(row["unmasked_identical"], 2)]
        cells += [_fmt(row["seconds_per_image"], 4)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_table(rows: list[RowSpec]) -> str:
    lines = ["| task | setting | model | grid steps | strength | steps run |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.task} | {r.label} | {r.model} | {r.grid_steps} | {r.strength:.4g} | {r.steps_run} |"
              for r in rows]
    return "\n".join(lines)


def markdown_report(record: dict, specs: list[RowSpec]) -> str:
    """The human-readable twin of ``editing.json``."""
    s, ev = record["settings"], record["evaluator"]
    lines = ["# Editing with the demo models", ""]
    if not ev["trusted"]:
        lines += [f"**UNTRUSTED METRIC: the attribute evaluator reads real images below {ev['threshold']:.0%} "
                  "on some attribute; the rates below cannot be relied on.**", ""]
    lines += [f"{record['date']} on {record['machine']['platform']} ({s['backend']} backend, {s['threads']} "
              f"thread(s), load average {record['load_average']}); decoder: {s.get('decoder', 'full')}; "
              f"w = {s['w']}, {s['sampler']}, "
              f"{s['num_scenes']} train-split scenes rendered at 32x32 without jitter, one edit each "
              f"({s['edited_attributes']['colour']} colour, {s['edited_attributes']['shape']} shape)"
              f"{' (quick mode)' if s['quick'] else ''}.", "",
              "Each case changes one attribute; the prompt is the source's full caption with that word changed. "
              "**Edit success**: the evaluator reads the edited attribute as the target *and* the four others as "
              "the source's. **Target attr**: the edited attribute reads as the target. **Kept attrs**: the four "
              "others all read as the source's. Evals/image: UNet evaluations (a guided teacher step is two). "
              "s/image: wall-clock per edit (VAE encode, text encoder, sampling, decode), this run, same backend. "
              "Reference rows: the evaluator on the source renders (no edit) and on real renders of the targets "
              "(the ceiling).", "", "## Settings", "", settings_table(specs), ""]
    for task, table in record["tables"].items():
        lines += [f"## {TASK_TITLES[task]}", "", markdown_table(task, table["rows"]), ""]
        if task == "inpaint":
            lines += [f"Mask: the object's bounding box dilated by {s['dilate']} px (at 32x32). {PSNR_NOTE}; "
                      f"every row must reach {PSNR_FLOOR:.0f} dB.", ""]
        lines += [f"Samples: `{table['samples']}` (columns: " +
                  "; ".join(f"{i + 1}. {c['source_caption']} -> {c['to']}" for i, c in
                            enumerate(record["cases"][:table["grid_columns"]])) + ")", ""]
        notes = [f"{row['setting']}: {n}" for row in table["rows"] for n in row.get("notes", [])
                 if not row.get("reference")]
        if notes:
            lines += ["Notes: " + "; ".join(dict.fromkeys(notes)), ""]
    acc = ev["trust_check"]["accuracy"]
    lines += ["## Evaluator", "",
              f"Trusted: **{'yes' if ev['trusted'] else 'NO'}** (needs >= {ev['threshold']:.0%} per attribute on "
              f"real images). Accuracy on {ev['trust_check']['images_per_split']} fresh jittered real images per "
              "split:", "", "| split | " + " | ".join(ALL_ATTRIBUTES) + " | all five |",
              "|" + "---|" * (len(ALL_ATTRIBUTES) + 2)]
    lines += [f"| {split} | " + " | ".join(f"{acc[split][a]:.4f}" for a in ALL_ATTRIBUTES) +
              f" | {acc[split]['all']:.4f} |" for split in acc]
    if record["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {m}" for m in record["skipped"]]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, record: dict, specs: list[RowSpec], grids: dict) -> list[Path]:
    """Write JSON, markdown and PNGs into ``out``, each atomically (temporary file + rename)."""
    from ane_diffusion.atomic import atomic_file

    out.mkdir(parents=True, exist_ok=True)
    contents = {"editing.json": json.dumps(_finite(record), indent=2, allow_nan=False) + "\n",
                "editing.md": markdown_report(record, specs)}  # rendered before anything is replaced
    paths = []
    for name, image in grids.items():
        with atomic_file(out / name) as tmp:
            image.save(tmp, format="PNG")
            tmp.chmod(0o644)  # the temporary file is private; results are meant to be shared
        paths.append(out / name)
    for name, text in contents.items():
        with atomic_file(out / name) as tmp:
            tmp.write_text(text)
            tmp.chmod(0o644)
        paths.append(out / name)
    return paths


def _finite(value):
    """``value`` with every NaN / infinity replaced by None, so the JSON is strict."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# -- the run ----------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 3 when the evaluator is untrusted (outputs still written), 2 when
    a model is missing or nothing can run."""
    args = parse_args(argv)
    from ane_diffusion.memory import keep_freed_memory

    keep_freed_memory()
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    refs = list(args.models) * ("edit" in args.tasks) + list(args.inpaint_models) * ("inpaint" in args.tasks)
    refs += [args.teacher] if args.teacher is not None else []
    try:
        if not refs:
            raise PlanError("no model to run: give --models, --inpaint-models or --teacher")
        bundles = resolve_models(refs)
        if args.decoder:  # before any row runs: every model must have the decoder asked for
            from ane_diffusion.decoders import resolve_decoder

            for bundle in bundles.values():
                resolve_decoder(bundle, args.decoder)
        w = default_w(args, bundles)
        specs, skipped = plan_rows(args, bundles)
        specs, unrunnable = check_rows(specs, bundles, w, args.teacher)
        skipped += unrunnable
        if not specs:
            raise PlanError("no setting can run: " + "; ".join(skipped))
    except ValueError as exc:  # PlanError, DecoderChoiceError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in skipped:
        print(f"[editing] {note}", file=sys.stderr)

    evaluator = Evaluator.load(args.evaluator)
    classes = evaluator.config.classes
    trust = measure_accuracy(evaluator, args.trust_images, {"train": args.seed + TRUST_SEED_OFFSET,
                                                            "heldout": args.seed + TRUST_SEED_OFFSET + 1})
    trusted = is_trusted(trust) and is_trusted(evaluator.stored_accuracy)
    if not trusted:
        print(f"[editing] WARNING: evaluator below {TRUST_THRESHOLD:.0%} on real images: metric untrusted",
              file=sys.stderr)

    cases = plan_cases(args.num_scenes, args.seed, allow_heldout=args.allow_heldout)
    renders = [case.source.render(RESOLUTION) for case in cases]
    targets = [case.target.render(RESOLUTION) for case in cases]
    masks32 = [object_mask(case.source, image, args.dilate) for case, image in zip(cases, renders)]
    inputs_cache: dict[int, Inputs] = {}

    def inputs_for(size: int) -> Inputs:
        if size not in inputs_cache:
            inputs_cache[size] = case_inputs(cases, renders, masks32, size)
        return inputs_cache[size]

    source_read = readings(evaluator.predict(to_array(renders)), classes)
    target_read = readings(evaluator.predict(to_array(targets)), classes)
    columns = min(GRID_COLUMNS, len(cases))
    runner = Runner(args.backend, w, args.sampler, args.seed, args.decoder)
    tables, grids = {}, {}
    for task in [t for t in TASKS if t in args.tasks]:
        table = [reference_row("source (no edit)", source_read, cases, task, "evaluator on the source renders"),
                 reference_row("target (real render)", target_read, cases, task,
                               "evaluator on real renders of the target scenes: the ceiling")]
        grid_rows = [("source", renders[:columns])]
        if task == "inpaint":
            grid_rows.append(("mask", [mask_overlay(r, m) for r, m in zip(renders[:columns], masks32)]))
        grid_rows.append(("target (real)", targets[:columns]))
        for spec in [s for s in specs if s.task == task]:
            row_start = time.perf_counter()
            outputs, timing, inputs = runner.run(spec, cases, inputs_for)
            figures = judge(readings(evaluator.predict(to_array(outputs)), classes), cases)
            row = {"setting": spec.label, "model": spec.model, "ref": spec.ref, "grid_steps": spec.grid_steps,
                   "strength": spec.strength, "steps_run": spec.steps_run, **timing, **figures}
            if task == "inpaint":
                row.update(psnr_figures(outputs, inputs))
            row["notes"] = spec.notes
            table.append(row)
            grid_rows.append((spec.label, outputs[:columns]))
            extra = f"  PSNR min {row['unmasked_psnr_min']:.1f}" if task == "inpaint" else ""
            print(f"[editing] {task:7s} {spec.label:28s} success {figures['edit_success']:.3f}  target "
                  f"{figures['target_attribute']:.3f}  kept {figures['kept_attributes']:.3f}{extra}  "
                  f"{timing['seconds_per_image']:.4f}s/image ({time.perf_counter() - row_start:.1f}s)", flush=True)
        grids[SAMPLE_FILES[task]] = sample_grid(grid_rows)
        tables[task] = {"title": TASK_TITLES[task], "samples": SAMPLE_FILES[task], "grid_columns": columns,
                        "rows": table}
        if task == "inpaint":
            tables[task]["psnr_note"] = PSNR_NOTE
            tables[task]["psnr_floor_db"] = PSNR_FLOOR

    machine, versions = environment()
    record = {
        "benchmark": "editing",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "settings": {"models": list(args.models), "inpaint_models": list(args.inpaint_models),
                     "teacher": args.teacher, "w": w, "sampler": args.sampler, "tasks": list(args.tasks),
                     "edit_steps": list(args.edit_steps), "inpaint_steps": list(args.inpaint_steps),
                     "teacher_steps": list(args.teacher_steps), "teacher_strength": args.teacher_strength,
                     "teacher_inpaint_steps": list(args.teacher_inpaint_steps), "num_scenes": len(cases),
                     "split": "train", "render": f"Scene.render({RESOLUTION}), no jitter", "dilate": args.dilate,
                     "allow_heldout": args.allow_heldout, "seed": args.seed, "noise_seeds": "seed + case index",
                     "edited_attributes": {a: sum(c.attribute == a for c in cases) for a in EDITABLE},
                     "model_resolutions": {model_label(ref): b.default_size for ref, b in bundles.items()},
                     "backend": args.backend, "threads": args.threads, "quick": args.quick,
                     "decoder": args.decoder or "each model's default (tiny when it has one)",
                     "evaluator": str(args.evaluator),
                     "plan": [{"task": r.task, "setting": r.label, "model": r.model, "ref": r.ref,
                               "grid_steps": r.grid_steps, "strength": r.strength, "steps_run": r.steps_run}
                              for r in specs]},
        "evaluator": {"trusted": trusted, "threshold": TRUST_THRESHOLD, "stored_accuracy": evaluator.stored_accuracy,
                      "trust_check": {"images_per_split": args.trust_images, "accuracy": trust},
                      "reads_sources_all_five": float(np.mean([r == _attrs(c.source) for r, c in
                                                               zip(source_read, cases)])),
                      "reads_targets_all_five": float(np.mean([r == _attrs(c.target) for r, c in
                                                               zip(target_read, cases)]))},
        "columns": {"edit": list(EDIT_COLUMNS), "inpaint": list(INPAINT_COLUMNS)},
        "cases": [c.to_dict() for c in cases],
        "tables": tables,
        "skipped": skipped,
        "seconds": None,
    }
    record["seconds"] = round(time.perf_counter() - start, 1)
    paths = write_outputs(args.out, record, specs, grids)
    print(f"[editing] wrote {', '.join(str(p) for p in paths)} in {record['seconds']:.0f}s")
    return 0 if trusted else 3


def _attrs(scene) -> dict[str, str]:
    return {name: getattr(scene, name) for name in ALL_ATTRIBUTES}


__all__ = ["EDIT_COLUMNS", "INPAINT_COLUMNS", "main", "parse_args", "plan_rows", "strength_for"]

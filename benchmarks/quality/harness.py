"""The quality sweep: the paper's table at small scale, for the demo models, in one run.

Rows: the guided teacher with DDIM at 256 ... 1 steps (two evaluations a step), the stage-1
(guidance-distilled) student at the same steps (one a step), and the progressive students at 8, 4,
2, 1 steps (each at its own count), plus a "real images" reference row. Columns: evaluations per
image, per-attribute accuracy and all-five accuracy (read by the attribute evaluator), Frechet
distance of evaluator features against as many real images of the same prompts, and wall-clock
seconds per image (same backend, same process, after a warm-up call per model).

Every accuracy comes with its 95% bootstrap interval (prompts resampled: :mod:`.stats`); each
table carries the Frechet feature-space controls (:mod:`.controls`: real-vs-real floor, blurred and
colour-shifted real images must score clearly worse) and the speed-up at matched quality
(:mod:`.matched`); the train-split prompts also get the w sweep (:mod:`.wsweep`: accuracy per w and
every student's distance to the teacher at the same and other w, with the w-fidelity verdict).
Rows hold ``--images-per-row`` images (default 512: prompts x seeds, seeds rounded up).

Two tables: prompts that are full captions of train-split scenes, and of held-out (shape, colour)
combinations. Every row sees the same prompts and the same noise: image j of prompt i has the seed
``seed + i * n + j`` (``n`` images a prompt; :mod:`.noise`), so the sample grid compares like with
like and no noise is counted for more than one prompt.

Outputs, each written atomically into ``--out``: ``quality.json`` (date, machine, versions,
settings, evaluator accuracy, both tables), ``quality.md`` (the tables) and ``samples-train.png`` /
``samples-heldout.png`` (rows = model/steps, columns = the first prompts, first seed) and
``samples-w-sweep.png`` (rows = models, columns = w).

Run it through ``benchmarks/quality.py``; ``main(argv)`` here is the same entry point.
"""

from __future__ import annotations

import argparse
import datetime
import math
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ane_diffusion.demo.shapes import Scene, scenes_for

from .evaluator import (ATTRIBUTES, DEFAULT_DIR, RESOLUTION, TRUST_THRESHOLD, Evaluator, is_trusted,
                        measure_accuracy, score)
from .controls import validate_features
from .frechet import frechet_distance_features
from .matched import markdown_matched, matched_speedups
from .stats import accuracy_with_intervals, correctness
from ane_diffusion.distill.fidelity import MIN_RESPONSE_RATIO

from .noise import text_to_image_distinct
from .wsweep import DEFAULT_WS, as_arrays, fidelity_table, markdown_fidelity

TEACHER_STEPS = (64, 16, 8, 4, 2, 1)
"""Teacher and stage-1 rows by default (256 steps scores like 16 at 16x the cost: pass it explicitly)."""
IMAGES_PER_ROW = 512
"""Default images per row and table: prompts x seeds, seeds rounded up (issue 11: >= 512)."""
DEFAULT_PROMPTS = 128
SWEEP_TEACHER_STEPS = 16
EMBEDDED = "embedded"
"""``--models embedded``: the demo models shipped in the package, by their embedded names."""
SWEEP_STAGE1_STEPS = 4
PROGRESSIVE_STEPS = (8, 4, 2, 1)
QUICK_TEACHER_STEPS = (4, 1)
QUICK_PROGRESSIVE_STEPS = (2, 1)
SPLITS = ("train", "heldout")
SPLIT_TITLES = {"train": "Train-split prompts", "heldout": "Held-out (shape, colour) combinations"}
GRID_COLUMNS = 8
GRID_CELL = 64
REAL_SEED_OFFSET = {"train": 10_000, "heldout": 20_000}
"""Real reference images are drawn with ``seed + offset``; the second real draw (the Frechet floor)
with ``seed + offset + 1``; the trust check with ``seed + offset + 2``."""

COLUMNS = ("model", "steps", "evaluations_per_image", *ATTRIBUTES, "all_attributes", "frechet",
           "seconds_per_image", "intervals")
"""Columns of every table row in ``quality.json`` (``quality.md`` shows the same, in this order)."""


@dataclass
class RowSpec:
    """One row to generate: a bundle sampled with DDIM at ``steps``."""

    label: str
    model: str
    """"teacher", "stage-1" or "progressive"."""
    bundle: Path
    steps: int
    notes: list = field(default_factory=list)


# -- planning ---------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/quality.py",
        description="Quality table of the demo models: teacher vs stage-1 vs progressive students.")
    parser.add_argument("--models", type=Path, help="folder holding teacher/, stage1/ and progressive/ "
                        "(e.g. runs/demo), or 'embedded' for the models shipped in the package (demo-teacher, "
                        "demo-stage1, demo-8step ... demo-1step); --teacher/--stage1/--progressive override its parts")
    parser.add_argument("--teacher", type=Path, help="guided teacher bundle")
    parser.add_argument("--stage1", type=Path, help="stage-1 (guidance-distilled) student bundle")
    parser.add_argument("--progressive", type=Path, help="folder with steps-8, steps-4, steps-2, steps-1 bundles")
    parser.add_argument("--stage1-lora", type=Path, help="a LoRA stage-1 student bundle (distill --lora-rank): "
                        "rows 'stage-1 LoRA N' beside the full fine-tune's")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--w", type=float, help="guidance weight (guidance_scale = 1 + w); default: the "
                        "teacher card's default_w")
    parser.add_argument("--num-prompts", type=int, help=f"prompts per table (default {DEFAULT_PROMPTS}, fewer "
                        "when the split has fewer scenes; 3 with --quick)")
    parser.add_argument("--images-per-prompt", type=int, help="images per prompt, each its own noise seed "
                        "(default: enough for --images-per-row; 2 with --quick)")
    parser.add_argument("--images-per-row", type=int, default=IMAGES_PER_ROW,
                        help="images per row and table when --images-per-prompt is not given (default %(default)s)")
    parser.add_argument("--sweep-w", type=float, nargs="*", help="w values of the w sweep (default "
                        f"{' '.join(f'{w:g}' for w in DEFAULT_WS)}; give none to skip the sweep)")
    parser.add_argument("--sweep-teacher-steps", type=int,
                        help=f"teacher steps in the w sweep (default {SWEEP_TEACHER_STEPS}; with --quick the first "
                        "--teacher-steps)")
    parser.add_argument("--sweep-stage1-steps", type=int, default=SWEEP_STAGE1_STEPS,
                        help="stage-1 steps in the w sweep (default %(default)s; progressive students use their own)")
    parser.add_argument("--teacher-steps", type=int, nargs="+", help=f"teacher and stage-1 rows "
                        f"(default {' '.join(map(str, TEACHER_STEPS))})")
    parser.add_argument("--progressive-steps", type=int, nargs="+",
                        help=f"progressive rows (default {' '.join(map(str, PROGRESSIVE_STEPS))})")
    parser.add_argument("--seed", type=int, default=0, help="first noise seed and prompt-choice seed")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--decoder", choices=("tiny", "full"), default=None,
                        help="VAE decoder of every row (default: each model's own: tiny when it has one)")
    parser.add_argument("--clamp", action="store_true",
                        help="every row clips its x estimates to its card's latent range (ane_diffusion.latent_range)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--evaluator", type=Path, default=DEFAULT_DIR, help="evaluator folder")
    parser.add_argument("--trust-images", type=int, help="fresh real images per split for the evaluator's "
                        "trust check (default 1000; 200 with --quick)")
    parser.add_argument("--quick", action="store_true", help="few prompts and rows: a smoke test")
    args = parser.parse_args(argv)
    quick = args.quick
    args.num_prompts = args.num_prompts or (3 if quick else DEFAULT_PROMPTS)
    if args.images_per_prompt is None and quick:
        args.images_per_prompt = 2
    if args.sweep_w is None:
        args.sweep_w = list(DEFAULT_WS)
    args.teacher_steps = tuple(args.teacher_steps or (QUICK_TEACHER_STEPS if quick else TEACHER_STEPS))
    args.sweep_teacher_steps = args.sweep_teacher_steps or (args.teacher_steps[0] if quick else SWEEP_TEACHER_STEPS)
    args.teacher_steps = tuple(args.teacher_steps or (QUICK_TEACHER_STEPS if quick else TEACHER_STEPS))
    args.progressive_steps = tuple(args.progressive_steps or (QUICK_PROGRESSIVE_STEPS if quick else PROGRESSIVE_STEPS))
    args.trust_images = args.trust_images or (200 if quick else 1000)
    if args.models is not None and str(args.models) == EMBEDDED:
        args.teacher = args.teacher or Path("demo-teacher")
        args.stage1 = args.stage1 or Path("demo-stage1")
        args.progressive = args.progressive or Path(EMBEDDED)
    elif args.models is not None:
        args.teacher = args.teacher or args.models / "teacher"
        args.stage1 = args.stage1 or args.models / "stage1"
        args.progressive = args.progressive or args.models / "progressive"
    if not (args.teacher or args.stage1 or args.progressive or args.stage1_lora):
        parser.error("give --models DIR or at least one of --teacher / --stage1 / --progressive / --stage1-lora")
    if args.num_prompts < 1 or (args.images_per_prompt is not None and args.images_per_prompt < 1) \
            or args.images_per_row < 1:
        parser.error("--num-prompts, --images-per-prompt and --images-per-row must be >= 1")
    if args.sweep_w and len(args.sweep_w) < 2:
        parser.error("--sweep-w needs at least two values (or none to skip the sweep)")
    return args


def _is_bundle(path) -> bool:
    """A folder, or the name of a model embedded in the package (``demo-teacher`` ...)."""
    from ane_diffusion.bundle import EMBEDDED_MODELS, embedded_root

    name = str(path)
    if name in EMBEDDED_MODELS:
        return (embedded_root() / "models" / EMBEDDED_MODELS[name]).is_dir()
    return Path(path).is_dir()


def plan_rows(args: argparse.Namespace) -> tuple[list[RowSpec], list[str]]:
    """The rows to run, in table order, and one note per thing that is missing."""
    rows, missing = [], []
    for model, path in (("teacher", args.teacher), ("stage-1", args.stage1),
                        ("stage-1 LoRA", getattr(args, "stage1_lora", None))):
        if path is None and model == "stage-1 LoRA":
            continue
        if path is None:
            missing.append(f"{model}: no bundle given; rows skipped")
        elif not _is_bundle(path):
            missing.append(f"{model}: no bundle at {path}; rows skipped")
        else:
            rows += [RowSpec(f"{model} {n}", model, Path(path), n) for n in args.teacher_steps]
    if args.progressive is None:
        missing.append("progressive: no folder given; rows skipped")
    elif str(args.progressive) == EMBEDDED:
        for n in args.progressive_steps:
            name = f"demo-{n}step"
            if _is_bundle(name):
                rows.append(RowSpec(f"progressive {n}", "progressive", Path(name), n))
            else:
                missing.append(f"progressive {n}: no embedded model {name}; row skipped")
    elif not Path(args.progressive).is_dir():
        missing.append(f"progressive: no folder at {args.progressive}; rows skipped")
    else:
        for n in args.progressive_steps:
            folder = Path(args.progressive) / f"steps-{n}"
            if folder.is_dir():
                rows.append(RowSpec(f"progressive {n}", "progressive", folder, n))
            else:
                missing.append(f"progressive {n}: no bundle at {folder}; row skipped")
    return rows, missing


def choose_scenes(split: str, count: int, seed: int) -> list[Scene]:
    """``count`` distinct scenes of ``split`` (all of them if fewer), the same for the same seed."""
    pool = scenes_for(split)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    return [pool[i] for i in rng.choice(len(pool), size=min(count, len(pool)), replace=False)]


def render_real(scenes: Sequence[Scene], per_scene: int, seed: int) -> np.ndarray:
    """``per_scene`` jittered real renders of each scene, scene-major (the pipeline's order)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(scene.render(RESOLUTION, rng)) for scene in scenes for _ in range(per_scene)])


# -- measuring --------------------------------------------------------------------------------

def to_array(images) -> np.ndarray:
    """PIL images of any size -> uint8 (N, 32, 32, 3), resized like the evaluator reads them."""
    from PIL import Image

    out = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (RESOLUTION, RESOLUTION):
            method = Image.Resampling.BOX if image.size[0] > RESOLUTION else Image.Resampling.BILINEAR
            image = image.resize((RESOLUTION, RESOLUTION), method)
        out.append(np.asarray(image))
    return np.stack(out)


def images_per_prompt(args: argparse.Namespace, prompts: int) -> int:
    """``--images-per-prompt``, else enough seeds for ``--images-per-row`` images over ``prompts``."""
    return args.images_per_prompt or max(1, math.ceil(args.images_per_row / max(prompts, 1)))


def measure(evaluator: Evaluator, images: np.ndarray, scenes: Sequence[Scene], real_features: np.ndarray,
            groups: np.ndarray | None = None) -> dict:
    """Per-attribute / all-five accuracy, their 95% bootstrap intervals over ``groups`` (the prompt of
    each image; default: each image its own), and the Frechet distance to ``real_features``."""
    predictions, features = evaluator.analyse(images)
    accuracy = score(predictions, scenes, evaluator.config.classes)
    groups = np.arange(len(images)) if groups is None else groups
    intervals = accuracy_with_intervals(correctness(predictions, scenes, evaluator.config.classes), groups)
    fd = frechet_distance_features(features, real_features) if len(images) >= 2 else float("nan")
    return {**{name: accuracy[name] for name in ATTRIBUTES}, "all_attributes": accuracy["all"], "frechet": fd,
            "intervals": {name: value["interval"] for name, value in intervals.items()}}


class Generator:
    """Loads each bundle once, warms it up once, then generates rows with shared settings."""

    def __init__(self, backend: str, w: float, seed: int, images_per_prompt: int, decoder: str | None = None,
                 clamp: bool = False):
        self.backend, self.w, self.seed, self.images_per_prompt = backend, w, seed, images_per_prompt
        self.decoder, self.clamp = decoder, clamp
        self._pipelines: dict[Path, object] = {}
        self._images: dict[tuple, list] = {}
        """(bundle, steps, w, prompts, seeds) -> images: the w sweep reuses the main table's."""

    def pipeline(self, bundle: Path, warm_prompt: str):
        if bundle not in self._pipelines:
            from ane_diffusion import load_pipeline

            pipe = load_pipeline(str(bundle), backend=self.backend)
            self._run(pipe, [warm_prompt], 1)  # first calls pay one-off costs; keep them out of timings
            self._pipelines[bundle] = pipe
        return self._pipelines[bundle]

    def _run(self, pipe, prompts: list[str], steps: int, w: float | None = None):
        from ane_diffusion.pipeline import Settings

        w = self.w if w is None else w
        settings = Settings(steps=steps, w=w, sampler="ddim", seed=self.seed, num_images=self.images_per_prompt,
                            decoder=self.decoder, clamp=self.clamp)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="this student was distilled for")
            return text_to_image_distinct(pipe, prompts, settings)

    def generate(self, spec: RowSpec, prompts: list[str]) -> tuple[list, dict]:
        """Images (scene-major) and timing figures of one row."""
        pipe = self.pipeline(spec.bundle, prompts[0])
        result = self._run(pipe, prompts, spec.steps)
        self._images[self._key(spec.bundle, spec.steps, self.w, prompts)] = result.images
        count = len(result.images)
        guided = not pipe.card.is_student and self.w != 0
        calls_per_prompt = result.timings.unet_calls / len(prompts)
        return result.images, {
            "kind": pipe.card.kind,
            "evaluations_per_image": int(round(calls_per_prompt * (2 if guided else 1))),
            "seconds_per_image": result.timings.total / count,
            "unet_seconds_per_image": result.timings.unet / count,
            "images": count,
        }


    def _key(self, bundle: Path, steps: int, w: float, prompts: list[str]) -> tuple:
        return (str(bundle), steps, float(w), tuple(prompts), self.seed, self.images_per_prompt)

    def images_at(self, bundle: Path, steps: int, w: float, prompts: list[str]) -> list:
        """Images of ``bundle`` at ``steps`` and ``w`` for ``prompts`` (this run's seeds), made once."""
        key = self._key(bundle, steps, w, prompts)
        if key not in self._images:
            self._images[key] = self._run(self.pipeline(bundle, prompts[0]), prompts, steps, w).images
        return self._images[key]


def check_row(spec: RowSpec, w: float) -> str | None:
    """Why ``spec`` cannot run (w outside a student's range), or None; adds notes on step counts."""
    from ane_diffusion.bundle import resolve_bundle

    card = resolve_bundle(str(spec.bundle)).card
    if card.is_student and not card.w_min <= w <= card.w_max:
        return f"{spec.label}: w={w} is outside the student's range [{card.w_min}, {card.w_max}]; row skipped"
    if spec.model == "teacher" and card.is_student:
        spec.notes.append(f"bundle is a {card.kind} model, not a teacher")
    if spec.model != "teacher" and not card.is_student:
        spec.notes.append("bundle is a teacher, not a student")
    if card.is_student and card.steps and card.steps != spec.steps:
        spec.notes.append(f"distilled for {card.steps} steps, sampled at {spec.steps}")
    return None


def default_w(args: argparse.Namespace, rows: list[RowSpec]) -> float:
    """``--w``, else the teacher card's default_w, else the first row's card's."""
    from ane_diffusion.bundle import resolve_bundle

    if args.w is not None:
        return float(args.w)
    teachers = [r for r in rows if r.model == "teacher"]
    return float(resolve_bundle(str((teachers or rows)[0].bundle)).card.default_w)


def run_w_sweep(args, generator: Generator, rows: list[RowSpec], evaluator: Evaluator, prompts: list[str],
                per_image: list[Scene], groups: np.ndarray):
    """The w sweep on the train-split prompts (the same noise at every w): the teacher at
    ``--sweep-teacher-steps``, the stage-1 student at ``--sweep-stage1-steps`` and each progressive
    student at its own steps, at every w of ``--sweep-w``. Returns ``(record, grid)``: per-attribute
    accuracy with intervals per model and w, the w-fidelity table of each student against the
    teacher, and a PNG grid (first prompt and seed; rows = models, columns = w)."""
    from PIL import Image

    ws = [float(w) for w in args.sweep_w]
    teachers = [r for r in rows if r.model == "teacher"]
    if not teachers:
        return {"skipped": "no teacher row"}, None
    models = {f"teacher {args.sweep_teacher_steps}": (teachers[0].bundle, args.sweep_teacher_steps)}
    for spec in rows:
        if spec.model == "stage-1" and spec.steps == args.sweep_stage1_steps:
            models[spec.label] = (spec.bundle, spec.steps)
        elif spec.model != "teacher" and spec.model != "stage-1":
            models[spec.label] = (spec.bundle, spec.steps)
    images, accuracy, skipped = {}, {}, []
    for label, (bundle, steps) in models.items():
        card = load_card(bundle)
        if card.is_student and not all(card.w_min <= w <= card.w_max for w in ws):
            skipped.append(f"{label}: w range [{card.w_min}, {card.w_max}] does not cover the sweep")
            continue
        images[label], accuracy[label] = {}, {}
        for w in ws:
            start = time.perf_counter()
            pil = generator.images_at(bundle, steps, w, prompts)
            images[label][w] = to_array(pil)
            predictions = evaluator.predict(images[label][w])
            accuracy[label][str(w)] = accuracy_with_intervals(
                correctness(predictions, per_image, evaluator.config.classes), groups)
            print(f"[quality] w sweep {label:16s} w={w:g}: all {accuracy[label][str(w)]['all']['accuracy']:.3f} "
                  f"({time.perf_counter() - start:.1f}s)", flush=True)
    teacher_label = next(iter(models))
    if teacher_label not in images:
        return {"skipped": "teacher not available"}, None
    students = {label: by_w for label, by_w in images.items() if label != teacher_label}
    fidelity = fidelity_table(images[teacher_label], students, ws)
    cell_rows = [(label, [Image.fromarray(by_w[w][0]) for w in ws]) for label, by_w in images.items()]
    record = {"ws": ws, "teacher": teacher_label, "prompts": len(prompts), "images_per_w": len(per_image),
              "accuracy": accuracy, "fidelity": fidelity, "skipped": skipped,
              "grid": "samples-w-sweep.png", "grid_prompt": prompts[0]}
    return record, sample_grid(cell_rows)


def load_card(bundle: Path):
    from ane_diffusion.bundle import resolve_bundle

    return resolve_bundle(str(bundle)).card


# -- outputs ----------------------------------------------------------------------------------

def environment() -> tuple[dict, dict]:
    """``(machine, versions)`` for the JSON record."""
    import PIL
    import torch

    import ane_diffusion

    machine = {"platform": platform.platform(), "machine": platform.machine(),
               "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads()}
    versions = {"python": platform.python_version(), "ane_diffusion": ane_diffusion.__version__,
                "torch": torch.__version__, "numpy": np.__version__, "pillow": PIL.__version__}
    for name in ("diffusers", "scipy", "safetensors"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
        versions["git_commit"] = commit or None
    except (OSError, subprocess.SubprocessError):
        versions["git_commit"] = None
    return machine, versions


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _with_interval(value, interval) -> str:
    """``0.953 [0.93, 0.97]``, or the plain value without an interval."""
    if interval is None or value is None:
        return _fmt(value)
    return f"{_fmt(value)} [{interval[0]:.2f}, {interval[1]:.2f}]"


def markdown_table(rows: list[dict]) -> str:
    header = ["model", "steps", "evals/image", *ATTRIBUTES, "all five", "Frechet", "s/image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        intervals = row.get("intervals") or {}
        cells = [row["model"], _fmt(row["steps"]), _fmt(row["evaluations_per_image"]),
                 *(_with_interval(row[name], intervals.get(name)) for name in ATTRIBUTES),
                 _with_interval(row["all_attributes"], intervals.get("all")),
                 _fmt(row["frechet"], 2), _fmt(row["seconds_per_image"], 4)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(record: dict) -> str:
    """The human-readable twin of ``quality.json``."""
    s, ev = record["settings"], record["evaluator"]
    lines = ["# Quality of the demo models", ""]
    if not ev["trusted"]:
        lines += [f"**UNTRUSTED METRIC: the attribute evaluator reads real images below {ev['threshold']:.0%} "
                  "on some attribute; accuracy and Frechet numbers below cannot be relied on.**", ""]
    sizes = ", ".join(f"{split}: {len(t['prompts'])} prompts x {t.get('images_per_prompt', s['images_per_prompt'])} "
                      f"images" for split, t in record["tables"].items())
    lines += [f"{record['date']} on {record['machine']['platform']} ({s['backend']} backend, "
              f"{s['threads']} thread(s)); w = {s['w']}, DDIM"
              f"{', x estimates clamped to the latent range (--clamp)' if s.get('clamp') else ''}; {sizes}, every "
              "image its own noise seed"
              f"{' (quick mode)' if s['quick'] else ''}.", "",
              "Accuracy: fraction of generated images the attribute evaluator reads as the prompt's attribute "
              "(all five: every attribute right), with its 95% bootstrap interval (prompts resampled). Frechet: "
              "distance between evaluator features of the generated images and of as many real images of the same "
              "prompts (the real row: two independent real draws, the floor at this sample size; the feature space "
              "is validated below on blurred and colour-shifted real images). s/image: wall-clock per image, this "
              "run, same backend.", ""]
    for split, table in record["tables"].items():
        lines += [f"## {SPLIT_TITLES[split]}", "", markdown_table(table["rows"]), "",
                  f"Samples: `{table['samples']}` (columns: " +
                  "; ".join(f"{i + 1}. {p}" for i, p in enumerate(table["grid_prompts"])) + ")", ""]
        controls = table.get("frechet_controls")
        if controls:
            lines += [f"Frechet feature space: real-vs-real floor {controls['floor']:.1f}; blurred "
                      f"({controls['settings']['blur_radius']:g} px) {controls['blurred']:.1f} "
                      f"({controls['ratios']['blurred']:.1f}x); colour-shifted {controls['settings']['colour_shift']} "
                      f"{controls['colour_shifted']:.1f} ({controls['ratios']['colour_shifted']:.1f}x): "
                      f"**{'validated' if controls['validated'] else 'NOT validated'}** (needs >= "
                      f"{controls['min_ratio']:g}x the floor).", ""]
        if table.get("matched_speedup"):
            lines += ["Speed-up at matched quality (the teacher row with the fewest steps whose all-five accuracy "
                      "reaches the student's interval; seconds per image from this run):", "",
                      markdown_matched(table["matched_speedup"]), ""]
        notes = [f"{row['model']}: {n}" for row in table["rows"] for n in row.get("notes", [])]
        if notes:
            lines += ["Notes: " + "; ".join(sorted(set(notes))), ""]
    sweep = record.get("w_sweep")
    if sweep and "fidelity" in sweep:
        ws = sweep["ws"]
        lines += ["## w sweep (train-split prompts, the same noise at every w)", "",
                  f"Reference: {sweep['teacher']}. Distances: mean absolute pixel difference (0-255) between a "
                  "student's images at one w and the teacher's at each w; the same-w cell is bold. Verdict: closest "
                  "to the teacher at the same w for every w, and change from the first to the last w >= "
                  f"{MIN_RESPONSE_RATIO:g} of the teacher's.", "", markdown_fidelity(sweep["fidelity"], ws), "",
                  "All-five accuracy [95% interval] per w:", "",
                  "| model | " + " | ".join(f"w={w:g}" for w in ws) + " |", "|" + "---|" * (len(ws) + 1)]
        for label, by_w in sweep["accuracy"].items():
            lines.append(f"| {label} | " + " | ".join(
                _with_interval(by_w[str(w)]["all"]["accuracy"], by_w[str(w)]["all"]["interval"]) for w in ws) + " |")
        lines += ["", f"Samples: `{sweep['grid']}` (rows: models; columns: w = {', '.join(f'{w:g}' for w in ws)}; "
                  f"prompt: {sweep['grid_prompt']}, first seed)", ""]
        if sweep.get("skipped"):
            lines += ["Skipped: " + "; ".join(sweep["skipped"]), ""]
    acc = ev["trust_check"]["accuracy"]
    lines += ["## Evaluator", "",
              f"Trusted: **{'yes' if ev['trusted'] else 'NO'}** (needs >= {ev['threshold']:.0%} per attribute "
              f"on real images). Accuracy on {ev['trust_check']['images_per_split']} fresh real images per split:", "",
              "| split | " + " | ".join(ATTRIBUTES) + " | all five |", "|" + "---|" * (len(ATTRIBUTES) + 2)]
    lines += [f"| {split} | " + " | ".join(f"{acc[split][a]:.4f}" for a in ATTRIBUTES) +
              f" | {acc[split]['all']:.4f} |" for split in acc]
    if record["missing"]:
        lines += ["", "## Missing", ""] + [f"- {m}" for m in record["missing"]]
    return "\n".join(lines) + "\n"


GRID_LABEL_WIDTH = 120
GRID_GAP = 2


def sample_grid(rows: list[tuple[str, list]], cell: int = GRID_CELL):
    """One image: a label column, then one ``cell``-pixel tile per image (nearest-neighbour
    upscaled), ``GRID_GAP`` white pixels apart; ``rows`` = [(label, PIL images)]."""
    from PIL import Image, ImageDraw

    step = cell + GRID_GAP
    columns = max(len(images) for _, images in rows)
    grid = Image.new("RGB", (GRID_LABEL_WIDTH + columns * step, len(rows) * step), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        draw.text((4, r * step + cell // 2 - 6), label, fill=(0, 0, 0))
        for c, image in enumerate(images):
            tile = image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (GRID_LABEL_WIDTH + c * step, r * step))
    return grid


def write_outputs(out: Path, record: dict, grids: dict) -> list[Path]:
    """Write JSON, markdown and PNGs into ``out``, each atomically (temporary file + rename)."""
    from ane_diffusion.atomic import atomic_file

    out.mkdir(parents=True, exist_ok=True)
    contents = {"quality.json": json.dumps(_finite(record), indent=2, allow_nan=False) + "\n",
                "quality.md": markdown_report(record)}
    paths = []
    for name, image in grids.items():  # render everything before replacing anything
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


# -- the run ----------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; 0 on success, 3 when the evaluator is untrusted (outputs still written), 2 when
    there is nothing to run."""
    args = parse_args(argv)
    from ane_diffusion.memory import keep_freed_memory

    keep_freed_memory()
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows, missing = plan_rows(args)
    for note in missing:
        print(f"[quality] missing: {note}", file=sys.stderr)
    if not rows:
        print("[quality] no model to evaluate", file=sys.stderr)
        return 2
    w = default_w(args, rows)
    runnable = []
    for spec in rows:
        problem = check_row(spec, w)
        if problem:
            missing.append(problem)
            print(f"[quality] {problem}", file=sys.stderr)
        else:
            runnable.append(spec)

    evaluator = Evaluator.load(args.evaluator)
    trust = measure_accuracy(evaluator, args.trust_images,
                             {split: args.seed + REAL_SEED_OFFSET[split] + 2 for split in SPLITS})
    trusted = is_trusted(trust) and is_trusted(evaluator.stored_accuracy)
    if not trusted:
        print(f"[quality] WARNING: evaluator below {TRUST_THRESHOLD:.0%} on real images: metric untrusted",
              file=sys.stderr)

    generator = Generator(args.backend, w, args.seed, 1, args.decoder, args.clamp)
    tables, grids, sweep = {}, {}, None
    for split in SPLITS:
        scenes = choose_scenes(split, args.num_prompts, args.seed)
        if len(scenes) < args.num_prompts:
            missing.append(f"{split}: only {len(scenes)} scenes exist; {len(scenes)} prompts used, "
                           f"not {args.num_prompts}")
        ipp = generator.images_per_prompt = images_per_prompt(args, len(scenes))
        prompts = [scene.caption(0) for scene in scenes]
        per_image = [scene for scene in scenes for _ in range(ipp)]
        groups = np.repeat(np.arange(len(scenes)), ipp)
        real = render_real(scenes, ipp, args.seed + REAL_SEED_OFFSET[split])
        real_again = render_real(scenes, ipp, args.seed + REAL_SEED_OFFSET[split] + 1)
        real_features = evaluator.features(real)
        table = [{"model": "real images", "steps": None, "evaluations_per_image": 0,
                  **measure(evaluator, real, per_image, evaluator.features(real_again), groups),
                  "seconds_per_image": None, "images": len(real)}]
        controls = validate_features(evaluator.features, real, real_again)
        verdict = "validated" if controls["validated"] else "NOT validated"
        print(f"[quality] {split:7s} Frechet controls: floor {controls['floor']:.1f}, blurred "
              f"{controls['blurred']:.1f}, colour-shifted {controls['colour_shifted']:.1f}: {verdict}", flush=True)
        grid_columns = min(GRID_COLUMNS, len(scenes))
        from PIL import Image

        grid_rows = [("real", [Image.fromarray(real[i * ipp]) for i in range(grid_columns)])]
        for spec in runnable:
            row_start = time.perf_counter()
            images, timing = generator.generate(spec, prompts)
            metrics = measure(evaluator, to_array(images), per_image, real_features, groups)
            table.append({"model": spec.label, "steps": spec.steps, **timing, **metrics,
                          "bundle": str(spec.bundle), "notes": spec.notes})
            grid_rows.append((spec.label, [images[i * ipp] for i in range(grid_columns)]))
            print(f"[quality] {split:7s} {spec.label:16s} all {metrics['all_attributes']:.3f}  "
                  f"FD {metrics['frechet']:.2f}  {timing['seconds_per_image']:.4f}s/image "
                  f"({time.perf_counter() - row_start:.1f}s)", flush=True)
        grids[f"samples-{split}.png"] = sample_grid(grid_rows)
        tables[split] = {"title": SPLIT_TITLES[split], "prompts": prompts, "grid_prompts": prompts[:grid_columns],
                         "images_per_prompt": ipp, "samples": f"samples-{split}.png", "rows": table,
                         "frechet_controls": controls, "matched_speedup": matched_speedups(table)}
        if split == "train" and args.sweep_w:
            sweep, sweep_grid = run_w_sweep(args, generator, runnable, evaluator, prompts, per_image, groups)
            if sweep_grid is not None:
                grids["samples-w-sweep.png"] = sweep_grid

    machine, versions = environment()
    record = {
        "benchmark": "quality",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions,
        "settings": {"teacher": _str(args.teacher), "stage1": _str(args.stage1),
                     "stage1_lora": _str(getattr(args, "stage1_lora", None)),
                     "progressive": _str(args.progressive), "w": w, "sampler": "ddim",
                     "num_prompts": args.num_prompts, "images_per_prompt": args.images_per_prompt,
                     "images_per_row": args.images_per_row, "seed": args.seed, "sweep_w": list(args.sweep_w),
                     "sweep_teacher_steps": args.sweep_teacher_steps, "sweep_stage1_steps": args.sweep_stage1_steps,
                     "teacher_steps": list(args.teacher_steps), "progressive_steps": list(args.progressive_steps),
                     "backend": args.backend, "threads": args.threads, "quick": args.quick,
                     "decoder": args.decoder or "each model's default", "clamp": args.clamp,
                     "evaluator": str(args.evaluator)},
        "evaluator": {"trusted": trusted, "threshold": TRUST_THRESHOLD, "stored_accuracy": evaluator.stored_accuracy,
                      "trust_check": {"images_per_split": args.trust_images, "accuracy": trust}},
        "columns": list(COLUMNS),
        "tables": tables,
        "w_sweep": sweep,
        "missing": missing,
        "seconds": None,
    }
    record["seconds"] = round(time.perf_counter() - start, 1)
    paths = write_outputs(args.out, record, grids)
    print(f"[quality] wrote {', '.join(str(p) for p in paths)} in {record['seconds']:.0f}s")
    return 0 if trusted else 3


def _finite(value):
    """``value`` with every NaN / infinity replaced by None, so the JSON is strict."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


__all__ = ["COLUMNS", "PROGRESSIVE_STEPS", "TEACHER_STEPS", "main", "parse_args", "plan_rows"]

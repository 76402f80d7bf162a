"""The quality sweep: the paper's table at small scale, for the demo models, in one run.

Rows: the guided teacher with DDIM at 256 ... 1 steps (two evaluations a step), the stage-1
(guidance-distilled) student at the same steps (one a step), and the progressive students at 8, 4,
2, 1 steps (each at its own count), plus a "real images" reference row. Columns: evaluations per
image, per-attribute accuracy and all-five accuracy (read by the attribute evaluator), Frechet
distance of evaluator features against as many real images of the same prompts, and wall-clock
seconds per image (same backend, same process, after a warm-up call per model).

Two tables: prompts that are full captions of train-split scenes, and of held-out (shape, colour)
combinations. Every row sees the same prompts and the same seeds (``seed ... seed + n - 1`` for the
``n`` images of each prompt), so the sample grid compares like with like.

Outputs, each written atomically into ``--out``: ``quality.json`` (date, machine, versions,
settings, evaluator accuracy, both tables), ``quality.md`` (the tables) and ``samples-train.png`` /
``samples-heldout.png`` (rows = model/steps, columns = the first prompts, first seed).

Run it through ``benchmarks/quality.py``; ``main(argv)`` here is the same entry point.
"""

from __future__ import annotations

import argparse
import datetime
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
from .frechet import frechet_distance_features

TEACHER_STEPS = (256, 64, 16, 8, 4, 2, 1)
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
           "seconds_per_image")
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
                        "(e.g. runs/demo); --teacher/--stage1/--progressive override its parts")
    parser.add_argument("--teacher", type=Path, help="guided teacher bundle")
    parser.add_argument("--stage1", type=Path, help="stage-1 (guidance-distilled) student bundle")
    parser.add_argument("--progressive", type=Path, help="folder with steps-8, steps-4, steps-2, steps-1 bundles")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--w", type=float, help="guidance weight (guidance_scale = 1 + w); default: the "
                        "teacher card's default_w")
    parser.add_argument("--num-prompts", type=int, help="prompts per table (default 32; 3 with --quick)")
    parser.add_argument("--images-per-prompt", type=int, help="seeds per prompt (default 4; 2 with --quick)")
    parser.add_argument("--teacher-steps", type=int, nargs="+", help=f"teacher and stage-1 rows "
                        f"(default {' '.join(map(str, TEACHER_STEPS))})")
    parser.add_argument("--progressive-steps", type=int, nargs="+",
                        help=f"progressive rows (default {' '.join(map(str, PROGRESSIVE_STEPS))})")
    parser.add_argument("--seed", type=int, default=0, help="first noise seed and prompt-choice seed")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--decoder", choices=("tiny", "full"), default=None,
                        help="VAE decoder of every row (default: each model's own: tiny when it has one)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--evaluator", type=Path, default=DEFAULT_DIR, help="evaluator folder")
    parser.add_argument("--trust-images", type=int, help="fresh real images per split for the evaluator's "
                        "trust check (default 1000; 200 with --quick)")
    parser.add_argument("--quick", action="store_true", help="few prompts and rows: a smoke test")
    args = parser.parse_args(argv)
    quick = args.quick
    args.num_prompts = args.num_prompts or (3 if quick else 32)
    args.images_per_prompt = args.images_per_prompt or (2 if quick else 4)
    args.teacher_steps = tuple(args.teacher_steps or (QUICK_TEACHER_STEPS if quick else TEACHER_STEPS))
    args.progressive_steps = tuple(args.progressive_steps or (QUICK_PROGRESSIVE_STEPS if quick else PROGRESSIVE_STEPS))
    args.trust_images = args.trust_images or (200 if quick else 1000)
    if args.models is not None:
        args.teacher = args.teacher or args.models / "teacher"
        args.stage1 = args.stage1 or args.models / "stage1"
        args.progressive = args.progressive or args.models / "progressive"
    if not (args.teacher or args.stage1 or args.progressive):
        parser.error("give --models DIR or at least one of --teacher / --stage1 / --progressive")
    if args.num_prompts < 1 or args.images_per_prompt < 1:
        parser.error("--num-prompts and --images-per-prompt must be >= 1")
    return args


def plan_rows(args: argparse.Namespace) -> tuple[list[RowSpec], list[str]]:
    """The rows to run, in table order, and one note per thing that is missing."""
    rows, missing = [], []
    for model, path in (("teacher", args.teacher), ("stage-1", args.stage1)):
        if path is None:
            missing.append(f"{model}: no bundle given; rows skipped")
        elif not Path(path).is_dir():
            missing.append(f"{model}: no bundle at {path}; rows skipped")
        else:
            rows += [RowSpec(f"{model} {n}", model, Path(path), n) for n in args.teacher_steps]
    if args.progressive is None:
        missing.append("progressive: no folder given; rows skipped")
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


def measure(evaluator: Evaluator, images: np.ndarray, scenes: Sequence[Scene], real_features: np.ndarray) -> dict:
    """Per-attribute / all-five accuracy and the Frechet distance to ``real_features``."""
    predictions, features = evaluator.analyse(images)
    accuracy = score(predictions, scenes, evaluator.config.classes)
    fd = frechet_distance_features(features, real_features) if len(images) >= 2 else float("nan")
    return {**{name: accuracy[name] for name in ATTRIBUTES}, "all_attributes": accuracy["all"], "frechet": fd}


class Generator:
    """Loads each bundle once, warms it up once, then generates rows with shared settings."""

    def __init__(self, backend: str, w: float, seed: int, images_per_prompt: int, decoder: str | None = None):
        self.backend, self.w, self.seed, self.images_per_prompt = backend, w, seed, images_per_prompt
        self.decoder = decoder
        self._pipelines: dict[Path, object] = {}

    def pipeline(self, bundle: Path, warm_prompt: str):
        if bundle not in self._pipelines:
            from ane_diffusion import load_pipeline

            pipe = load_pipeline(str(bundle), backend=self.backend)
            self._run(pipe, [warm_prompt], 1)  # first calls pay one-off costs; keep them out of timings
            self._pipelines[bundle] = pipe
        return self._pipelines[bundle]

    def _run(self, pipe, prompts: list[str], steps: int):
        from ane_diffusion.pipeline import Settings

        settings = Settings(steps=steps, w=self.w, sampler="ddim", seed=self.seed, num_images=self.images_per_prompt,
                            decoder=self.decoder)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="this student was distilled for")
            return pipe.text_to_image(prompts, settings)

    def generate(self, spec: RowSpec, prompts: list[str]) -> tuple[list, dict]:
        """Images (scene-major) and timing figures of one row."""
        pipe = self.pipeline(spec.bundle, prompts[0])
        result = self._run(pipe, prompts, spec.steps)
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


def markdown_table(rows: list[dict]) -> str:
    header = ["model", "steps", "evals/image", *ATTRIBUTES, "all five", "Frechet", "s/image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], _fmt(row["steps"]), _fmt(row["evaluations_per_image"]),
                 *(_fmt(row[name]) for name in ATTRIBUTES), _fmt(row["all_attributes"]),
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
    lines += [f"{record['date']} on {record['machine']['platform']} ({s['backend']} backend, "
              f"{s['threads']} thread(s)); w = {s['w']}, DDIM, {s['num_prompts']} prompts x "
              f"{s['images_per_prompt']} seeds per table{' (quick mode)' if s['quick'] else ''}.", "",
              "Accuracy: fraction of generated images the attribute evaluator reads as the prompt's attribute "
              "(all five: every attribute right). Frechet: distance between evaluator features of the generated "
              "images and of as many real images of the same prompts (the real row: two independent real draws, "
              "the floor at this sample size). s/image: wall-clock per image, this run, same backend.", ""]
    for split, table in record["tables"].items():
        lines += [f"## {SPLIT_TITLES[split]}", "", markdown_table(table["rows"]), "",
                  f"Samples: `{table['samples']}` (columns: " +
                  "; ".join(f"{i + 1}. {p}" for i, p in enumerate(table["grid_prompts"])) + ")", ""]
        notes = [f"{row['model']}: {n}" for row in table["rows"] for n in row.get("notes", [])]
        if notes:
            lines += ["Notes: " + "; ".join(sorted(set(notes))), ""]
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

    generator = Generator(args.backend, w, args.seed, args.images_per_prompt, args.decoder)
    ipp = args.images_per_prompt
    tables, grids = {}, {}
    for split in SPLITS:
        scenes = choose_scenes(split, args.num_prompts, args.seed)
        if len(scenes) < args.num_prompts:
            missing.append(f"{split}: only {len(scenes)} scenes exist; {len(scenes)} prompts used, "
                           f"not {args.num_prompts}")
        prompts = [scene.caption(0) for scene in scenes]
        per_image = [scene for scene in scenes for _ in range(ipp)]
        real = render_real(scenes, ipp, args.seed + REAL_SEED_OFFSET[split])
        real_again = render_real(scenes, ipp, args.seed + REAL_SEED_OFFSET[split] + 1)
        real_features = evaluator.features(real)
        table = [{"model": "real images", "steps": None, "evaluations_per_image": 0,
                  **measure(evaluator, real, per_image, evaluator.features(real_again)),
                  "seconds_per_image": None, "images": len(real)}]
        grid_columns = min(GRID_COLUMNS, len(scenes))
        from PIL import Image

        grid_rows = [("real", [Image.fromarray(real[i * ipp]) for i in range(grid_columns)])]
        for spec in runnable:
            row_start = time.perf_counter()
            images, timing = generator.generate(spec, prompts)
            metrics = measure(evaluator, to_array(images), per_image, real_features)
            table.append({"model": spec.label, "steps": spec.steps, **timing, **metrics,
                          "bundle": str(spec.bundle), "notes": spec.notes})
            grid_rows.append((spec.label, [images[i * ipp] for i in range(grid_columns)]))
            print(f"[quality] {split:7s} {spec.label:16s} all {metrics['all_attributes']:.3f}  "
                  f"FD {metrics['frechet']:.2f}  {timing['seconds_per_image']:.4f}s/image "
                  f"({time.perf_counter() - row_start:.1f}s)", flush=True)
        grids[f"samples-{split}.png"] = sample_grid(grid_rows)
        tables[split] = {"title": SPLIT_TITLES[split], "prompts": prompts, "grid_prompts": prompts[:grid_columns],
                         "samples": f"samples-{split}.png", "rows": table}

    machine, versions = environment()
    record = {
        "benchmark": "quality",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions,
        "settings": {"teacher": _str(args.teacher), "stage1": _str(args.stage1),
                     "progressive": _str(args.progressive), "w": w, "sampler": "ddim",
                     "num_prompts": args.num_prompts, "images_per_prompt": ipp, "seed": args.seed,
                     "teacher_steps": list(args.teacher_steps), "progressive_steps": list(args.progressive_steps),
                     "backend": args.backend, "threads": args.threads, "quick": args.quick,
                     "decoder": args.decoder or "each model's default",
                     "evaluator": str(args.evaluator)},
        "evaluator": {"trusted": trusted, "threshold": TRUST_THRESHOLD, "stored_accuracy": evaluator.stored_accuracy,
                      "trust_check": {"images_per_split": args.trust_images, "accuracy": trust}},
        "columns": list(COLUMNS),
        "tables": tables,
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

#!/usr/bin/env python
"""The demo's tiny decoder against its full VAE decoder: PSNR on student latents, and attribute
accuracies with each decoder on the very same latents, paired (issue 13, part 4).

    python benchmarks/decoder_quality.py --out benchmarks/results/decoder-demo

For each embedded 4/2/1-step student and each split of the quality harness (train-split captions;
held-out (shape, colour) combinations), the student samples the harness's prompts and seeds
(``benchmarks/quality.py``'s choice: ``--num-prompts`` scenes, ``--images-per-prompt`` images each,
every image its own noise seed, w = 3, DDIM) once; its final latents are decoded by the full decoder
and by the tiny one.

1. PSNR (dB, images in [0, 1]) of the tiny decoder's image against the full decoder's, train split.
   A control row decodes the same latents with the tiny decoder *before* training (random weights):
   the metric must rank it far below.
   A sweep repeats the PSNR at each w the students take (0, 1, 3, 6) on the first prompts of
   each split: the decoder must hold across the guidance weight, not only at w = 3.
2. Per-attribute accuracy read by the harness's evaluator from each decoder's images, and the paired
   difference tiny - full with its 95% bootstrap interval (prompts resampled, the same draw for both
   decoders: :func:`benchmarks.quality.stats.bootstrap_interval` on the per-image difference), plus
   how many images each decoder alone gets wrong. Target (issue 13): at most 1 point on every
   attribute.
3. A control for the evaluator's sensitivity: the full decoder's images plus white noise of the
   same mean squared error as the tiny decoder's (:func:`noise_like`), read the same way. It tells
   whether the tiny decoder's flipped verdicts come from the size of its error or from its kind
   (blurred edges and corners): equal-size unstructured noise flips far fewer.

Writes ``OUT/decoder-quality.{json,md}``, ``OUT/pairs.png`` (full above tiny, a few prompts per
student) and ``OUT/flips.png`` (full above tiny, the first images whose verdicts differ: one strip
per student and split).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDENTS = {4: "demo-4step", 2: "demo-2step", 1: "demo-1step"}
W = 3.0
"""The harness's w for the students' rows (the demo teacher card's default)."""
TARGET_POINTS = 1.0


def sample_and_decode(pipe, prompts: list[str], steps: int, seeds: int, w: float = W) -> dict:
    """Sample once, decode the same latents with both decoders: ``{"z": (N, 4, h, w) latents /
    scaling factor, "full" / "tiny": (N, 3, H, W) images in [-1, 1]}``, prompt-major (the
    pipeline's order)."""
    import numpy as np

    from ane_diffusion.pipeline import Settings
    from benchmarks.quality.noise import text_to_image_distinct

    latents, full = [], []
    backend = pipe.backend
    original = backend.decode

    def capture(z, decoder="full"):  # the pipeline decodes one image a call
        latents.append(z.copy())
        full.append(original(z, decoder))
        return full[-1]

    backend.decode = capture
    try:
        text_to_image_distinct(pipe, prompts, Settings(steps=steps, w=w, sampler="ddim", seed=0, num_images=seeds,
                                                       decoder="full"))
    finally:
        backend.decode = original
    return {"z": np.concatenate(latents), "full": np.concatenate(full),
            "tiny": np.concatenate([original(z, "tiny") for z in latents])}


def image_psnrs(decoded: dict):
    """(N,) PSNR in dB of each tiny-decoder image against the full decoder's."""
    import numpy as np

    from ane_diffusion.distill.decoder import psnr_db

    return np.array([psnr_db(decoded["tiny"][i], decoded["full"][i]) for i in range(len(decoded["full"]))])


def psnr_row(pipe, steps: int, decoded: dict) -> dict:
    import numpy as np
    import torch

    from ane_diffusion.decoders import build_tiny, tiny_decoder
    from ane_diffusion.distill.decoder import psnr_db

    full = decoded["full"]
    torch.manual_seed(0)
    untrained = tiny_decoder(build_tiny(pipe.bundle.configs["vae_tiny"]), pipe.bundle.scaling_factor).eval()
    with torch.no_grad():
        control = untrained(torch.from_numpy(decoded["z"])).numpy()
    per = image_psnrs(decoded)
    return {"steps": steps, "model": STUDENTS[steps], "images": int(len(full)), "psnr_db_mean": float(per.mean()),
            "psnr_db_p5": float(np.percentile(per, 5)), "psnr_db_min": float(per.min()),
            "control_untrained_psnr_db": psnr_db(control, full)}


SWEEP_W = (0.0, 1.0, 3.0, 6.0)
"""The students' guidance weights the PSNR sweep covers (their cards' range is [0, 6])."""


def w_sweep_row(pipe, prompts: list[str], steps: int, split: str) -> dict:
    """PSNR of tiny against full at each of :data:`SWEEP_W`, one seed per prompt: ``{"split",
    "steps", "images", "psnr_db": {w: mean}, "psnr_db_p5": {w: 5th percentile}}``."""
    import numpy as np

    means, p5 = {}, {}
    for w in SWEEP_W:
        per = image_psnrs(sample_and_decode(pipe, prompts, steps, 1, w))
        means[str(w)], p5[str(w)] = float(per.mean()), float(np.percentile(per, 5))
    return {"split": split, "steps": steps, "images": len(prompts), "psnr_db": means, "psnr_db_p5": p5}


def read_as_prompted(evaluator, images, per_image: list) -> dict:
    """``{attribute or "all": (N,) bool}``: is each image (N, 3, H, W) in [-1, 1] read as its prompt."""
    from ane_diffusion.pipeline import to_pil
    from benchmarks.quality.harness import to_array
    from benchmarks.quality.stats import correctness

    return correctness(evaluator.analyse(to_array(to_pil(images)))[0], per_image, evaluator.config.classes)


def verdicts(evaluator, decoded: dict, per_image: list) -> dict:
    """``{"full" / "tiny": {attribute or "all": (N,) bool}}``: is each decoder's image read as its prompt."""
    return {decoder: read_as_prompted(evaluator, decoded[decoder], per_image) for decoder in ("full", "tiny")}


def paired_accuracy(evaluator, decoded: dict, per_image: list, groups) -> list[dict]:
    """Per attribute (and all five): accuracy with each decoder, tiny - full in points with its 95%
    interval, and the images only one decoder gets wrong."""
    return paired_rows(verdicts(evaluator, decoded, per_image), groups)


def paired_rows(correct: dict, groups) -> list[dict]:
    """:func:`paired_accuracy` from :func:`verdicts` already computed."""
    from benchmarks.quality.stats import bootstrap_interval

    rows = []
    for attribute in correct["full"]:
        full, tiny = correct["full"][attribute], correct["tiny"][attribute]
        low, high = bootstrap_interval(tiny.astype(float) - full.astype(float), groups)
        rows.append({"attribute": "all_attributes" if attribute == "all" else attribute,
                     "full": float(full.mean()), "tiny": float(tiny.mean()),
                     "difference_points": 100 * float(tiny.mean() - full.mean()),
                     "interval_points": [100 * low, 100 * high],
                     "wrong_only_with_tiny": int((full & ~tiny).sum()),
                     "wrong_only_with_full": int((tiny & ~full).sum())})
    return rows


ATTRIBUTE_ROWS = ("shape", "colour", "size", "position", "background")


def flips(rows: list[dict]) -> int:
    """Images whose verdict differs between the two versions, summed over the five attributes."""
    return sum(r["wrong_only_with_tiny"] + r["wrong_only_with_full"] for r in rows if r["attribute"] in ATTRIBUTE_ROWS)


def flipped(correct: dict):
    """(N,) bool: images whose verdict on any of the five attributes differs between the decoders
    (``correct``: :func:`verdicts`)."""
    import numpy as np

    return np.logical_or.reduce([correct["full"][a] != correct["tiny"][a] for a in ATTRIBUTE_ROWS])


def noise_like(full, tiny, seed: int = 0):
    """``full`` (N, 3, H, W) in [-1, 1] plus Gaussian noise, clipped to [-1, 1], whose mean squared
    error against ``full`` equals that of ``tiny`` (so the same PSNR): the noise's scale is found by
    bisection, since clipping at saturated pixels removes part of it. float32."""
    import numpy as np

    full = np.clip(np.asarray(full, np.float64), -1, 1)
    target = float(np.mean((np.clip(tiny, -1, 1) - full) ** 2))
    unit = np.random.default_rng(seed).standard_normal(full.shape)

    def error(scale: float) -> float:
        return float(np.mean((np.clip(full + scale * unit, -1, 1) - full) ** 2))

    low, high = 0.0, 2.0 * np.sqrt(target) + 1e-12
    while error(high) < target and high < 1e3:
        high *= 2
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if error(mid) < target else (low, mid)
    return np.clip(full + high * unit, -1, 1).astype(np.float32)


def pairs_png(pairs: list, path: Path) -> None:
    import numpy as np
    from PIL import Image

    from ane_diffusion.pipeline import to_pil

    strips = [np.concatenate([np.asarray(im) for im in to_pil(images)], axis=1)
              for images in pairs]  # per student: full, then tiny
    grid = np.concatenate(strips, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.Resampling.NEAREST).save(path)


FLIPS_SHOWN = 8


def flips_png(strips: list, path: Path) -> None:
    """One strip per (student, split), each (2, n <= FLIPS_SHOWN, 3, H, W): full above tiny, padded
    with white to FLIPS_SHOWN images and separated by a white line."""
    import numpy as np
    from PIL import Image

    from ane_diffusion.pipeline import to_pil

    rows = []
    for strip in strips:
        size = strip.shape[-1]
        canvas = np.full((2 * size + 4, FLIPS_SHOWN * size, 3), 255, np.uint8)
        for r in range(2):
            for i, image in enumerate(to_pil(strip[r]) if strip.shape[1] else []):
                canvas[r * size:(r + 1) * size, i * size:(i + 1) * size] = np.asarray(image)
        rows.append(canvas)
    grid = np.concatenate(rows, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.Resampling.NEAREST).save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decoder-demo")
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--sweep-prompts", type=int, default=32,
                        help="prompts (one seed each) per split and student for the PSNR sweep over w (0: no sweep)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from ane_diffusion.api import load_pipeline
    from ane_diffusion.benchmarking import report as rep
    from ane_diffusion.distill.decoder import psnr_db
    from benchmarks.quality.evaluator import Evaluator
    from benchmarks.quality.harness import SPLITS, choose_scenes

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator.load()
    psnr, accuracy, pairs, noise, flip_strips, sweep = [], [], [], [], [], []
    for steps in STUDENTS:
        pipe = load_pipeline(STUDENTS[steps])
        for split in SPLITS:
            scenes = choose_scenes(split, args.num_prompts, 0)
            prompts = [scene.caption(0) for scene in scenes]
            per_image = [scene for scene in scenes for _ in range(args.images_per_prompt)]
            groups = np.repeat(np.arange(len(scenes)), args.images_per_prompt)
            decoded = sample_and_decode(pipe, prompts, steps, args.images_per_prompt)
            if split == "train":
                psnr.append(psnr_row(pipe, steps, decoded))
                pairs.append(np.stack([decoded["full"][:6], decoded["tiny"][:6]]))
            correct = verdicts(evaluator, decoded, per_image)
            rows = paired_rows(correct, groups)
            shown = np.flatnonzero(flipped(correct))[:FLIPS_SHOWN]
            flip_strips.append(np.stack([decoded["full"][shown], decoded["tiny"][shown]]))
            for row in rows:
                accuracy.append({"split": split, "steps": steps, "prompts": len(scenes), **row})
            noisy = noise_like(decoded["full"], decoded["tiny"], seed=steps)
            noise.append({"split": split, "steps": steps, "tiny_psnr_db": psnr_db(decoded["tiny"], decoded["full"]),
                          "noise_psnr_db": psnr_db(noisy, decoded["full"]), "tiny_flips": flips(rows),
                          "noise_flips": flips(paired_rows({"full": correct["full"],
                                                            "tiny": read_as_prompted(evaluator, noisy, per_image)},
                                                           groups))})
            if args.sweep_prompts > 0:
                sweep.append(w_sweep_row(pipe, prompts[:args.sweep_prompts], steps, split))
            print(f"[decoder-quality] {steps} steps {split}: done", flush=True)
    pairs_png([p for ps in pairs for p in ps], args.out / "pairs.png")
    flips_png(flip_strips, args.out / "flips.png")
    record = {"benchmark": "decoder quality (demo)", "date": rep.now(), "machine": rep.machine(),
              "versions": rep.versions(), "git_commit": rep.git_commit(ROOT),
              "settings": vars(args) | {"out": str(args.out), "w": W, "sampler": "ddim", "seed": 0},
              "psnr": psnr, "accuracy_differences": accuracy, "noise_control": noise, "w_sweep": sweep,
              "target_met": all(abs(d["difference_points"]) <= TARGET_POINTS for d in accuracy)}
    rep.write_json(args.out / "decoder-quality.json", record)
    rep.write_text(args.out / "decoder-quality.md", markdown(record))
    print(args.out / "decoder-quality.md")
    return 0


def markdown(r: dict) -> str:
    s, m = r["settings"], r["machine"]
    lines = ["# The demo's tiny decoder against its full VAE decoder", "",
             f"{r['date']} on {m['cpu']} ({m['cores']} cores), {s['threads']} thread. Students: "
             f"the embedded 4/2/1-step models; w = {s['w']}; "
             f"DDIM; the quality harness's prompts, {s['images_per_prompt']} images each (every image its own noise "
             "seed).", "",
             "## PSNR of the tiny decoder's image against the full decoder's, same latents", "",
             "Latents: each student's own samples for the train-split prompts. Control: the same tiny "
             "architecture before training.", "",
             "| student | images | PSNR mean (dB) | 5th percentile | min | control: untrained tiny decoder (dB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in r["psnr"]:
        lines.append(f"| {row['steps']} step{'s' if row['steps'] > 1 else ''} | {row['images']} | "
                     f"{row['psnr_db_mean']:.2f} | {row['psnr_db_p5']:.2f} | {row['psnr_db_min']:.2f} | "
                     f"{row['control_untrained_psnr_db']:.2f} |")
    lines += ["", "Pairs (`pairs.png`): for each student (4, 2, 1 steps), the full decoder's images above the "
              "tiny decoder's.", "",
              "## Attribute accuracy with each decoder, same latents (paired)", "",
              "Difference: tiny - full in points, with its 95% bootstrap interval (prompts resampled); the "
              "last two columns count the images only one decoder's version is read wrongly.", "",
              "| split | student steps | attribute | full | tiny | tiny - full (points) | 95% interval | "
              "wrong only with tiny | wrong only with full |",
              "|---|---:|---|---:|---:|---:|---|---:|---:|"]
    for d in r["accuracy_differences"]:
        low, high = d["interval_points"]
        lines.append(f"| {d['split']} | {d['steps']} | {d['attribute']} | {d['full']:.3f} | {d['tiny']:.3f} | "
                     f"{d['difference_points']:+.1f} | [{low:+.1f}, {high:+.1f}] | {d['wrong_only_with_tiny']} | "
                     f"{d['wrong_only_with_full']} |")
    worst = max(r["accuracy_differences"], key=lambda d: abs(d["difference_points"]))
    lines += ["", f"Target (at most {TARGET_POINTS:g} point on every attribute): "
              f"**{'met' if r['target_met'] else 'NOT met'}**; largest difference "
              f"{worst['difference_points']:+.1f} points ({worst['split']}, {worst['steps']} "
              f"step{'s' if worst['steps'] > 1 else ''}, "
              f"{worst['attribute']}).", ""]
    if r.get("noise_control"):
        lines += ["## Control: unstructured error of the same size", "",
                  "Flips: images whose verdict differs from the full decoder's, summed over the five "
                  "attributes. Noise: the full decoder's images plus white noise with the tiny decoder's "
                  "mean squared error (PSNR over the whole set).", "",
                  "| split | student steps | tiny: PSNR (dB) | tiny: flips | noise: PSNR (dB) | noise: flips |",
                  "|---|---:|---:|---:|---:|---:|"]
        for c in r["noise_control"]:
            lines.append(f"| {c['split']} | {c['steps']} | {c['tiny_psnr_db']:.2f} | {c['tiny_flips']} | "
                         f"{c['noise_psnr_db']:.2f} | {c['noise_flips']} |")
        lines.append("")
    if r.get("w_sweep"):
        ws = list(r["w_sweep"][0]["psnr_db"])
        lines += ["## PSNR across the guidance weight", "",
                  f"Tiny against full on the same latents, the first {r['w_sweep'][0]['images']} prompts of each "
                  "split, one seed each, at each w the students take: mean dB (5th percentile).", "",
                  "| split | student steps | " + " | ".join(f"w = {float(w):g}" for w in ws) + " |",
                  "|---|---:|" + "---:|" * len(ws)]
        for row in r["w_sweep"]:
            lines.append(f"| {row['split']} | {row['steps']} | " + " | ".join(
                f"{row['psnr_db'][w]:.2f} ({row['psnr_db_p5'][w]:.2f})" for w in ws) + " |")
        lines.append("")
    lines += ["Flipped images (`flips.png`): one strip per student (4, 2, 1 steps) and split (train, then "
              "held-out), the full decoder's image above the tiny decoder's, the first (up to "
              f"{FLIPS_SHOWN}) whose verdict on some attribute differs.", "",
              "Raw numbers: `decoder-quality.json`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""The demo's tiny decoder against its full VAE decoder: PSNR on student latents, and the quality
harness's attribute accuracies with each decoder (issue 13, part 4).

    python benchmarks/decoder_quality.py --out benchmarks/results/decoder-demo

1. PSNR (dB, images in [0, 1]) of the tiny decoder's image against the full decoder's on the same
   latents: the embedded 4/2/1-step students' own samples for the harness's train-split prompts,
   ``--images-per-prompt`` seeds each. A control row decodes the same latents with the tiny
   decoder *before* training (random weights): the metric must rank it far below.
2. ``benchmarks/quality.py`` on the same students, once with ``--decoder full`` and once with
   ``--decoder tiny`` (same prompts, seeds and latents: only the decoder differs); the table of
   per-attribute differences, and the target (at most 1 point on every attribute).

Writes ``OUT/decoder-quality.{json,md}``, ``OUT/full/`` and ``OUT/tiny/`` (the two harness runs,
with their sample grids) and ``OUT/pairs.png`` (full above tiny, a few prompts per student).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDENTS = {4: "demo-4step", 2: "demo-2step", 1: "demo-1step"}


def write_bundles(folder: Path) -> Path:
    """The embedded students as plain bundle folders (``steps-N``), as the harness reads them."""
    from ane_diffusion.bundle import resolve_bundle
    from ane_diffusion.torch_models import load_components, save_bundle

    folder.mkdir(parents=True, exist_ok=True)
    for steps, name in STUDENTS.items():
        target = folder / f"steps-{steps}"
        if target.exists():
            continue
        bundle = resolve_bundle(name)
        save_bundle(target, load_components(bundle), bundle.configs["scheduler"], bundle.tokenizer_files, bundle.card)
    return folder


def psnr_rows(prompts: list[str], seeds: int) -> list[dict]:
    import numpy as np
    import torch

    from ane_diffusion.api import load_pipeline
    from ane_diffusion.decoders import build_tiny, tiny_decoder
    from ane_diffusion.distill.decoder import psnr_db
    from ane_diffusion.pipeline import Settings

    rows = []
    for steps, name in STUDENTS.items():
        pipe = load_pipeline(name)
        captured = []
        backend = pipe.backend
        original = backend.decode

        def capture(latents, decoder="full"):
            captured.append(latents.copy())
            return original(latents, decoder)

        backend.decode = capture
        pipe.text_to_image(prompts, Settings(steps=steps, seed=0, num_images=seeds, decoder="full"))
        backend.decode = original
        z = np.concatenate(captured)  # latents / scaling factor, as the decoders take them
        full = original(z)
        tiny = original(z, decoder="tiny")
        torch.manual_seed(0)
        untrained = tiny_decoder(build_tiny(pipe.bundle.configs["vae_tiny"]), pipe.bundle.scaling_factor).eval()
        with torch.no_grad():
            control = untrained(torch.from_numpy(z)).numpy()
        per = np.array([psnr_db(tiny[i], full[i]) for i in range(len(z))])
        rows.append({"steps": steps, "model": name, "images": int(len(z)), "psnr_db_mean": float(per.mean()),
                     "psnr_db_p5": float(np.percentile(per, 5)), "psnr_db_min": float(per.min()),
                     "control_untrained_psnr_db": psnr_db(control, full),
                     "pairs": (np.stack([full[:6], tiny[:6]]) if steps else None)})
    return rows


def pairs_png(rows: list[dict], path: Path) -> None:
    import numpy as np
    from PIL import Image

    strips = []
    for row in rows:
        pairs = row.pop("pairs")
        for images in pairs:  # full, then tiny
            strip = np.concatenate([((np.clip(im, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
                                    for im in images], axis=1)
            strips.append(strip)
    grid = np.concatenate(strips, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.Resampling.NEAREST).save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decoder-demo")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import torch

    from ane_diffusion.benchmarking import report as rep
    from benchmarks.quality.harness import SPLITS, choose_scenes

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = [s.caption() for s in choose_scenes(SPLITS[0], args.num_prompts, 0)]
    rows = psnr_rows(prompts, args.images_per_prompt)
    pairs_png(rows, args.out / "pairs.png")
    import tempfile

    work = tempfile.TemporaryDirectory(prefix="decoder-quality-")  # float32 copies of the students
    bundles = write_bundles(Path(work.name) / "bundles")
    tables = {}
    for decoder in ("full", "tiny"):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--progressive", str(bundles),
               "--progressive-steps", *map(str, STUDENTS), "--decoder", decoder, "--out", str(args.out / decoder),
               "--num-prompts", str(args.num_prompts), "--images-per-prompt", str(args.images_per_prompt),
               "--threads", str(args.threads)]
        subprocess.run(cmd, check=True, cwd=ROOT)
        tables[decoder] = json.loads((args.out / decoder / "quality.json").read_text())
    work.cleanup()
    diffs = compare(tables)
    record = {"benchmark": "decoder quality (demo)", "date": rep.now(), "machine": rep.machine(),
              "versions": rep.versions(), "git_commit": rep.git_commit(ROOT),
              "settings": vars(args) | {"out": str(args.out), "prompts_for_psnr": "train split, seed 0"},
              "psnr": rows, "accuracy_differences": diffs,
              "target_met": all(abs(d["difference_points"]) <= 1.0 for d in diffs)}
    rep.write_json(args.out / "decoder-quality.json", record)
    rep.write_text(args.out / "decoder-quality.md", markdown(record))
    print(args.out / "decoder-quality.md")
    return 0


def compare(tables: dict) -> list[dict]:
    """Per split, student and attribute: tiny accuracy minus full accuracy, in points."""
    from benchmarks.quality.evaluator import ATTRIBUTES

    out = []
    for split in ("train", "heldout"):
        rows = {d: {r["steps"]: r for r in tables[d]["tables"][split]["rows"] if r["model"].startswith("progressive")}
                for d in tables}
        for steps in sorted(rows["full"], reverse=True):
            for attribute in (*ATTRIBUTES, "all_attributes"):
                full, tiny = rows["full"][steps][attribute], rows["tiny"][steps][attribute]
                out.append({"split": split, "steps": steps, "attribute": attribute, "full": full, "tiny": tiny,
                            "difference_points": 100 * (tiny - full)})
    return out


def markdown(r: dict) -> str:
    s, m = r["settings"], r["machine"]
    lines = ["# The demo's tiny decoder against its full VAE decoder", "",
             f"{r['date']} on {m['cpu']} ({m['cores']} cores), {s['threads']} thread. Students: the embedded "
             "4/2/1-step models; w = their default; DDIM.", "",
             "## PSNR of the tiny decoder's image against the full decoder's, same latents", "",
             f"Latents: each student's own samples for {s['num_prompts']} train-split prompts x "
             f"{s['images_per_prompt']} seeds. Control: the same tiny architecture before training.", "",
             "| student | images | PSNR mean (dB) | 5th percentile | min | control: untrained tiny decoder (dB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in r["psnr"]:
        lines.append(f"| {row['steps']} step{'s' if row['steps'] > 1 else ''} | {row['images']} | "
                     f"{row['psnr_db_mean']:.2f} | {row['psnr_db_p5']:.2f} | {row['psnr_db_min']:.2f} | "
                     f"{row['control_untrained_psnr_db']:.2f} |")
    lines += ["", "Pairs (`pairs.png`): for each student (4, 2, 1 steps), the full decoder's images above the "
              "tiny decoder's.", "",
              "## Attribute accuracy with each decoder (`benchmarks/quality.py`, same prompts and seeds)", "",
              "| split | student steps | attribute | full | tiny | tiny - full (points) |",
              "|---|---:|---|---:|---:|---:|"]
    for d in r["accuracy_differences"]:
        lines.append(f"| {d['split']} | {d['steps']} | {d['attribute']} | {d['full']:.3f} | {d['tiny']:.3f} | "
                     f"{d['difference_points']:+.1f} |")
    worst = max(r["accuracy_differences"], key=lambda d: abs(d["difference_points"]))
    lines += ["", f"Target (at most 1 point on every attribute): **{'met' if r['target_met'] else 'NOT met'}**; "
              f"largest difference {worst['difference_points']:+.1f} points ({worst['split']}, {worst['steps']} "
              f"steps, {worst['attribute']}).", "", "Raw numbers: `decoder-quality.json`; harness runs in `full/` and "
              "`tiny/`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

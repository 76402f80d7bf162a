#!/usr/bin/env python
"""The demo student under the arithmetic of Apple's Swift schedulers, against our own DDIM sampler.

    python benchmarks/apple_schedulers.py --out benchmarks/results/apple-schedulers

What an ``apple-pipeline`` export sees inside Apple's ``StableDiffusionPipeline`` (guidanceScale < 1:
one batch-1 UNet call per step) is reproduced with the PyTorch student: its output converted to
epsilon exactly as the export does (:func:`ane_diffusion.schedule.eps_from_prediction`, w fixed at
the card's default), stepped by diffusers' ``DPMSolverMultistepScheduler`` configured as Apple's
Swift one is (DPM-Solver++, second order, lower-order final steps, final step to t = 0), with the
timesteps Apple's Swift code computes for each spacing (written from its source):

- linspace: ``round(linspace(0, 999, n + 1))[1:]`` reversed -> [999, 749, 500, 250] at n = 4;
- leading: ``1 + k * (999 // (n + 1))`` for k = 1..n, reversed -> [797, 598, 399, 200];
- karras: Karras sigmas (rho 7) from sigma_max to sigma_min mapped to timesteps -> [999, 687, 146, 0]
X

Apple's pipeline decodes the scheduler's last ``modelOutputs`` entry (the x0 estimate of the last
UNet call), not the latent after the last step; so does this script. Each setting is scored with the
quality harness's attribute evaluator and Frechet distance (benchmarks/quality) on the same prompts
and seeds, plus the PSNR of its images against our DDIM sampler's (trailing grid [999, 749, 499, 249]).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def apple_timesteps(spacing: str, n: int, alphas_cumprod: np.ndarray) -> list[int]:
    """The timesteps of Apple's Swift ``DPMSolverMultistepScheduler`` for ``spacing`` (its arithmetic)."""
    T = len(alphas_cumprod)
    if spacing == "linspace":
        return [int(round(v)) for v in np.linspace(0, T - 1, n + 1, dtype=np.float32)[1:][::-1]]
    if spacing == "leading":
        ratio = (T - 1) // (n + 1)
        return [1 + k * ratio for k in range(1, n + 1)][::-1]
    if spacing == "karras":
        sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod).astype(np.float32)
        log_sigmas = np.log(sigmas)
        rho = 7.0
        ramp = np.linspace(0, 1, n, dtype=np.float32)
        lo, hi = sigmas[0] ** (1 / rho), sigmas[-1] ** (1 / rho)
        out = []
        for s in (hi + ramp * (lo - hi)) ** rho:
            d = math.log(s) - log_sigmas
            low = max(min(int(np.sum(d >= 0)) - 1, T - 2), 0)
            w = np.clip((log_sigmas[low] - math.log(s)) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
            out.append(int(round((1 - w) * low + w * (low + 1))))
        return out
    raise ValueError(spacing)


def apple_dpm_x0(pipe, cond, z, w: float, timesteps: list[int]) -> np.ndarray:
    """Apple's loop: DPM-Solver++(2M) on epsilon; returns the last x0 estimate (what Apple decodes)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    from ane_diffusion.schedule import eps_from_prediction

    config = pipe.bundle.configs["scheduler"]
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=int(config.get("num_train_timesteps", 1000)), beta_start=float(config.get("beta_start", 0.00085)),
        beta_end=float(config.get("beta_end", 0.012)), beta_schedule=config.get("beta_schedule", "scaled_linear"),
        algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True, prediction_type="epsilon",
        final_sigmas_type="sigma_min")
    scheduler.set_timesteps(timesteps=list(timesteps))
    latents = torch.from_numpy(z.astype(np.float32))
    kind = pipe.card.prediction_type
    for t in scheduler.timesteps:
        t = int(t)
        out = pipe.backend.predict(latents.numpy(), t, cond, np.full(z.shape[0], w, np.float32))
        alpha, sigma = pipe.schedule.alpha_sigma(t)
        eps = eps_from_prediction(out, latents.numpy(), alpha, sigma, kind).astype(np.float32)
        latents = scheduler.step(torch.from_numpy(eps), t, latents).prev_sample
    return scheduler.model_outputs[-1].numpy()


def run(args) -> dict:
    import torch

    from ane_diffusion import load_pipeline
    from ane_diffusion.noise import batch_noise
    from ane_diffusion.pipeline import Settings, Timings, to_pil
    from benchmarks.quality.evaluator import DEFAULT_DIR, Evaluator
    from benchmarks.quality.harness import REAL_SEED_OFFSET, choose_scenes, measure, render_real, to_array
    from ane_diffusion_conversion.verify import psnr

    torch.set_num_threads(1)
    pipe = load_pipeline(args.model, backend="torch")
    card = pipe.card
    w = card.default_w if args.w is None else args.w
    steps = args.steps or int(card.steps or card.recommended_steps)
    evaluator = Evaluator.load(DEFAULT_DIR)
    abar = pipe.schedule.alphas_cumprod
    settings = {"ours: DDIM, trailing": None}
    for spacing in ("linspace", "leading", "karras"):
        settings[f"Apple DPM-Solver++ {spacing}"] = apple_timesteps(spacing, steps, abar)
    result = {"model": args.model, "w": w, "steps": steps, "splits": {}}
    for split in ("train", "heldout"):
        scenes = choose_scenes(split, args.num_prompts, args.seed)
        prompts = [scene.caption(0) for scene in scenes]
        per_image = [scene for scene in scenes for _ in range(args.images_per_prompt)]
        real = render_real(scenes, args.images_per_prompt, args.seed + REAL_SEED_OFFSET[split])
        real_features = evaluator.features(real)
        images = {name: [] for name in settings}
        for prompt in prompts:
            cond = pipe.encode_prompts([prompt], Timings())
            cond = np.repeat(cond, args.images_per_prompt, axis=0)
            ours = pipe.text_to_image([prompt], Settings(steps=steps, w=w, sampler="ddim", seed=args.seed,
                                                         num_images=args.images_per_prompt))
            images["ours: DDIM, trailing"] += ours.images
            factor = pipe.bundle.vae_scale_factor
            shape = (pipe.bundle.latent_channels, pipe.bundle.default_size // factor, pipe.bundle.default_size // factor)
            z, _ = batch_noise(args.seed, args.images_per_prompt, shape)  # the same noise as ours
            for name, timesteps in settings.items():
                if timesteps is None:
                    continue
                x0 = apple_dpm_x0(pipe, cond, z, w, timesteps)
                images[name] += to_pil(pipe.decode(x0, Timings()))
        arrays = {name: to_array(imgs) for name, imgs in images.items()}
        rows = []
        for name, timesteps in settings.items():
            scores = measure(evaluator, arrays[name], per_image, real_features)
            scores["psnr_vs_ours"] = (None if timesteps is None else
                                      float(np.mean([psnr(a.astype(np.float32), b.astype(np.float32))
                                                     for a, b in zip(arrays[name], arrays["ours: DDIM, trailing"])])))
            rows.append({"setting": name, "timesteps": timesteps or [int(t) for t in
                         __import__("ane_diffusion.schedule", fromlist=["x"]).trailing_timesteps(steps)], **scores})
        result["splits"][split] = rows
        if split == "heldout":
            from benchmarks.quality.harness import sample_grid

            grid = sample_grid([(name, imgs[:8]) for name, imgs in images.items()])
            grid.save(Path(args.out).with_suffix(".png"))
    return result


def markdown(result: dict) -> str:
    lines = [f"# Demo student under Apple's scheduler arithmetic ({result['date']}, {result['machine']})", "",
             f"`{result['model']}` student, {result['steps']} steps, w = {result['w']:g} (baked in, as in an "
             "apple-pipeline export). Accuracy: the quality harness's attribute evaluator (all five attributes "
             "right); FD: Frechet distance of evaluator features to real renders (lower is better); PSNR: "
             "against our DDIM images from the same noise (Apple's definition, 8-bit images).", ""]
    for split, rows in result["splits"].items():
        lines += [f"## {split} prompts", "", "| setting | timesteps | all-five accuracy | FD | PSNR vs ours |",
                  "|---|---|---:|---:|---:|"]
        for r in rows:
            p = "-" if r["psnr_vs_ours"] is None else f"{r['psnr_vs_ours']:.1f} dB"
            lines.append(f"| {r['setting']} | {r['timesteps']} | {r['all_attributes']:.3f} | {r['frechet']:.2f} | {p} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--w", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/apple-schedulers")
    args = parser.parse_args(argv)
    result = run(args)
    result.update(date=time.strftime("%Y-%m-%d"), machine=f"{platform.machine()} {platform.system()}")
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

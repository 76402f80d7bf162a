"""Backfill the shipped demo models' cards with ``latent_range`` (the bounds of ``--clamp``).

The recipe now records the range itself (the teacher stage from its training latents, stage 1
from the distillation data, stage 2 by inheritance); the shipped models predate that, so this
measures the same latents the recipe would have used, with the shipped VAE:

* teacher: the recipe's ``data`` stage images (``make_dataset(train_images, seed)``);
* stage-1 and stage-2 students: the distillation images (``write_image_folder(distill_images,
  seed + 1)``: the same scenes as ``make_dataset(distill_images, seed + 1)``).

Run from the repository root (about a minute on one core)::

    python benchmarks/results/issue11/latent_ranges.py            # prints the ranges
    python benchmarks/results/issue11/latent_ranges.py --write    # and writes them into the cards
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

STUDENTS = ("stage1", "steps-8", "steps-4", "steps-2", "steps-1")


def measure(vae, n: int, seed: int):
    from ane_diffusion.demo.shapes import make_dataset
    from ane_diffusion.demo.train_teacher import encode_latents
    from ane_diffusion.latent_range import LatentRange

    images, _, _ = make_dataset(n, resolution=32, seed=seed, split="train")
    return LatentRange.from_latents(encode_latents(vae, images)).to_dict()


def rewrite(path: Path, update) -> None:
    data = json.loads(path.read_text())
    update(data)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write the ranges into the shipped cards")
    args = parser.parse_args()
    import torch
    from diffusers import AutoencoderKL

    from ane_diffusion.bundle import embedded_root
    from ane_diffusion.demo.recipe import RecipeSettings

    torch.set_num_threads(1)
    root, settings = embedded_root(), RecipeSettings()
    vae = AutoencoderKL.from_pretrained(str(root / "vae"), use_safetensors=True, torch_dtype=torch.float32).eval()
    teacher = measure(vae, settings.train_images, settings.seed)
    student = measure(vae, settings.distill_images, settings.seed + 1)
    print(json.dumps({"teacher": teacher, "students": student}, indent=2))
    if not args.write:
        return
    rewrite(root / "models" / "teacher" / "ane_diffusion.json", lambda card: card.update(latent_range=teacher))
    for name in STUDENTS:
        rewrite(root / "models" / name / "ane_diffusion.json", lambda card: card.update(latent_range=student))
    rewrite(root / "coreml" / "ane_diffusion_coreml.json",
            lambda contract: contract["model"].update(latent_range=student))


if __name__ == "__main__":
    main()

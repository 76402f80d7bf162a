#!/usr/bin/env python
"""A LoRA stage-1 student of the embedded demo teacher, trained with the demo recipe's stage-1
settings (:class:`ane_diffusion.demo.recipe.RecipeSettings`: same images, batch, updates, warm-up,
EMA, w range) except the LoRA rank and its learning rate; for the quality table's "stage-1 LoRA" rows.

    python benchmarks/distill_lora_demo.py --work runs/demo-lora --rank 16 --lr 1e-3
    python benchmarks/quality.py --stage1 runs/demo-lora/stage1-embedded \\
        --stage1-lora runs/demo-lora/stage1-lora-run/student --w 3 --out benchmarks/results/quality-lora

Writes WORK/stage1-lora-run (the run: ``student/`` fused bundle, ``student-lora.safetensors``
adapter, log) and WORK/stage1-embedded (the shipped full fine-tune as a folder, so the harness
evaluates both under the same settings). The teacher is the embedded one (stored in float16, loaded
as float32); the shipped stage-1 was trained from the recipe's float32 teacher.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def export_embedded(name: str, folder: Path) -> Path:
    from ane_diffusion.bundle import resolve_bundle
    from ane_diffusion.torch_models import load_components, save_bundle

    if folder.exists():
        return folder
    bundle = resolve_bundle(name)
    save_bundle(folder, load_components(bundle), bundle.configs["scheduler"], bundle.tokenizer_files, bundle.card)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/demo-lora"))
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--updates", type=int, default=None, help="default: the recipe's guidance_updates")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from ane_diffusion.memory import keep_freed_memory

    keep_freed_memory()
    import torch

    from ane_diffusion.demo.recipe import Recipe, RecipeSettings
    from ane_diffusion.distill import distill_guidance

    torch.set_num_threads(args.threads)
    settings = RecipeSettings()
    recipe = Recipe(args.work, settings, assets=args.work / "unused-assets")
    teacher = export_embedded("demo-teacher", args.work / "teacher-embedded")
    export_embedded("demo-stage1", args.work / "stage1-embedded")
    cfg = recipe.distill_config(teacher, args.work / "stage1-lora-run", args.updates or settings.guidance_updates,
                                w_min=settings.w_min, w_max=settings.w_max, prediction_type="v_prediction")
    cfg.lr, cfg.lora_rank = args.lr, args.rank
    cfg.resume = (args.work / "stage1-lora-run" / "checkpoint").is_dir()
    print(distill_guidance(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

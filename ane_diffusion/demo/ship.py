"""Packing the trained demo models into ``ane_diffusion/assets/demo`` (float16 safetensors).

Layout: the shared ``text_encoder/``, ``vae/``, ``tokenizer/`` and ``model_index.json`` once at the
top, and ``models/NAME/`` with each model's ``unet/``, ``scheduler/`` and card. Distillation
never changes the text encoder or the VAE, so they are checked to be identical across models
before they are shared.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

SHARED = ("text_encoder", "vae", "tokenizer")
CHECK_PROMPTS = ["a small red circle at the top left on a blue background",
                 "a large green triangle in the center on a gray background",
                 "a white cross at the bottom right"]


def _half_copy(source: Path, target: Path) -> None:
    """A component folder with its safetensors weights stored in float16."""
    from safetensors.numpy import load_file, save_file

    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.suffix == ".safetensors":
            tensors = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in load_file(item).items()}
            save_file(tensors, target / item.name)
        else:
            shutil.copy(item, target / item.name)


def _same_weights(a: Path, b: Path) -> bool:
    from safetensors.numpy import load_file

    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)


def write_embedded(root: Path, models: dict, tiny_decoder: Path | None = None) -> dict:
    """Write the embedded layout into ``root``; returns the size in bytes of each part.
    ``tiny_decoder``: a trained ``vae_tiny`` folder (stage 3), shared by every model like the VAE."""
    from ..bundle import EMBEDDED_MODELS, WEIGHT_FILES

    missing = sorted(set(EMBEDDED_MODELS.values()) - set(models))
    if missing:
        raise ValueError(f"cannot ship: the recipe has not produced {', '.join(missing)}")
    teacher = models["teacher"]
    for name, folder in models.items():
        for component in ("text_encoder", "vae"):
            if not _same_weights(folder / component / WEIGHT_FILES[component],
                                 teacher / component / WEIGHT_FILES[component]):
                raise ValueError(f"{name}'s {component} differs from the teacher's: it cannot be shared")
    shutil.copy(teacher / "model_index.json", root / "model_index.json")
    _half_copy(teacher / "text_encoder", root / "text_encoder")
    _half_copy(teacher / "vae", root / "vae")
    shutil.copytree(teacher / "tokenizer", root / "tokenizer")
    if tiny_decoder is not None:
        add_tiny_decoder(root, tiny_decoder)
    shutil.copytree(teacher / "scheduler", root / "scheduler")
    for name, folder in models.items():
        layer = root / "models" / name
        _half_copy(folder / "unet", layer / "unet")
        shutil.copytree(folder / "scheduler", layer / "scheduler")
        shutil.copy(folder / "ane_diffusion.json", layer / "ane_diffusion.json")
    sizes = {part: _size(root / part) for part in SHARED + (("vae_tiny",) if tiny_decoder is not None else ())}
    sizes.update({f"models/{name}": _size(root / "models" / name) for name in models})
    sizes["total"] = _size(root)
    return sizes


def add_tiny_decoder(root: Path, tiny_decoder: Path) -> Path:
    """Copy a trained ``vae_tiny`` folder into the embedded layout ``root`` in float16."""
    target = Path(root) / "vae_tiny"
    if target.exists():
        shutil.rmtree(target)
    _half_copy(Path(tiny_decoder), target)
    return target


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def check_float16(bundle_path: Path, steps: int = 4) -> dict:
    """PSNR of images made with float16-rounded weights against the float32 originals."""
    import torch

    from ..backends.torch_backend import TorchBackend
    from ..bundle import resolve_bundle
    from ..pipeline import Pipeline, Settings
    from ..torch_models import load_components

    bundle = resolve_bundle(bundle_path)
    full = load_components(bundle)
    rounded = load_components(bundle)
    with torch.no_grad():
        for module in rounded.modules().values():
            for p in module.parameters():
                p.copy_(p.half().float())
    images = []
    for components in (full, rounded):
        pipe = Pipeline(bundle, TorchBackend(bundle, device="cpu", components=components))
        result = pipe.text_to_image(CHECK_PROMPTS, Settings(steps=steps, seed=0))
        images.append(np.stack([np.asarray(im, np.float64) for im in result.images]))
    mse = float(np.mean((images[0] - images[1]) ** 2))
    psnr = 10 * np.log10(255.0**2 / max(mse, 1e-12))
    if psnr < 35:
        raise ValueError(f"float16 weights change the images too much ({psnr:.1f} dB < 35 dB): ship float32")
    return {"psnr_db": round(psnr, 2), "prompts": CHECK_PROMPTS, "steps": steps}


__all__ = ["add_tiny_decoder", "check_float16", "write_embedded"]

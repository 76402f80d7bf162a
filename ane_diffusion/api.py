"""The Python API; the ``generate`` command is a thin shell around it.

>>> from ane_diffusion import generate
>>> result = generate("a red circle on a blue background", steps=4, seed=1)
>>> result.images[0].save("circle.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .backends import make_backend
from .bundle import resolve_bundle
from .images import check_writable, output_paths, save_png
from .pipeline import Pipeline, Result, Settings


def load_pipeline(model: Optional[str] = None, backend: str = "torch", **backend_options) -> Pipeline:
    """Resolve ``model`` (folder, .safetensors file, hub id, or the embedded default) and load it."""
    bundle = resolve_bundle(model)
    return Pipeline(bundle, make_backend(backend, bundle, **backend_options))


def generate(prompts: Sequence[str] | str, model: Optional[str] = None, backend: str = "torch",
             steps: Optional[int] = None, w: Optional[float] = None, sampler: Optional[str] = None,
             seed: int = 0, num_images: int = 1, height: Optional[int] = None, width: Optional[int] = None,
             negative_prompt: str = "", output: Optional[Path] = None, progress: bool = False,
             pipeline: Optional[Pipeline] = None, **backend_options) -> Result:
    """Text to image. ``w`` is the paper's guidance weight (``guidance_scale = 1 + w``).

    With ``output``, PNGs are written (see :func:`ane_diffusion.images.output_paths`) and their
    paths are added to each image's metadata under ``"path"``.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    pipeline = pipeline or load_pipeline(model, backend, **backend_options)
    settings = Settings(steps=steps, w=w, sampler=sampler, seed=seed, num_images=num_images,
                        height=height, width=width, negative_prompt=negative_prompt)
    paths = output_paths(Path(output), len(prompts) * num_images) if output is not None else None
    if paths:
        check_writable(paths)
    result = pipeline.text_to_image(prompts, settings, progress=progress)
    if paths:
        for image, meta, path in zip(result.images, result.metadata, paths):
            save_png(image, path, meta)
            meta["path"] = str(path)
    return result

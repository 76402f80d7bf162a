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
from .checks import image_count
from .images import check_writable, output_paths, save_png
from .pipeline import Pipeline, Result, Settings


def _write(result: Result, output: Optional[Path]) -> Result:
    """Save every image of ``result`` as PNG (parameters in the metadata), checked up front."""
    if output is None:
        return result
    paths = output_paths(Path(output), len(result.images))
    check_writable(paths)
    for image, meta, path in zip(result.images, result.metadata, paths):
        save_png(image, path, meta)
        meta["path"] = str(path)
    return result


def load_pipeline(model: Optional[str] = None, backend: str = "torch", **backend_options) -> Pipeline:
    """Resolve ``model`` (folder, .safetensors file, hub id, or the embedded default) and load it."""
    from .bundle import DEFAULT_MODEL, ModelLoadError, embedded_coreml

    if backend == "coreml" and (model is None or str(model) == DEFAULT_MODEL):
        model = embedded_coreml()
        if not model.is_dir():
            raise ModelLoadError("the embedded Core ML export is not installed; pass --model EXPORT_DIR")
    bundle = resolve_bundle(model)
    if "coreml_contract" in bundle.extra and backend != "coreml":
        raise ModelLoadError(f"{model} is a Core ML export folder: use --backend coreml")
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
    num_images = image_count(num_images)
    pipeline = pipeline or load_pipeline(model, backend, **backend_options)
    settings = Settings(steps=steps, w=w, sampler=sampler, seed=seed, num_images=num_images,
                        height=height, width=width, negative_prompt=negative_prompt)
    if output is not None:
        check_writable(output_paths(Path(output), len(prompts) * num_images))
    return _write(pipeline.text_to_image(prompts, settings, progress=progress), output)


def _open_image(image, what: str):
    """A PIL image from a path or an image; a one-line error when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    from .editing import EditInputError

    if not isinstance(image, (str, Path)):
        return image
    try:
        with Image.open(image) as handle:
            handle.load()
            return handle.copy()
    except FileNotFoundError:
        raise EditInputError(f"{what} not found: {image}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise EditInputError(f"{what} {image} is not a readable image ({exc})") from None


def edit(image, prompt: str, strength: float = 0.6, model: Optional[str] = None, backend: str = "torch",
         steps: Optional[int] = None, w: Optional[float] = None, sampler: Optional[str] = None, seed: int = 0,
         num_images: int = 1, resize: bool = False, negative_prompt: str = "", output: Optional[Path] = None,
         progress: bool = False, pipeline: Optional[Pipeline] = None, **backend_options) -> Result:
    """Image to image (SDEdit): ``image`` is a path or PIL image; see :mod:`ane_diffusion.editing`."""
    from .editing import EditSettings, Editor

    image = _open_image(image, "image")
    num_images = image_count(num_images)
    if output is not None:
        check_writable(output_paths(Path(output), num_images))
    pipeline = pipeline or load_pipeline(model, backend, **backend_options)
    settings = EditSettings(steps=steps, w=w, sampler=sampler, seed=seed, num_images=num_images,
                            negative_prompt=negative_prompt, strength=strength, resize=resize)
    return _write(Editor(pipeline).image_to_image(image, prompt, settings, progress=progress), output)


def inpaint(image, mask, prompt: str, model: Optional[str] = None, backend: str = "torch",
            steps: Optional[int] = None, w: Optional[float] = None, sampler: Optional[str] = None, seed: int = 0,
            num_images: int = 1, resize: bool = False, negative_prompt: str = "", output: Optional[Path] = None,
            progress: bool = False, pipeline: Optional[Pipeline] = None, **backend_options) -> Result:
    """Inpainting: regenerate the white region of ``mask``; the black region is kept."""
    from .editing import EditSettings, Editor

    image, mask = _open_image(image, "image"), _open_image(mask, "mask")
    num_images = image_count(num_images)
    if output is not None:
        check_writable(output_paths(Path(output), num_images))
    pipeline = pipeline or load_pipeline(model, backend, **backend_options)
    settings = EditSettings(steps=steps, w=w, sampler=sampler, seed=seed, num_images=num_images,
                            negative_prompt=negative_prompt, resize=resize)
    return _write(Editor(pipeline).inpaint(image, mask, prompt, settings, progress=progress), output)

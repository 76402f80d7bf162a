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


def load_pipeline(model: Optional[str] = None, backend: str = "torch", loras: Sequence = (),
                  student_lora: Optional[str] = None, **backend_options) -> Pipeline:
    """Resolve ``model`` (folder, .safetensors file, hub id, or the embedded default) and load it.

    ``loras``: ``"FILE[:SCALE]"`` strings (or :class:`ane_diffusion.loaders.lora.LoraSpec`), fused
    into the weights (torch backend). :func:`generate`, :func:`edit` and :func:`inpaint` pass a
    ``loras=`` keyword through to here.
    ``student_lora``: a student adapter (``distill --lora-rank``) applied to ``model``, its base
    (torch backend; see :mod:`ane_diffusion.student_lora`); not combined with ``loras``."""
    from .bundle import DEFAULT_MODEL, ModelLoadError, embedded_coreml

    if student_lora is not None:
        if loras:
            raise ValueError("--student-lora and --lora cannot be combined: fuse the student first "
                             "(convert --student-lora, or distill's fused student bundle), then add --lora")
        return _student_lora_pipeline(model, backend, student_lora, **backend_options)

    if backend == "coreml" and (model is None or str(model) == DEFAULT_MODEL):
        model = embedded_coreml()
        if not model.is_dir():
            raise ModelLoadError("the embedded Core ML export is not installed; pass --model EXPORT_DIR")
    bundle = resolve_bundle(model)
    if loras:
        from .loaders.lora import with_loras

        bundle = with_loras(bundle, loras)
    if "coreml_contract" in bundle.extra and backend != "coreml":
        raise ModelLoadError(f"{model} is a Core ML export folder: use --backend coreml")
    return Pipeline(bundle, make_backend(backend, bundle, **backend_options))


def _student_lora_pipeline(model, backend: str, path, device=None, vae_precision: str = "auto",
                           threads: Optional[int] = None, **options) -> Pipeline:
    from .backends.torch_backend import TorchBackend, default_dtype, select_device
    from .student_lora import student_bundle

    if backend != "torch" or options:
        raise ValueError("--student-lora runs on the torch backend (convert the fused student for Core ML)")
    target = select_device(device)
    bundle, components = student_bundle(resolve_bundle(model), Path(path), target, default_dtype(target))
    return Pipeline(bundle, TorchBackend(bundle, device=device, components=components,
                                         vae_precision=vae_precision, threads=threads))


def generate(prompts: Sequence[str] | str, model: Optional[str] = None, backend: str = "torch",
             steps: Optional[int] = None, w: Optional[float] = None, sampler: Optional[str] = None,
             seed: int = 0, num_images: int = 1, height: Optional[int] = None, width: Optional[int] = None,
             negative_prompt: str = "", output: Optional[Path] = None, progress: bool = False,
             pipeline: Optional[Pipeline] = None, decoder: Optional[str] = None,
             student_lora: Optional[str] = None, clamp: bool = False, **backend_options) -> Result:
    """Text to image. ``w`` is the paper's guidance weight (``guidance_scale = 1 + w``).
    ``student_lora``: a student adapter applied to ``model`` (see :func:`load_pipeline`).

    ``decoder``: ``tiny`` (the model's distilled tiny decoder), ``full`` (its VAE), or None (tiny
    when the model has one); a model without a tiny decoder asked for one raises ``GenerationError``.
    ``clamp``: clip each step's x estimate to the data latents' range in the model card (stops the
    colour burn of few-step students at high w; see :mod:`ane_diffusion.latent_range`); a card
    without a range raises ``GenerationError``.

    With ``output``, PNGs are written (see :func:`ane_diffusion.images.output_paths`) and their
    paths are added to each image's metadata under ``"path"``.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    num_images = image_count(num_images)
    pipeline = pipeline or load_pipeline(model, backend, student_lora=student_lora, **backend_options)
    settings = Settings(steps=steps, w=w, sampler=sampler, seed=seed, num_images=num_images,
                        height=height, width=width, negative_prompt=negative_prompt, decoder=decoder,
                        clamp=clamp)
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
         progress: bool = False, pipeline: Optional[Pipeline] = None, decoder: Optional[str] = None,
         clamp: bool = False, **backend_options) -> Result:
    """Image to image (SDEdit): ``image`` is a path or PIL image; see :mod:`ane_diffusion.editing`.
    ``decoder`` and ``clamp`` as in :func:`generate`."""
    from .editing import EditSettings, Editor

    image = _open_image(image, "image")
    num_images = image_count(num_images)
    if output is not None:
        check_writable(output_paths(Path(output), num_images))
    pipeline = pipeline or load_pipeline(model, backend, **backend_options)
    settings = EditSettings(steps=steps, w=w, sampler=sampler, seed=seed, num_images=num_images,
                            negative_prompt=negative_prompt, strength=strength, resize=resize, decoder=decoder,
                            clamp=clamp)
    return _write(Editor(pipeline).image_to_image(image, prompt, settings, progress=progress), output)


def inpaint(image, mask, prompt: str, model: Optional[str] = None, backend: str = "torch",
            steps: Optional[int] = None, w: Optional[float] = None, sampler: Optional[str] = None, seed: int = 0,
            num_images: int = 1, resize: bool = False, negative_prompt: str = "", output: Optional[Path] = None,
            progress: bool = False, pipeline: Optional[Pipeline] = None, decoder: Optional[str] = None,
            clamp: bool = False, **backend_options) -> Result:
    """Inpainting: regenerate the white region of ``mask``; the black region is kept. ``decoder``
    (VAE decoder and encoder) and ``clamp`` as in :func:`generate`."""
    from .editing import EditSettings, Editor

    image, mask = _open_image(image, "image"), _open_image(mask, "mask")
    num_images = image_count(num_images)
    if output is not None:
        check_writable(output_paths(Path(output), num_images))
    pipeline = pipeline or load_pipeline(model, backend, **backend_options)
    settings = EditSettings(steps=steps, w=w, sampler=sampler, seed=seed, num_images=num_images,
                            negative_prompt=negative_prompt, resize=resize, decoder=decoder, clamp=clamp)
    return _write(Editor(pipeline).inpaint(image, mask, prompt, settings, progress=progress), output)

"""Writing generated images: PNG with the generation parameters in its text chunks, atomically."""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import OutputError, atomic_file

METADATA_KEY = "ane_diffusion"


def save_png(image, path: Path, metadata: dict) -> Path:
    """Save ``image`` to ``path`` with ``metadata`` as JSON (key ``ane_diffusion``), the
    ``parameters`` chunk of the Stable Diffusion UIs (:mod:`ane_diffusion.png_parameters`), and
    one text chunk per field, so ordinary PNG viewers show them too."""
    from PIL.PngImagePlugin import PngInfo

    from .png_parameters import CHUNK, format_parameters

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise OutputError(f"output {path} must end in .png")
    info = PngInfo()
    info.add_text(METADATA_KEY, json.dumps(metadata, sort_keys=True))
    if {"w", "steps", "sampler", "seed", "width", "height"} <= metadata.keys():
        info.add_text(CHUNK, format_parameters(metadata))
    for key, value in metadata.items():
        if key != CHUNK:
            info.add_text(key, str(value))
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def read_metadata(path: Path) -> dict:
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text[METADATA_KEY])


def read_settings(path: Path) -> dict:
    """The settings that made a PNG: our JSON chunk when present (exact), else the
    ``parameters`` chunk of the Stable Diffusion UIs. Raises ``ValueError`` (one line) when the
    file is not a readable PNG or carries neither."""
    from PIL import Image, UnidentifiedImageError

    from .png_parameters import CHUNK, parse_parameters

    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}) or {})
    except FileNotFoundError:
        raise ValueError(f"--from-png: {path} not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"--from-png: {path} is not a readable image ({exc})") from None
    if METADATA_KEY in text:
        try:
            return json.loads(text[METADATA_KEY])
        except json.JSONDecodeError:
            raise ValueError(f"--from-png: {path} has a corrupt {METADATA_KEY} chunk") from None
    if CHUNK in text:
        return parse_parameters(text[CHUNK])
    raise ValueError(f"--from-png: {path} carries no generation parameters "
                     f"(neither an {METADATA_KEY} nor a {CHUNK} text chunk)")


def output_paths(output: Path, count: int) -> list[Path]:
    """``out.png`` for one image; ``out-0.png, out-1.png, ...`` for several.

    A folder (existing, or a path ending in a separator) gets ``image-0.png, ...`` inside it.
    """
    output = Path(output)
    if output.is_dir():
        return [output / f"image-{i}.png" for i in range(count)]
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def check_writable(paths: list[Path]) -> None:
    """Fail before any work when an output cannot be written."""
    import os

    for path in paths:
        if path.suffix.lower() != ".png":
            raise OutputError(f"output {path} must end in .png")
        parent = path.parent
        if not parent.is_dir():
            raise OutputError(f"cannot write {path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise OutputError(f"cannot write {path}: permission denied")

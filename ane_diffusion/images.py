"""Writing generated images: PNG with the generation parameters in its text chunks, atomically."""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import OutputError, atomic_file

METADATA_KEY = "ane_diffusion"


def save_png(image, path: Path, metadata: dict) -> Path:
    """Save ``image`` to ``path`` with ``metadata`` as JSON (key ``ane_diffusion``) plus one
    text chunk per field, so ordinary PNG viewers show them too."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise OutputError(f"output {path} must end in .png")
    info = PngInfo()
    info.add_text(METADATA_KEY, json.dumps(metadata, sort_keys=True))
    for key, value in metadata.items():
        info.add_text(key, str(value))
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def read_metadata(path: Path) -> dict:
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text[METADATA_KEY])


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

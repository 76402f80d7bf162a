"""Deterministic captioned scenes of one simple object: the demo model's training and eval data.

A :class:`Scene` is one coloured shape of some size at some position on a plain background, e.g.
"a small red circle at the top left on a blue background". Every attribute is a closed, small
vocabulary (the module-level tuples below are the single source of truth), so a caption fully
determines what a correct image looks like and an evaluator can check a generated image attribute
by attribute.

Splits test compositional generalisation: :data:`HELDOUT_PAIRS` names a few (shape, colour) pairs
that training never sees, while every single shape and colour still appears in training in other
combinations. :func:`heldout_scenes` are all scenes with such a pair; :func:`train_scenes` the rest.

Images are drawn at 4x the target resolution and box-downsampled, so edges are antialiased. An
optional numpy ``Generator`` adds small jitter (position, size, brightness) for variety that never
makes an attribute ambiguous.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
"""Object shapes: outlines that stay distinct even at the small size on a 32 px canvas."""

COLOUR_RGB = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 240),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "purple": (170, 50, 210),
}
"""Object colours, far apart in RGB. Every name starts with a consonant: captions say "a ..."."""

COLOURS = tuple(COLOUR_RGB)

SIZES = ("small", "large")

POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")

BACKGROUND_RGB = {
    "black": (0, 0, 0),
    "gray": (120, 120, 120),
    "blue": (25, 45, 130),
}
"""Background colours. Blue is a dark navy so that purple and white objects stand out on it; a
scene whose object colour has the background's name (a blue object on blue) does not exist."""

BACKGROUNDS = tuple(BACKGROUND_RGB)

HELDOUT_PAIRS = frozenset({("circle", "yellow"), ("square", "purple"), ("triangle", "white")})
"""(shape, colour) pairs never seen in training: 3 of the 24 pairs, 90 of the 680 scenes (13%).
Each shape and colour is held out in at most one pair, so each is still trained with the others."""

CAPTION_STYLES = (
    ("size", "position", "background"),
    (),
    ("background",),
    ("size", "position"),
    ("size",),
    ("position",),
)
"""Optional clauses each caption style states; colour and shape are always stated. Style 0 is the
full caption, the others leave attributes unsaid ("a red circle on a blue background")."""

DEFAULT_STYLE_WEIGHTS = (0.5, 0.1, 0.1, 0.1, 0.1, 0.1)
"""Training mix of caption styles: mostly full captions (what the evaluator prompts with), the rest
partial so the model also learns each clause on its own and to fill in unstated attributes."""

MANIFEST_NAME = "manifest.jsonl"
"""Name of the JSONL manifest (one ``{"file", "caption"}`` object per line) in an image folder."""

SPLITS = ("train", "heldout", "all")

_POSITION_CENTRE = {
    "top left": (0.26, 0.26),
    "top right": (0.74, 0.26),
    "bottom left": (0.26, 0.74),
    "bottom right": (0.74, 0.74),
    "center": (0.5, 0.5),
}
"""Object centre (x, y) as a fraction of the canvas. Corner centres sit just far enough in that a
large object stays whole under the largest jitter."""

_SIZE_HALF_EXTENT = {"small": 0.12, "large": 0.2}
"""Half the object's width as a fraction of the canvas (about 8 and 13 px across at 32 px); even
jittered, a small object stays well below a large one."""

_SUPERSAMPLE = 4
_POSITION_JITTER = 0.03
_SIZE_JITTER = (0.9, 1.1)
_COLOUR_BRIGHTNESS_JITTER = (0.85, 1.1)
_BACKGROUND_BRIGHTNESS_JITTER = (0.85, 1.15)
_CROSS_ARM = 0.38
"""Half the width of a cross's arm, as a fraction of the cross's half extent."""

_UNIT_POLYGONS = {
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 1), (-1, 1)],
    "cross": [
        (-_CROSS_ARM, -1), (_CROSS_ARM, -1), (_CROSS_ARM, -_CROSS_ARM), (1, -_CROSS_ARM),
        (1, _CROSS_ARM), (_CROSS_ARM, _CROSS_ARM), (_CROSS_ARM, 1), (-_CROSS_ARM, 1),
        (-_CROSS_ARM, _CROSS_ARM), (-1, _CROSS_ARM), (-1, -_CROSS_ARM), (-_CROSS_ARM, -_CROSS_ARM),
    ],
}
"""Vertices of the polygonal shapes in the square [-1, 1]^2 (y down); the circle is an ellipse."""


_ATTRIBUTES = {
    "shape": SHAPES,
    "colour": COLOURS,
    "size": SIZES,
    "position": POSITIONS,
    "background": BACKGROUNDS,
}
"""Scene field name -> its allowed values, in Scene field order."""


@dataclass(frozen=True)
class Scene:
    """One object of a shape, colour and size at a position on a background colour."""

    shape: str
    colour: str
    size: str
    position: str
    background: str

    def __post_init__(self) -> None:
        for name, values in _ATTRIBUTES.items():
            value = getattr(self, name)
            if value not in values:
                raise ValueError(f"unknown {name} {value!r}; expected one of {values}")
        if self.colour == self.background:
            raise ValueError(f"a {self.colour} object on a {self.colour} background is invisible")

    def caption(self, style: int = 0) -> str:
        """The caption in :data:`CAPTION_STYLES` ``[style]``, e.g. style 0:
        "a small red circle at the top left on a blue background"."""
        clauses = CAPTION_STYLES[style]
        words = ["a"]
        if "size" in clauses:
            words.append(self.size)
        words += [self.colour, self.shape]
        if "position" in clauses:
            words.append(_position_phrase(self.position))
        if "background" in clauses:
            words.append(f"on a {self.background} background")
        return " ".join(words)

    def render(self, resolution: int = 32, rng: np.random.Generator | None = None) -> Image.Image:
        """The scene as an RGB image, resolution x resolution, antialiased by drawing at 4x and
        box-downsampling. With ``rng`` the position, size and brightnesses jitter slightly."""
        cx, cy = _POSITION_CENTRE[self.position]
        half = _SIZE_HALF_EXTENT[self.size]
        colour, background = COLOUR_RGB[self.colour], BACKGROUND_RGB[self.background]
        if rng is not None:
            cx, cy, half = _jitter_geometry(rng, cx, cy, half)
            colour = _scale_brightness(colour, rng.uniform(*_COLOUR_BRIGHTNESS_JITTER))
            background = _scale_brightness(background, rng.uniform(*_BACKGROUND_BRIGHTNESS_JITTER))
        canvas = resolution * _SUPERSAMPLE
        image = Image.new("RGB", (canvas, canvas), background)
        draw = ImageDraw.Draw(image)
        _draw_shape(draw, self.shape, cx * canvas, cy * canvas, half * canvas, colour)
        return image.resize((resolution, resolution), Image.Resampling.BOX)


def _position_phrase(position: str) -> str:
    return "in the center" if position == "center" else f"at the {position}"


def _jitter_geometry(
    rng: np.random.Generator, cx: float, cy: float, half: float
) -> tuple[float, float, float]:
    dx, dy = rng.uniform(-_POSITION_JITTER, _POSITION_JITTER, size=2)
    return cx + dx, cy + dy, half * rng.uniform(*_SIZE_JITTER)


def _scale_brightness(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, round(c * factor))) for c in rgb)


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    half: float,
    fill: tuple[int, int, int],
) -> None:
    """Draw ``shape`` filling the square of half-width ``half`` centred on (cx, cy)."""
    if shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    else:
        draw.polygon([(cx + x * half, cy + y * half) for x, y in _UNIT_POLYGONS[shape]], fill=fill)


def _alternatives(values: Sequence[str]) -> str:
    return "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))


_CAPTION_RE = re.compile(
    rf"a (?:(?P<size>{_alternatives(SIZES)}) )?"
    rf"(?P<colour>{_alternatives(COLOURS)}) (?P<shape>{_alternatives(SHAPES)})"
    rf"(?: (?:at|in) the (?P<position>{_alternatives(POSITIONS)}))?"
    rf"(?: on a (?P<background>{_alternatives(BACKGROUNDS)}) background)?"
)


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption states, e.g. "a red circle on a blue background" ->
    ``{"colour": "red", "shape": "circle", "background": "blue"}``: the inverse of
    :meth:`Scene.caption` for every style, so an evaluator knows which attributes a prompt asks
    for. Case and extra whitespace are ignored; anything else raises ``ValueError``."""
    match = _CAPTION_RE.fullmatch(" ".join(text.lower().split()))
    if match is None:
        raise ValueError(f"not a demo-scene caption: {text!r}")
    return {name: value for name, value in match.groupdict().items() if value is not None}


@cache
def all_scenes() -> tuple[Scene, ...]:
    """Every valid scene (object colour differs from the background), in a fixed order."""
    return tuple(
        Scene(shape, colour, size, position, background)
        for shape, colour, size, position, background in itertools.product(*_ATTRIBUTES.values())
        if colour != background
    )


def is_heldout(scene: Scene) -> bool:
    """Whether a scene's (shape, colour) pair is one of :data:`HELDOUT_PAIRS`."""
    return (scene.shape, scene.colour) in HELDOUT_PAIRS


def heldout_scenes() -> tuple[Scene, ...]:
    """Scenes training never sees: those with a held-out (shape, colour) pair."""
    return tuple(s for s in all_scenes() if is_heldout(s))


def train_scenes() -> tuple[Scene, ...]:
    """Every scene that is not held out."""
    return tuple(s for s in all_scenes() if not is_heldout(s))


def scenes_for(split: str) -> tuple[Scene, ...]:
    """The scenes of ``split``: "train", "heldout" or "all"."""
    pools = {"train": train_scenes, "heldout": heldout_scenes, "all": all_scenes}
    if split not in pools:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return pools[split]()


def caption_corpus() -> list[str]:
    """Every caption any style produces for any scene, held-out ones included, sorted: the text
    the tokenizer's vocabulary must cover."""
    return sorted({s.caption(style) for s in all_scenes() for style in range(len(CAPTION_STYLES))})


def iter_samples(
    n: int,
    resolution: int = 32,
    seed: int = 0,
    split: str = "train",
    style_weights: Sequence[float] = DEFAULT_STYLE_WEIGHTS,
) -> Iterator[tuple[Image.Image, str, Scene]]:
    """Yield ``n`` (image, caption, scene) samples of ``split``, the same for the same arguments.

    Scenes are drawn as concatenated shuffles of the split, so every scene appears equally often
    (to within one); each gets a caption style drawn with ``style_weights`` and its own jitter."""
    pool = scenes_for(split)
    rng = np.random.default_rng(seed)
    weights = np.asarray(style_weights, dtype=float)
    if weights.shape != (len(CAPTION_STYLES),) or weights.min() < 0 or weights.sum() <= 0:
        raise ValueError(
            f"style_weights needs {len(CAPTION_STYLES)} non-negative weights, got {style_weights}"
        )
    epochs = [rng.permutation(len(pool)) for _ in range(-(-n // len(pool)))]
    order = np.concatenate([np.empty(0, dtype=int), *epochs])[:n]
    styles = rng.choice(len(CAPTION_STYLES), size=n, p=weights / weights.sum())
    for index, style in zip(order, styles):
        scene = pool[index]
        yield scene.render(resolution, rng), scene.caption(int(style)), scene


def make_dataset(
    n: int,
    resolution: int = 32,
    seed: int = 0,
    split: str = "train",
    style_weights: Sequence[float] = DEFAULT_STYLE_WEIGHTS,
) -> tuple[np.ndarray, list[str], list[Scene]]:
    """``n`` samples of :func:`iter_samples` as (uint8 images (n, H, W, 3), captions, scenes)."""
    images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    captions, scenes = [], []
    samples = iter_samples(n, resolution, seed, split, style_weights)
    for i, (image, caption, scene) in enumerate(samples):
        images[i] = np.asarray(image)
        captions.append(caption)
        scenes.append(scene)
    return images, captions, scenes


def write_image_folder(
    folder: str | os.PathLike,
    n: int,
    resolution: int = 32,
    seed: int = 0,
    split: str = "train",
    style_weights: Sequence[float] = DEFAULT_STYLE_WEIGHTS,
) -> Path:
    """Write ``n`` samples as ``00000.png ...`` plus :data:`MANIFEST_NAME` (the trainer's format:
    one ``{"file": ..., "caption": ...}`` per line, files relative to the folder).

    The folder appears complete or not at all: everything is written into a temporary sibling
    that is renamed into place at the end and removed on any failure. An existing ``folder`` is
    an error rather than being overwritten."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} already exists")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    staging.mkdir()
    try:
        samples = iter_samples(n, resolution, seed, split, style_weights)
        _write_samples(staging, samples, digits=max(5, len(str(n - 1))))
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _write_samples(
    folder: Path, samples: Iterator[tuple[Image.Image, str, Scene]], digits: int
) -> None:
    """Save each sample as a zero-padded ``.png`` in ``folder`` and list it in the manifest."""
    with open(folder / MANIFEST_NAME, "w", encoding="utf-8") as manifest:
        for i, (image, caption, _) in enumerate(samples):
            name = f"{i:0{digits}d}.png"
            image.save(folder / name)
            manifest.write(json.dumps({"file": name, "caption": caption}) + "\n")

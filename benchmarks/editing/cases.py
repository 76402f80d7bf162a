"""Edit cases: which real scene to edit, which attribute to change, into what, and the inpainting mask.

A case takes a train-split :class:`~ane_diffusion.demo.shapes.Scene`, changes exactly one attribute
(colour or shape) and keeps the other four, so the target caption is the source's full caption with
one word replaced: "a small red circle at the top left on a blue background" -> "a small green
circle at the top left on a blue background". Targets are always valid scenes: a colour is never the
background's (that object would be invisible, and :class:`Scene` rejects it), and by default the
target's (shape, colour) pair is never a held-out one (the models never saw those pairs; with
``allow_heldout`` they may appear and every case says whether its target is held out).

The inpainting mask is the object's bounding box read off the source render (every pixel that is not
the plain background colour, antialiased edges included), dilated by a few pixels, as a white
rectangle on black (white = generate, black = keep).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from ane_diffusion.demo.shapes import BACKGROUND_RGB, COLOURS, SHAPES, Scene, is_heldout, scenes_for

EDITABLE = ("colour", "shape")
"""Attributes an edit changes; the other three (size, position, background) and the unchanged one
of these two must be kept."""

ALL_ATTRIBUTES = ("shape", "colour", "size", "position", "background")

PSNR_IDENTICAL = 99.0
"""Stands for an infinite PSNR (identical pixels) in the JSON, which has no infinity."""


@dataclass(frozen=True)
class EditCase:
    """One edit: ``source`` -> ``target``, which differ in ``attribute`` only."""

    index: int
    source: Scene
    attribute: str
    target: Scene

    @property
    def source_caption(self) -> str:
        return self.source.caption(0)

    @property
    def target_caption(self) -> str:
        return self.target.caption(0)

    @property
    def kept(self) -> tuple[str, ...]:
        """The attributes that must not change."""
        return tuple(a for a in ALL_ATTRIBUTES if a != self.attribute)

    @property
    def heldout_target(self) -> bool:
        """Whether the target's (shape, colour) pair is one the models never saw in training."""
        return is_heldout(self.target)

    def describe(self) -> str:
        return f"{self.attribute} {getattr(self.source, self.attribute)} -> {getattr(self.target, self.attribute)}"

    def to_dict(self) -> dict:
        return {"index": self.index, "attribute": self.attribute,
                "from": getattr(self.source, self.attribute), "to": getattr(self.target, self.attribute),
                "source_caption": self.source_caption, "target_caption": self.target_caption,
                "heldout_target": self.heldout_target}


def target_values(scene: Scene, attribute: str, allow_heldout: bool = False) -> list[str]:
    """Every value ``attribute`` of ``scene`` can be changed to, giving a valid scene: another value,
    a colour unlike the background, and (unless ``allow_heldout``) no held-out (shape, colour) pair."""
    if attribute not in EDITABLE:
        raise ValueError(f"attribute {attribute!r} cannot be edited; expected one of {EDITABLE}")
    values = COLOURS if attribute == "colour" else SHAPES
    out = []
    for value in values:
        if value == getattr(scene, attribute) or (attribute == "colour" and value == scene.background):
            continue
        if not allow_heldout and is_heldout(replace(scene, **{attribute: value})):
            continue
        out.append(value)
    return out


def change_attribute(scene: Scene, attribute: str, value: str) -> Scene:
    """``scene`` with ``attribute`` set to ``value``, every other attribute kept. Raises ValueError
    for a non-editable attribute, an unchanged value or an invalid scene (object on its own colour)."""
    if attribute not in EDITABLE:
        raise ValueError(f"attribute {attribute!r} cannot be edited; expected one of {EDITABLE}")
    if getattr(scene, attribute) == value:
        raise ValueError(f"the scene's {attribute} is already {value}")
    return replace(scene, **{attribute: value})  # Scene.__post_init__ rejects invalid values


def edit_caption(caption: str, attribute: str, value: str) -> str:
    """A full (style-0) caption with one attribute changed: parse, change, re-caption."""
    from ane_diffusion.demo.shapes import parse_caption

    fields = parse_caption(caption)
    missing = [a for a in ALL_ATTRIBUTES if a not in fields]
    if missing:
        raise ValueError(f"not a full caption (no {', '.join(missing)}): {caption!r}")
    return change_attribute(Scene(**fields), attribute, value).caption(0)


def plan_cases(count: int, seed: int = 0, split: str = "train", attributes: Sequence[str] = EDITABLE,
               allow_heldout: bool = False) -> list[EditCase]:
    """``count`` cases on distinct scenes of ``split`` (all of them if fewer), the same for the same seed.

    Attributes alternate over the cases (half colour, half shape), and each target value is drawn
    uniformly among :func:`target_values`."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    for attribute in attributes:
        if attribute not in EDITABLE:
            raise ValueError(f"attribute {attribute!r} cannot be edited; expected one of {EDITABLE}")
    pool = scenes_for(split)
    rng = np.random.default_rng([seed, 8])
    chosen = [pool[i] for i in rng.choice(len(pool), size=min(count, len(pool)), replace=False)]
    cases = []
    for index, scene in enumerate(chosen):
        order = list(attributes[index % len(attributes):]) + list(attributes[:index % len(attributes)])
        for attribute in order:  # the planned attribute, else the other one if it has no valid target
            values = target_values(scene, attribute, allow_heldout)
            if values:
                value = values[int(rng.integers(len(values)))]
                cases.append(EditCase(index, scene, attribute, change_attribute(scene, attribute, value)))
                break
        else:
            raise ValueError(f"no valid edit of {scene.caption(0)!r} changes {', '.join(attributes)}")
    return cases


# -- images and masks -----------------------------------------------------------------------------

def resize_to(image, size: int):
    """An RGB image at ``size`` x ``size``: box-filtered down, bicubic up, unchanged if already there."""
    from PIL import Image

    image = image.convert("RGB")
    if image.size == (size, size):
        return image
    method = Image.Resampling.BOX if image.size[0] > size else Image.Resampling.BICUBIC
    return image.resize((size, size), method)


def object_box(image, background: str) -> tuple[int, int, int, int]:
    """Bounding box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of every pixel of an un-jittered render
    that is not exactly the background colour."""
    pixels = np.asarray(image.convert("RGB")).astype(np.int16)
    differs = np.any(pixels != np.array(BACKGROUND_RGB[background], np.int16), axis=-1)
    if not differs.any():
        raise ValueError("no object in the image: every pixel is the background colour")
    ys, xs = np.nonzero(differs)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_mask(size: int, box: tuple[int, int, int, int], dilate: int = 2):
    """A ``size`` x ``size`` mode-"L" mask: ``box`` grown by ``dilate`` pixels (clipped) in white (255)
    on black (0)."""
    from PIL import Image

    x0, y0, x1, y1 = box
    mask = np.zeros((size, size), np.uint8)
    mask[max(0, y0 - dilate):min(size, y1 + dilate), max(0, x0 - dilate):min(size, x1 + dilate)] = 255
    return Image.fromarray(mask, mode="L")


def scale_mask(mask, size: int):
    """``mask`` at ``size`` x ``size``, still binary, covering at least what it covered: down, a pixel is
    white if any pixel of its area is (box filter, any coverage); up, nearest neighbour."""
    from PIL import Image

    if mask.size == (size, size):
        return mask
    if mask.size[0] > size:
        covered = np.asarray(mask.resize((size, size), Image.Resampling.BOX)) > 0
        return Image.fromarray(np.where(covered, 255, 0).astype(np.uint8), mode="L")
    return mask.resize((size, size), Image.Resampling.NEAREST)


def object_mask(scene: Scene, image, dilate: int = 2):
    """The inpainting mask of an un-jittered render of ``scene`` at the render's own size."""
    return box_mask(image.size[0], object_box(image, scene.background), dilate)


def unmasked_psnr(output, source, mask) -> float:
    """PSNR (dB, 8-bit) of ``output`` against ``source`` over the pixels ``mask`` keeps (black);
    :data:`PSNR_IDENTICAL` when they are identical there."""
    keep = np.asarray(mask.convert("L")) < 128
    a = np.asarray(output.convert("RGB"), np.float64)[keep]
    b = np.asarray(source.convert("RGB"), np.float64)[keep]
    if a.size == 0:
        return PSNR_IDENTICAL
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return PSNR_IDENTICAL
    return min(PSNR_IDENTICAL, float(10.0 * np.log10(255.0 ** 2 / mse)))

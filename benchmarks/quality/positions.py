"""Does a model follow the position words? The corner sweep of issue 11.

For a few base scenes and seeds, the same caption is rendered at each of the four corners with the
same noise. A model that reads "top left" vs "bottom right" moves the object, so the images of
different corners differ a lot; a model that lets the noise pick the corner gives near-identical
images (the first demo teacher: < 0.4/255 apart). :func:`corner_sweep` returns the mean absolute
pixel difference between corner captions (same seed), the evaluator's position accuracy on those
images, and the images for a grid; :func:`text_separation` the text encoder's side of it.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Sequence

import numpy as np

from ane_diffusion.demo.shapes import POSITIONS, Scene

CORNERS = tuple(p for p in POSITIONS if p != "center")
BASE_SCENES = (("circle", "yellow", "large", "black"), ("square", "red", "small", "gray"),
               ("triangle", "green", "large", "blue"), ("cross", "white", "small", "black"))
"""(shape, colour, size, background) of the sweep's base scenes: all train-split pairs."""


def corner_scenes(base: Sequence[str], positions: Sequence[str] = CORNERS) -> list[Scene]:
    shape, colour, size, background = base
    return [Scene(shape, colour, size, position, background) for position in positions]


def corner_sweep(pipe, steps: int, w: float, seeds: Sequence[int] = (0, 1, 2), bases=BASE_SCENES,
                 evaluator=None, sampler: str = "ddim") -> dict:
    """Render every base scene at every corner (same seeds) and measure how much the corner matters.

    Returns ``{"corner_difference": mean |image_a - image_b| (0-255) over pairs of corners, same base
    and seed; "seed_difference": the same between seeds, same caption (the noise's own effect, for
    scale); "position_accuracy": evaluator reading (None without evaluator); "images":
    {(base index, corner, seed): uint8 (32, 32, 3)}}``.
    """
    from ane_diffusion.pipeline import Settings

    images, scenes, arrays = {}, [], []
    for b, base in enumerate(bases):
        for scene in corner_scenes(base):
            for seed in seeds:
                settings = Settings(steps=steps, w=float(w), sampler=sampler, seed=int(seed), num_images=1)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="this student was distilled for")
                    image = np.asarray(pipe.text_to_image([scene.caption(0)], settings).images[0].convert("RGB"))
                images[(b, scene.position, int(seed))] = image
                scenes.append(scene)
                arrays.append(image)
    corner = [np.abs(images[(b, p, s)].astype(float) - images[(b, q, s)]).mean()
              for b in range(len(bases)) for p, q in itertools.combinations(CORNERS, 2) for s in seeds]
    seed = [np.abs(images[(b, p, s)].astype(float) - images[(b, p, r)]).mean()
            for b in range(len(bases)) for p in CORNERS for s, r in itertools.combinations(seeds, 2)]
    accuracy = None
    if evaluator is not None:
        predictions = evaluator.predict(np.stack(arrays))["position"]
        classes = evaluator.config.classes["position"]
        accuracy = float(np.mean([classes[int(k)] == s.position for k, s in zip(predictions, scenes)]))
    return {"corner_difference": float(np.mean(corner)), "seed_difference": float(np.mean(seed)) if seed else None,
            "position_accuracy": accuracy, "images": images}


def corner_grid(images: dict, seeds: Sequence[int], bases=BASE_SCENES, cell: int = 64):
    """One row per (base, seed), one column per corner: a PIL image."""
    from PIL import Image

    step = cell + 2
    rows = [(b, s) for b in range(len(bases)) for s in seeds]
    grid = Image.new("RGB", (len(CORNERS) * step, len(rows) * step), (255, 255, 255))
    for r, (b, s) in enumerate(rows):
        for c, corner in enumerate(CORNERS):
            tile = Image.fromarray(images[(b, corner, int(s))]).resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (c * step, r * step))
    return grid


def text_separation(bundle_path: str, bases=BASE_SCENES) -> dict:
    """The model's text encoder on the corner captions of each base scene: mean relative distance of
    the (77, D) hidden states and of the pooled outputs over pairs of corners (see
    :func:`ane_diffusion.demo.train_text.caption_separation`)."""
    from ane_diffusion.bundle import resolve_bundle
    from ane_diffusion.demo.train_text import caption_separation
    from ane_diffusion.tokenizer import CLIPTokenizer
    from ane_diffusion.torch_models import load_components

    bundle = resolve_bundle(bundle_path)
    components = load_components(bundle)
    files = bundle.tokenizer_files
    tokenizer = CLIPTokenizer.from_strings(files["vocab.json"], files["merges.txt"])
    encoder = components.text_encoder.float().eval()
    results = [caption_separation(encoder, tokenizer.encode_batch([s.caption(0) for s in corner_scenes(base)]))
               for base in bases]
    return {key: float(np.mean([r[key] for r in results])) for key in results[0]}


__all__ = ["BASE_SCENES", "CORNERS", "corner_grid", "corner_scenes", "corner_sweep", "text_separation"]

"""Distinct noise for every image of a benchmark.

``Pipeline.text_to_image(prompts, Settings(seed=s, num_images=k))`` gives EVERY prompt the seeds
``s .. s + k - 1``: N prompts x k images then rest on only k noise tensors, and what one unlucky
noise does is counted N times. On the demo teacher at w = 0 (16 DDIM steps, 32 train prompts) seeds
2 and 3 draw the wrong background for 28-34% of prompts, seeds 0, 1 and 4-7 for 0-6%; and one lucky
noise (seed 7) shared by 128 prompts made the shipped students look w-faithful (response 0.85 of the
teacher's) where 128 distinct noises give 0.49-0.51 (benchmarks/results/issue11/README.md, section
6). :func:`text_to_image_distinct` gives image j of prompt i the seed ``seed + i * k + j`` instead.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence


def distinct_seed(seed: int, prompt_index: int, images_per_prompt: int, image_index: int = 0) -> int:
    """The noise seed of image ``image_index`` of prompt ``prompt_index``: every image its own."""
    return seed + prompt_index * images_per_prompt + image_index


def text_to_image_distinct(pipe, prompts: Sequence[str], settings):
    """``pipe.text_to_image`` prompt by prompt, each with its own ``settings.num_images`` seeds
    (:func:`distinct_seed`); one ``Result`` with the images, metadata and summed timings in prompt order.

    The pipeline samples one prompt at a time anyway, so this costs only the repeated empty-prompt
    encoding of a guided teacher.
    """
    from ane_diffusion.pipeline import Result, Timings

    out = Result([], [], Timings())
    for index, prompt in enumerate(prompts):
        seed = distinct_seed(settings.seed, index, settings.num_images)
        result = pipe.text_to_image([prompt], dataclasses.replace(settings, seed=seed))
        out.images += result.images
        out.metadata += result.metadata
        for name in (f.name for f in dataclasses.fields(Timings)):
            setattr(out.timings, name, getattr(out.timings, name) + getattr(result.timings, name))
    return out

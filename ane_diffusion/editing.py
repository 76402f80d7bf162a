"""Image editing (SDEdit-style image-to-image) and inpainting on top of :class:`Pipeline`.

* **Image-to-image**: encode the source with the VAE encoder, noise it to the point of the
  sampling grid that ``strength`` selects (``strength = 1``: pure noise, the whole grid;
  ``0.5`` with 4 steps: start at the third grid point and run 2 steps), run the remaining steps.
* **Inpainting** with a text-to-image model: at every step the known region of the latent is the
  source's encoding re-noised to the current level, so only the masked region is generated. It is
  done through the denoiser: its clean-sample estimate is replaced by the source's latent outside
  the mask, so a DDIM step lands exactly on ``alpha_s x_src + sigma_s eps`` there, and stochastic
  samplers re-noise it with fresh noise. The decoded image is blended with the source in pixel space
  through a feathered mask that is zero on every unmasked pixel, so those pixels are kept exactly.
  A dedicated inpainting UNet (9 input channels: latent, mask, masked-image latent) is fed those
  channels instead.

Masks: white (255) marks what to generate, black (0) what to keep.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from .checks import check_output, finite_number
from .noise import batch_noise
from .pipeline import GenerationError, Pipeline, Result, Settings, Timings, progress_bar, to_pil
from .samplers import default_timesteps

EDIT_SAMPLERS = ("ddim", "stochastic", "lcm")
INPAINT_CHANNELS = 9
MIDTONE_LIMIT = 0.10
"""A mask may have at most this share of mid-grey pixels (values in 32..223) to count as binary."""


class EditInputError(GenerationError):
    """An edit or inpaint input that cannot be used (sizes, mask, strength)."""


@dataclass
class EditSettings(Settings):
    strength: float = 0.6
    resize: bool = False
    """Resize the image (and mask) to the model's size instead of rejecting other sizes."""


# -- inputs ---------------------------------------------------------------------------------------
GREY_TOLERANCE = 8
"""A mask pixel counts as grey when its red, green and blue values differ by at most this much
(JPEG and resampling leave small differences in masks that were painted black and white)."""


def to_8bit(image):
    """PIL image -> 8 bits per channel. 16-bit greyscale (``I;16*``, what 16-bit PNGs open as) is
    scaled by 255/65535, as are 32-bit ``I`` / ``F`` images whose values exceed 255; a plain
    ``convert`` would clip them (a mid-grey 16-bit image would become white). Others pass unchanged."""
    from PIL import Image

    if not (image.mode.startswith("I;16") or image.mode in ("I", "F")):
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or values.max(initial=0) > 255:
        values = values / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def image_to_array(image, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """PIL image -> (1, 3, H, W) float32 in [-1, 1]; optionally resized to ``size`` (W, H).
    16-bit images are scaled to 8 bits first (:func:`to_8bit`)."""
    from PIL import Image

    image = to_8bit(image).convert("RGB")
    if size is not None and image.size != size:
        image = image.resize(size, Image.BICUBIC)
    return (np.asarray(image, np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0).astype(np.float32)


def mask_to_grey(mask):
    """A mask as an ``L`` image. Greyscale masks (8- or 16-bit) pass; ``LA`` keeps its grey channel;
    RGB(A), palette and other colour modes are accepted when their red, green and blue values are
    equal (what most editors save for a black-and-white mask), and refused when they carry colour.
    Alpha is ignored."""
    from PIL import Image

    mask = to_8bit(mask)
    if mask.mode in ("L", "1"):
        return mask.convert("L")
    if mask.mode in ("LA", "La"):
        return mask.getchannel("L")
    rgb = np.asarray(mask.convert("RGBA" if mask.mode == "P" else mask.mode).convert("RGB"), np.int16)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    coloured = float(np.mean(spread > GREY_TOLERANCE))
    if coloured > 0:
        raise EditInputError(f"the mask has colour ({coloured:.0%} of its pixels are not grey, mode {mask.mode}): "
                             "save it in black (keep) and white (generate)")
    return Image.fromarray(rgb.mean(axis=2).round().astype(np.uint8), "L")


def mask_to_array(mask, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Binary-ish PIL mask -> (1, 1, H, W) float32 in {0, 1} (1 = generate); see :func:`mask_to_grey`
    for the modes it takes."""
    from PIL import Image

    mask = mask_to_grey(mask)
    if size is not None and mask.size != size:
        mask = mask.resize(size, Image.NEAREST)
    values = np.asarray(mask, np.float32)
    midtones = float(np.mean((values > 31) & (values < 224)))
    if midtones > MIDTONE_LIMIT:
        raise EditInputError(f"the mask is not binary: {midtones:.0%} of its pixels are mid-grey "
                             "(use black for keep, white for generate)")
    return (values >= 128).astype(np.float32)[None, None]


def latent_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """Pixel mask (1, 1, H, W) -> latent mask (1, 1, H/f, W/f): a latent cell is generated if any
    of its pixels is (max-pooling, so the generated region fully covers the mask)."""
    _, _, h, w = mask.shape
    blocks = mask.reshape(1, 1, h // factor, factor, w // factor, factor)
    return blocks.max(axis=(3, 5))


def feathered(mask: np.ndarray, radius: float) -> np.ndarray:
    """Blend weights (1, 1, H, W): a blurred mask, forced to 0 on every unmasked pixel."""
    from PIL import Image, ImageFilter

    image = Image.fromarray((mask[0, 0] * 255).astype(np.uint8))
    soft = np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0
    return (np.where(mask[0, 0] > 0, np.maximum(soft, 0.5), 0.0))[None, None].astype(np.float32)


def min_strength(steps: int) -> float:
    """The smallest strength with two decimals that runs at least one of ``steps`` steps (the hint
    must name a value that works: with 3 steps 0.33 runs none, 0.34 runs one)."""
    hundredths = math.ceil(100 / steps)
    while int(steps * (hundredths / 100)) < 1:
        hundredths += 1
    return hundredths / 100


def strength_timesteps(timesteps: np.ndarray, strength: float) -> np.ndarray:
    """The suffix of the grid an edit runs: the last ``int(n * strength)`` steps."""
    strength = finite_number(strength, "strength")
    if not 0.0 < strength <= 1.0:
        raise EditInputError(f"strength must be in (0, 1], got {strength}")
    count = min(int(len(timesteps) * strength), len(timesteps))
    if count == 0:
        raise EditInputError(f"strength {strength} with {len(timesteps)} steps runs no step; "
                             f"raise --strength to at least {min_strength(len(timesteps))} or use more steps")
    return timesteps[len(timesteps) - count:]


# -- the pipelines ------------------------------------------------------------------------------
class Editor:
    """Image-to-image and inpainting for one loaded :class:`Pipeline`."""

    def __init__(self, pipeline: Pipeline):
        self.pipe = pipeline
        self.bundle = pipeline.bundle
        self.factor = self.bundle.vae_scale_factor
        self.inpainting_unet = int(self.bundle.configs["unet"].get("in_channels", 4)) == INPAINT_CHANNELS

    def _prepare(self, image, settings: EditSettings, prompts) -> tuple[np.ndarray, EditSettings]:
        if settings.sampler == "dpmpp-2m":
            raise EditInputError(f"sampler dpmpp-2m cannot start mid-grid; use one of {', '.join(EDIT_SAMPLERS)}")
        width, height = image.size
        if settings.resize:
            height, width = settings.height or self.bundle.default_size, settings.width or self.bundle.default_size
        try:
            resolved = self.pipe.resolve(prompts, replace(settings, height=height, width=width))
        except GenerationError as exc:
            if "multiple of" in str(exc) and not settings.resize:
                raise EditInputError(f"image is {image.size[0]}x{image.size[1]}: {exc}; pass --resize to resize "
                                     f"it to {self.bundle.default_size}x{self.bundle.default_size}") from None
            raise
        return image_to_array(image, (resolved.width, resolved.height)), resolved

    def encode(self, pixels: np.ndarray, timings: Timings, encoder: str = "full") -> np.ndarray:
        start = time.perf_counter()
        latents = self.pipe.backend.encode_image(pixels, encoder) * self.bundle.scaling_factor
        timings.vae_encode += time.perf_counter() - start
        return check_output(latents, self.pipe.backend, "vae_encoder", "the VAE encoder's output").astype(np.float32)

    def image_to_image(self, image, prompt: str, settings: EditSettings = EditSettings(),
                       progress: bool = False) -> Result:
        if self.inpainting_unet:
            raise EditInputError("this UNet takes a mask and a masked image (an inpainting UNet): use inpaint")
        pixels, s = self._prepare(image, settings, [prompt])
        timesteps = strength_timesteps(default_timesteps(s.sampler, s.steps), s.strength)
        return self._run(prompt, s, pixels, timesteps, mask=None, progress=progress)

    def inpaint(self, image, mask, prompt: str, settings: EditSettings = EditSettings(),
                progress: bool = False) -> Result:
        if not settings.resize and image.size != mask.size:
            raise EditInputError(f"image is {image.size[0]}x{image.size[1]} but mask is "
                                 f"{mask.size[0]}x{mask.size[1]}; they must match")
        pixels, s = self._prepare(image, replace(settings, strength=1.0), [prompt])
        pixel_mask = mask_to_array(mask, (s.width, s.height))
        timesteps = default_timesteps(s.sampler, s.steps)
        return self._run(prompt, s, pixels, timesteps, mask=pixel_mask, progress=progress)

    def _run(self, prompt: str, s: EditSettings, pixels: np.ndarray, timesteps, mask, progress: bool) -> Result:
        pipe, timings = self.pipe, Timings()
        begin = time.perf_counter()
        source = self.encode(pixels, timings, s.decoder)                        # (1, 4, h, w)
        needs_uncond = not pipe.card.is_student and s.w != 0
        uncond = pipe.encode_prompts([s.negative_prompt], timings) if needs_uncond else None
        cond = pipe.encode_prompts([prompt], timings)
        eps, sources = batch_noise(s.seed, s.num_images, source.shape[1:])     # (N, 4, h, w)
        x_src = np.repeat(source, s.num_images, axis=0)
        alpha, sigma = pipe.schedule.alpha_sigma(int(timesteps[0]))
        z = (alpha * x_src + sigma * eps).astype(np.float32)
        extra = None
        if mask is not None:
            m = np.repeat(latent_mask(mask, self.factor), s.num_images, axis=0)  # (N, 1, h, w)
            if self.inpainting_unet:
                masked = self.encode(pixels * (1.0 - mask), timings, s.decoder)
                extra = np.concatenate([m, np.repeat(masked, s.num_images, axis=0)], axis=1)
        repeat = (lambda h: np.repeat(h, s.num_images, axis=0))
        denoise = pipe.denoiser(repeat(cond), repeat(uncond) if uncond is not None else None, s.w, timings,
                                extra_channels=extra, clamp=s.clamp)
        if mask is not None and not self.inpainting_unet:
            generate_region = denoise

            def denoise(z_t, t):  # noqa: F811 - the known region's estimate is the source itself
                return (m * generate_region(z_t, t) + (1.0 - m) * x_src).astype(np.float32)

        with progress_bar(len(timesteps), progress) as bar:
            x = pipe.sample(denoise, z, s.sampler, timesteps, sources, bar)
        images = pipe.decode(x, timings, s.decoder)                                 # (N, 3, H, W)
        if mask is not None:
            weight = feathered(mask, radius=max(mask.shape[-1] / 64.0, 0.5))
            images = weight * images + (1.0 - weight) * pixels
        timings.total = time.perf_counter() - begin
        meta = [pipe.metadata(prompt, s, s.seed + i) | {"mode": "inpaint" if mask is not None else "edit",
                                                          "strength": s.strength, "steps_run": len(timesteps)}
                for i in range(s.num_images)]
        return Result(to_pil(images), meta, timings)

"""Text-to-image: tokenize, encode, sample, decode, on any backend.

The pipeline owns the glue every backend shares: checking the request against the model card,
turning the UNet into a ``denoise(z, t) -> x_hat`` callable (one batch-1 call for a student that
takes w, one batch-2 classifier-free-guidance call for a teacher), drawing seeded noise, running the
chosen sampler and timing each component.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from .checks import (InputValueError, batch_pixels, check_output, finite_number, image_count, image_side,
                     require_finite, seeds, whole_number)
from .decoders import DecoderChoiceError, resolve_decoder
from .guidance import combine, guidance_scale_from_w
from .noise import batch_noise, stacked_normal
from .samplers import default_timesteps, get_sampler, sample_ddim, sample_dpmpp_2m, sample_lcm, sample_stochastic
from .schedule import to_x0


class GenerationError(ValueError):
    """A request that cannot be run; the message names the problem in one line."""


@dataclass
class Settings:
    """One generation request. ``None`` fields take the model card's recommendation."""

    steps: Optional[int] = None
    w: Optional[float] = None
    sampler: Optional[str] = None
    seed: int = 0
    num_images: int = 1
    height: Optional[int] = None
    width: Optional[int] = None
    negative_prompt: str = ""
    decoder: Optional[str] = None
    """``tiny`` or ``full`` (see :mod:`ane_diffusion.decoders`); None: tiny when the model has one."""
    clamp: bool = False
    """Clip every step's x estimate to the card's ``latent_range`` (:mod:`ane_diffusion.latent_range`)."""


@dataclass
class Timings:
    text_encoder: float = 0.0
    unet: float = 0.0
    unet_calls: int = 0
    vae_decode: float = 0.0
    vae_encode: float = 0.0
    total: float = 0.0

    def summary(self) -> str:
        per_call = self.unet / max(self.unet_calls, 1)
        return (f"text encoder {self.text_encoder:.3f}s | unet {self.unet:.3f}s ({self.unet_calls} calls, "
                f"{per_call * 1000:.1f} ms each) | vae decode {self.vae_decode:.3f}s"
                + (f" | vae encode {self.vae_encode:.3f}s" if self.vae_encode else "") + f" | total {self.total:.3f}s")


@dataclass
class Result:
    images: list
    """PIL images, one per (prompt, image index)."""
    metadata: list
    """One dict per image: the parameters that reproduce it (written into the PNG)."""
    timings: Timings = field(default_factory=Timings)


def to_pil(images: np.ndarray) -> list:
    """(B, 3, H, W) in [-1, 1] -> PIL RGB images."""
    from PIL import Image

    pixels = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return [Image.fromarray(p) for p in pixels]


class Pipeline:
    def __init__(self, bundle, backend):
        self.bundle = bundle
        self.backend = backend
        self.card = bundle.card
        self.schedule = bundle.schedule
        self.tokenizer = bundle.tokenizer()

    # -- checking ---------------------------------------------------------------------------
    def resolve(self, prompts: Sequence[str], settings: Settings) -> Settings:
        """Fill defaults from the card and reject what cannot run, with one-line messages."""
        card = self.card
        s = replace(settings)
        s.sampler = get_sampler(s.sampler or card.recommended_sampler)
        s.steps = (card.steps or card.recommended_steps) if s.steps is None else whole_number(s.steps, "steps")
        s.w = card.default_w if s.w is None else finite_number(s.w, "w")
        try:
            s.decoder = resolve_decoder(self.bundle, s.decoder)
        except DecoderChoiceError as exc:
            raise GenerationError(str(exc)) from None
        if not prompts:
            raise GenerationError("no prompt given")
        if s.steps < 1:
            raise GenerationError(f"steps must be >= 1, got {s.steps}")
        s.num_images = image_count(s.num_images)
        s.seed = seeds(s.seed, s.num_images)
        s.height, s.width = self._check_size(s.height, s.width)
        batch_pixels(s.num_images, s.height, s.width)
        if s.clamp:
            self._check_clamp()
        if not card.w_min <= s.w <= card.w_max:
            who = "student" if card.is_student else "model"
            raise GenerationError(f"w={s.w:g} is outside this {who}'s range [{card.w_min:g}, {card.w_max:g}] "
                                  f"(guidance_scale = 1 + w)")
        if card.is_student:
            if card.steps and s.steps != card.steps:
                warnings.warn(f"this student was distilled for {card.steps} steps; {s.steps} may look worse",
                              stacklevel=2)
            if s.negative_prompt:
                warnings.warn("negative prompts need the teacher's unconditional branch; ignored for a student",
                              stacklevel=2)
                s.negative_prompt = ""
        for prompt in list(prompts) + [s.negative_prompt]:
            self.tokenizer.encode(prompt)  # raises PromptTooLongError
        return s

    def _check_clamp(self) -> None:
        bounds = self.card.clamp_range
        if bounds is None:
            raise GenerationError(f"--clamp needs the data latents' range, and the card of {self.bundle.source} "
                                  "records none (students distilled by ane-diffusion from in-memory data carry one)")
        if bounds.channels != self.bundle.latent_channels:
            raise GenerationError(f"the card's latent_range has {bounds.channels} channels; the latents have "
                                  f"{self.bundle.latent_channels}")

    def _check_size(self, height, width) -> tuple[int, int]:
        """``(height, width)``: None takes the model's size; others must be positive multiples of the
        VAE factor x UNet downsampling, at most :data:`~ane_diffusion.checks.MAX_IMAGE_SIDE`."""
        factor = self.bundle.vae_scale_factor * 2 ** (len(self.bundle.configs["unet"]["block_out_channels"]) - 1)
        default = self.bundle.default_size
        try:
            return image_side(height, "height", factor, default), image_side(width, "width", factor, default)
        except InputValueError as exc:
            raise GenerationError(str(exc)) from None

    # -- pieces -----------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str], timings: Timings) -> np.ndarray:
        start = time.perf_counter()
        hidden = self.backend.encode_text(self.tokenizer.encode_batch(list(prompts)))
        timings.text_encoder += time.perf_counter() - start
        return check_output(hidden, self.backend, "text_encoder", "the text encoder's output")

    def denoiser(self, cond: np.ndarray, uncond: Optional[np.ndarray], w: float, timings: Timings,
                 extra_channels: Optional[np.ndarray] = None, clamp: bool = False):
        """``denoise(z, t) -> x_hat``: one student call, or one batch-2 guided teacher call.

        ``extra_channels`` (B, k, h, w) are appended to the UNet input (an inpainting UNet's mask
        and masked-image latent); the estimate is of the first channels, the latent. ``clamp``:
        ``x_hat`` is clipped to the card's latent range (static thresholding).
        """
        kind = self.card.prediction_type
        student = self.card.is_student
        bounds = self.card.clamp_range if clamp else None
        calls = [0]

        def denoise(z: np.ndarray, t: int) -> np.ndarray:
            start = time.perf_counter()
            calls[0] += 1
            what = f"the UNet's output at denoising step {calls[0]} (timestep {t})"
            batch = z.shape[0]
            unet_in = z if extra_channels is None else np.concatenate([z, extra_channels], axis=1)
            if student:
                out = self.backend.predict(unet_in, t, cond, np.full(batch, w, np.float32))
            elif w == 0 or uncond is None:
                out = self.backend.predict(unet_in, t, cond)
            else:
                both = self.backend.predict(np.concatenate([unet_in, unet_in]), t, np.concatenate([uncond, cond]))
                check_output(both, self.backend, "unet", what)
                out = combine(both[batch:], both[:batch], w)
            timings.unet += time.perf_counter() - start
            check_output(out, self.backend, "unet", what)
            timings.unet_calls += 1
            alpha, sigma = self.schedule.alpha_sigma(t)
            x0 = to_x0(out, z, alpha, sigma, kind).astype(np.float32)
            return x0 if bounds is None else bounds.clamp(x0)

        return denoise

    def sample(self, denoise, z: np.ndarray, sampler: str, timesteps, sources, progress=None) -> np.ndarray:
        """Run ``sampler`` from latents ``z`` along ``timesteps`` (a suffix of the grid when editing)."""
        def noise(shape):
            return stacked_normal(sources, shape[1:])

        callback = (lambda i, t, _z: progress.update(1)) if progress is not None else None
        if sampler == "ddim":
            x = sample_ddim(denoise, z, timesteps, self.schedule, callback)
        elif sampler == "stochastic":
            x = sample_stochastic(denoise, z, timesteps, self.schedule, noise, callback)
        elif sampler == "lcm":
            x = sample_lcm(denoise, z, timesteps, self.schedule, noise,
                           boundary_condition=self.card.kind == "lcm", callback=callback)
        else:
            x = sample_dpmpp_2m(denoise, z, len(timesteps), self.schedule, callback)
        return require_finite(x, f"the latents after {len(timesteps)} {sampler} steps",
                              "the sampler's arithmetic overflowed: check the model and the request")

    def decode(self, latents: np.ndarray, timings: Timings, decoder: str = "full") -> np.ndarray:
        """Diffusion latents (B, 4, h, w) -> images (B, 3, H, W) in [-1, 1] through ``decoder``
        (``full`` or ``tiny``; both take latents / the VAE's scaling factor)."""
        start = time.perf_counter()
        images = []
        for i in range(latents.shape[0]):
            image = self.backend.decode(latents[i:i + 1] / self.bundle.scaling_factor, decoder)
            images.append(check_output(image, self.backend, "vae_decoder",
                                       f"the {decoder} VAE decoder's output (image {i + 1} of {latents.shape[0]})"))
        timings.vae_decode += time.perf_counter() - start
        return np.concatenate(images)

    # -- text to image ----------------------------------------------------------------------
    def text_to_image(self, prompts: Sequence[str] | str, settings: Settings = Settings(),
                      progress: bool = False) -> Result:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if int(self.bundle.configs["unet"].get("in_channels", 4)) != self.bundle.latent_channels:
            raise GenerationError("this UNet takes extra input channels (an inpainting UNet): use inpaint")
        s = self.resolve(prompts, settings)
        timings = Timings()
        begin = time.perf_counter()
        factor = self.bundle.vae_scale_factor
        latent_shape = (self.bundle.latent_channels, s.height // factor, s.width // factor)
        timesteps = default_timesteps(s.sampler, s.steps, self.schedule.num_train_timesteps)
        images, metadata = [], []
        needs_uncond = not self.card.is_student and s.w != 0
        with progress_bar(len(prompts) * len(timesteps), progress) as bar:
            uncond = self.encode_prompts([s.negative_prompt], timings) if needs_uncond else None
            for prompt in prompts:
                cond = self.encode_prompts([prompt], timings)
                z, sources = batch_noise(s.seed, s.num_images, latent_shape)
                repeat = (lambda h: np.repeat(h, s.num_images, axis=0))
                denoise = self.denoiser(repeat(cond), repeat(uncond) if uncond is not None else None, s.w, timings,
                                        clamp=s.clamp)
                x = self.sample(denoise, z, s.sampler, timesteps, sources, bar)
                images += to_pil(self.decode(x, timings, s.decoder))
                metadata += [self.metadata(prompt, s, s.seed + i) for i in range(s.num_images)]
        timings.total = time.perf_counter() - begin
        return Result(images, metadata, timings)

    def metadata(self, prompt: str, s: Settings, seed: int) -> dict:
        return {"prompt": prompt, "negative_prompt": s.negative_prompt, "seed": seed, "steps": s.steps,
                "w": s.w, "guidance_scale": guidance_scale_from_w(s.w), "sampler": s.sampler,
                "height": s.height, "width": s.width, "model": self.bundle.source, "model_kind": self.card.kind,
                "backend": self.backend.name, "decoder": s.decoder or "full", "clamp": bool(s.clamp),
                "generator": "ane-diffusion"} | self._lora_metadata()

    def _lora_metadata(self) -> dict:
        loras = self.bundle.extra.get("loras")
        return {"loras": [{"name": r["lora"], "path": r["source"], "scale": r["scale"], "sha256": r["sha256"]}
                          for r in loras]} if loras else {}


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool):
    """A tqdm bar (None when not ``enabled``), closed on the way out, also when an error is raised,
    so the error's line never lands on the bar's line."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc="denoising", unit="step", leave=False)
    try:
        yield bar
    finally:
        bar.close()


__all__ = ["GenerationError", "Pipeline", "Result", "Settings", "Timings", "to_pil"]

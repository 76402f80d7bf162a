"""The ``apple-pipeline`` target: a student export that Apple's Swift ``StableDiffusionPipeline`` runs unchanged.

What Apple's pipeline (apple/ml-stable-diffusion, ``swift/StableDiffusion/pipeline``) feeds and
reads, and what this target does about it (docs/coreml.md, "Apple's pipeline", has the table):

- ``Unet``: fed ``sample`` (B, 4, h, w), ``timestep`` (B,) and ``encoder_hidden_states``
  (B, C, 1, 77) by name, all float32; it reads the first output. With ``guidanceScale < 1`` it
  makes one batch-1 call per step. So the student's guidance weight ``w`` is fixed at conversion
  time (its float32 sinusoidal embedding becomes a constant of the graph) and there is no
  ``guidance_weight`` input.
- Its schedulers assume epsilon prediction: a v-prediction student's output is converted to
  epsilon inside the graph with :func:`ane_diffusion.schedule.eps_from_prediction`, ``alpha_t``
  and ``sigma_t`` looked up from the training schedule by the (integer-valued) timestep fed.
- ``TextEncoder``: fed its first input as float32 token ids (1, 77); reads ``last_hidden_state``.
- ``VAEDecoder``: fed ``latents / decoderScaleFactor`` (default 0.18215) through its first input;
  reads the first output. A model whose VAE has another ``scaling_factor`` s gets the factor
  folded in: the package multiplies its input by ``0.18215 / s``, so the default is right.
- ``VAEEncoder`` (image-to-image): Apple splits the first output into mean and log-variance,
  samples, and multiplies by ``encoderScaleFactor`` (0.18215); the package returns the mean
  times ``s / 0.18215`` and the log-variance plus ``2 ln(s / 0.18215)``, so the sample is right.
- Resources: ``TextEncoder``, ``Unet``, ``VAEDecoder``, ``VAEEncoder`` (compiled by Xcode or
  ``xcrun coremlcompiler`` to ``.mlmodelc``), ``vocab.json``, ``merges.txt``.

Torch is imported inside the functions that need it (the contract code imports this module).
"""

from __future__ import annotations

import math
from typing import Any

NAME = "apple-pipeline"
"""The ``--target`` value."""
APPLE_SCALE_FACTOR = 0.18215
"""Apple's ``decoderScaleFactor`` and ``encoderScaleFactor`` defaults (PipelineConfiguration)."""

APP_SETTINGS = {
    "schedulerType": "dpmSolverMultistepScheduler",
    "schedulerTimestepSpacing": "linspace",
    "guidanceScale": 0.0,
    "decoderScaleFactor": APPLE_SCALE_FACTOR,
    "encoderScaleFactor": APPLE_SCALE_FACTOR,
}
"""What an app sets in ``StableDiffusionPipeline.Configuration`` (``stepCount`` is the card's steps).
Chosen by ``benchmarks/apple_schedulers.py`` (results in ``benchmarks/results/apple-schedulers.md``)."""


def check(bundle, guidance_weight) -> float:
    """The w to bake in (the card's default when None); one-line :class:`ConversionError` otherwise."""
    from ..options import ConversionError

    card = bundle.card
    if not card.is_student:
        raise ConversionError(f"--target {NAME} needs a guidance-distilled student (one call per step); "
                              f"{bundle.source} is a {card.kind}: convert it with the default target")
    w = float(card.default_w if guidance_weight is None else guidance_weight)
    if not math.isfinite(w) or not (card.w_min <= w <= card.w_max):
        raise ConversionError(f"--guidance-weight {w:g} is outside the student's range "
                              f"[{card.w_min:g}, {card.w_max:g}]")
    return w


def fold(geo) -> float:
    """The decoder's input multiplier ``0.18215 / scaling_factor`` (1 for SD's own VAE)."""
    return APPLE_SCALE_FACTOR / float(geo.scaling_factor)


# --------------------------------------------------------------------------------------------- #
# Inputs and outputs
# --------------------------------------------------------------------------------------------- #


def io_specs(key: str, geo) -> tuple[list, list]:
    """Inputs and outputs as Apple's pipeline feeds and reads them: every tensor float32."""
    from ..contract import TensorSpec

    c, h, w = geo.latent_channels, geo.latent_height, geo.latent_width
    length, hidden = geo.max_length, geo.text_hidden
    f = "float32"
    if key == "text_encoder":
        return ([TensorSpec("input_ids", (1, length), f, "CLIP token ids as float32 (Apple's pipeline feeds them "
                            f"so): start token, tokens, end token, padded with the end token to {length}")],
                [TensorSpec("last_hidden_state", (1, length, hidden), f, "final-layer-norm hidden states"),
                 TensorSpec("pooled_outputs", (1, hidden), f, "hidden state at the first end token")])
    if key == "unet":
        return ([TensorSpec("sample", (1, c, h, w), f, "noisy latents z_t"),
                 TensorSpec("timestep", (1,), f, f"training timestep in [0, {geo.num_train_timesteps}) (integer "
                            "values; rounded inside)"),
                 TensorSpec("encoder_hidden_states", (1, hidden, 1, length), f,
                            f"TextEncoder last_hidden_state transposed to (1, {hidden}, 1, {length})")],
                [TensorSpec("noise_pred", (1, c, h, w), f,
                            f"epsilon (the student's {geo.prediction_type} output converted inside) at the "
                            f"guidance weight w = {geo.fixed_w:g} fixed at conversion")])
    if key == "vae_decoder":
        return ([TensorSpec("z", (1, c, h, w), f, f"latents / {APPLE_SCALE_FACTOR} (Apple's default "
                            f"decoderScaleFactor; the VAE's own factor {geo.scaling_factor:g} is folded in)")],
                [TensorSpec("image", (1, 3, geo.height, geo.width), f, "RGB image in [-1, 1]")])
    if key == "vae_encoder":
        return ([TensorSpec("x", (1, 3, geo.height, geo.width), f, "RGB image in [-1, 1]")],
                [TensorSpec("latent", (1, 2 * c, h, w), f,
                            f"mean and log-variance stacked, rescaled so that a sample times {APPLE_SCALE_FACTOR} "
                            "(Apple's encoderScaleFactor) is the UNet's latent")])
    raise KeyError(key)


def contract_section(geo, card) -> dict[str, Any]:
    """The contract's ``apple_pipeline`` entry: what was fixed at conversion and the app's settings."""
    return {"guidance_weight": geo.fixed_w, "w_convention": "paper: guidance_scale = 1 + w",
            "prediction_type": "epsilon", "source_prediction_type": geo.prediction_type,
            "vae_scaling_factor": geo.scaling_factor, "decoder_scale_factor": APPLE_SCALE_FACTOR,
            "settings": {**APP_SETTINGS, "stepCount": int(card.steps or card.recommended_steps)}}


# --------------------------------------------------------------------------------------------- #
# Torch wrappers
# --------------------------------------------------------------------------------------------- #


def _alpha_sigma_tables(bundle):
    import torch

    from ane_diffusion.schedule import DiscreteSchedule

    schedule = DiscreteSchedule.from_diffusers_config(bundle.configs["scheduler"])
    alpha, sigma = schedule.alpha_sigma(range(schedule.num_train_timesteps))
    return torch.tensor(alpha, dtype=torch.float32), torch.tensor(sigma, dtype=torch.float32)


def _classes():
    import torch

    from ane_diffusion.schedule import eps_from_prediction

    class AppleUNet(torch.nn.Module):
        """forward(sample (1, 4, h, w), timestep (1,), encoder_hidden_states (1, C, 1, 77)) -> epsilon.

        ``unet(sample, timestep, encoder_hidden_states, timestep_cond)`` is the student (ANE-rewritten
        or not); the guidance embedding of the fixed w is a float32 constant."""

        def __init__(self, unet, w: float, embedding, bundle, kind: str) -> None:
            super().__init__()
            self.unet = unet
            self.kind = kind
            self.register_buffer("cond", embedding.torch(torch.tensor([float(w)])))  # (1, D) float32
            alpha, sigma = _alpha_sigma_tables(bundle)
            self.register_buffer("alpha", alpha)
            self.register_buffer("sigma", sigma)

        def forward(self, sample, timestep, encoder_hidden_states):
            out = self.unet(sample, timestep, encoder_hidden_states, self.cond.expand(sample.shape[0], -1))
            index = timestep.round().clamp(0, self.alpha.shape[0] - 1).to(torch.int32)  # (B,)
            alpha = self.alpha[index].reshape(-1, 1, 1, 1)
            sigma = self.sigma[index].reshape(-1, 1, 1, 1)
            return eps_from_prediction(out, sample, alpha, sigma, self.kind)

    class AppleDecoder(torch.nn.Module):
        """forward(z = latents / 0.18215) -> image: the VAE's own factor folded in."""

        def __init__(self, decoder, factor: float) -> None:
            super().__init__()
            self.decoder, self.factor = decoder, float(factor)

        def forward(self, z):
            return self.decoder(z * self.factor)

    class AppleEncoder(torch.nn.Module):
        """forward(x) -> (mean / factor, logvar - 2 ln factor) stacked on the channel axis."""

        def __init__(self, encoder, factor: float) -> None:
            super().__init__()
            self.encoder, self.factor = encoder, float(factor)

        def forward(self, x):
            mean, logvar = self.encoder(x).chunk(2, dim=1)
            return torch.cat([mean / self.factor, logvar - 2.0 * math.log(self.factor)], dim=1)

    return AppleUNet, AppleDecoder, AppleEncoder


def traceable(key: str, rewritten, geo, bundle):
    """The module to trace for ``key`` from its ANE-rewritten source module."""
    from ..ane import rewrite as rw

    apple_unet, apple_decoder, apple_encoder = _classes()
    if key == "text_encoder":
        return rewritten  # casts float ids to integers itself
    if key == "unet":
        return apple_unet(rw.UNetANEWrapper(rewritten), geo.fixed_w, geo.guidance, bundle,
                          geo.prediction_type).eval()
    if key == "vae_decoder":
        return apple_decoder(rw.VAEDecoderANEWrapper(rewritten), fold(geo)).eval()
    return apple_encoder(rw.VAEEncoderANEWrapper(rewritten), fold(geo)).eval()


def example_inputs(key: str, geo, bundle) -> tuple:
    """Tracing inputs in the package's input order (no guidance_weight; float token ids)."""
    from ..components import example_inputs as base

    inputs = base(key, geo, bundle)
    if key == "text_encoder":
        return (inputs[0].float(),)
    if key == "unet":
        return inputs[:3]
    return inputs


def reference(name: str, module, feeds: dict, bundle, contract: dict) -> dict:
    """The ORIGINAL PyTorch module's outputs under this target's arithmetic (float32), for verify."""
    import numpy as np
    import torch

    t = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in feeds.items()}
    section = contract["apple_pipeline"]
    factor = APPLE_SCALE_FACTOR / float(section["vae_scaling_factor"])
    apple_unet, apple_decoder, apple_encoder = _classes()
    with torch.no_grad():
        if name == "Unet":
            def student(sample, timestep, ehs, cond):
                ehs = ehs.squeeze(2).transpose(1, 2)  # (B, C, 1, S) -> (B, S, C)
                return module(sample, timestep, ehs, timestep_cond=cond).sample

            wrapper = apple_unet(student, section["guidance_weight"], bundle.card.guidance_embedding, bundle,
                                 section["source_prediction_type"])
            wrapper.unet = student  # a plain function, not a module
            return {"noise_pred": wrapper(t["sample"], t["timestep"], t["encoder_hidden_states"]).numpy()}
        if name == "VAEDecoder":
            return {"image": module.decode(t["z"] * factor).sample.numpy()}
        moments = module.encoder(t["x"])
        if module.quant_conv is not None:
            moments = module.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        return {"latent": torch.cat([mean / factor, logvar - 2.0 * math.log(factor)], dim=1).numpy()}

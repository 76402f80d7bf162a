"""Which VAE decodes (and encodes): the bundle's full VAE, or a distilled tiny one.

A bundle may carry a tiny autoencoder beside its VAE (folder ``vae_tiny/``: diffusers'
``AutoencoderTiny``, the TAESD architecture, trained by ``python -m ane_diffusion distill decoder``).
``--decoder tiny|full`` picks one per request; the default is ``tiny`` when the bundle has one.

One convention for both decoders, so that the pipeline, the backends, the Core ML contract and
Apple's Swift pipeline feed them alike:

* decoder input ``z = latents / vae.scaling_factor`` (B, 4, h, w) float32 (what the full
  ``AutoencoderKL.decode`` takes) -> image (B, 3, H, W) in [-1, 1];
* encoder input image (B, 3, H, W) in [-1, 1] -> ``z`` (posterior mean for the full VAE), so the
  caller multiplies by ``vae.scaling_factor`` to get diffusion latents.

The tiny autoencoder's own convention is TAESD's (decoder fed the *scaled* latents directly, encoder
returning them); :func:`tiny_decoder` and :func:`tiny_encoder` put that one scale on each side.
This module is the only place that formula lives.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

DECODERS = ("tiny", "full")
TINY = "vae_tiny"
"""Component name (folder, configs key) of the tiny autoencoder in a bundle."""


class DecoderChoiceError(ValueError):
    """``--decoder`` asks for what the model does not have; one line."""


def has_tiny(bundle) -> bool:
    return TINY in bundle.configs


def available_decoders(bundle) -> tuple:
    """The decoders ``bundle`` can run: a PyTorch bundle always has its full VAE, plus ``tiny`` when
    it carries ``vae_tiny``; a Core ML export has what its contract lists (``extra["decoders"]``)."""
    if "decoders" in bundle.extra:
        return tuple(bundle.extra["decoders"])
    return ("tiny", "full") if has_tiny(bundle) else ("full",)


def resolve_decoder(bundle, requested: Optional[str]) -> str:
    """``requested`` (``tiny``, ``full`` or None) checked against ``bundle``; None -> tiny when present.

    Raises :class:`DecoderChoiceError` for an unknown name or a decoder the bundle lacks.
    """
    available = available_decoders(bundle)
    if requested is None:
        return "tiny" if "tiny" in available else "full"
    if requested not in DECODERS:
        raise DecoderChoiceError(f"unknown decoder {requested!r}; choose one of: {', '.join(DECODERS)}")
    if requested not in available:
        if requested == "tiny":
            raise DecoderChoiceError(f"{bundle.source} has no tiny decoder (train one with `python -m ane_diffusion "
                                     "distill decoder`); use --decoder full")
        raise DecoderChoiceError(f"{bundle.source} has no full decoder (a Core ML export with only the tiny one: "
                                 "convert with --components ...,vae_decoder_full); use --decoder tiny")
    return requested


def tiny_config(vae_config: dict, width: Optional[int] = None) -> dict:
    """An ``AutoencoderTiny`` config that fits a VAE: same latent channels and scale factor.

    The VAE downsamples ``len(block_out_channels) - 1`` times, so the tiny autoencoder gets that
    many levels plus one (its decoder upsamples between levels). Widths: TAESD's 64 channels for a
    VAE as wide as Stable Diffusion's (>= 256 channels at the bottom), otherwise half the VAE's
    widest level, at least 16 (32 for the demo's 64-channel VAE: a quarter, 16, lost up to 21
    points of shape accuracy on the demo's 32x32 scenes, issue 13). Blocks per level:
    TAESD's (1, 3, 3, 3) / (3, 3, 3, 1), the last levels kept when there are fewer. ``width``
    (channels at every level) overrides the rule; ValueError when it is below 1.
    """
    if width is not None and width < 1:
        raise ValueError(f"tiny decoder width must be a positive number of channels, got {width}")
    levels = len(vae_config.get("block_out_channels", [0, 0, 0, 0]))
    widest = max(vae_config.get("block_out_channels") or [512])
    width = width or (64 if widest >= 256 else max(16, widest // 2))
    encoder_blocks = ((1,) + (3,) * (levels - 1))
    decoder_blocks = ((3,) * (levels - 1) + (1,))
    return {"_class_name": "AutoencoderTiny", "in_channels": 3, "out_channels": 3,
            "latent_channels": int(vae_config.get("latent_channels", 4)),
            "encoder_block_out_channels": [width] * levels, "decoder_block_out_channels": [width] * levels,
            "num_encoder_blocks": list(encoder_blocks), "num_decoder_blocks": list(decoder_blocks),
            "upsampling_scaling_factor": 2, "act_fn": "relu", "upsample_fn": "nearest",
            "latent_magnitude": 3, "latent_shift": 0.5, "scaling_factor": 1.0, "shift_factor": 0.0}


def build_tiny(config: dict):
    """A randomly initialised ``AutoencoderTiny`` from ``config`` (keys starting ``_`` ignored)."""
    from diffusers import AutoencoderTiny

    # AutoencoderTiny records ``block_out_channels`` in its own config (a copy of the decoder's), but
    # does not take it back as an argument
    return AutoencoderTiny.from_config({k: v for k, v in config.items()
                                        if not k.startswith("_") and k != "block_out_channels"})


@lru_cache(maxsize=None)
def _wrappers():
    """The two torch wrappers, defined on first use (this module must import without torch)."""
    import torch

    class TinyDecoder(torch.nn.Module):
        """``AutoencoderTiny``'s decoder in the full decoder's convention: ``z`` (B, 4, h, w), the
        latents divided by the VAE's ``scaling_factor`` -> image (B, 3, H, W) in [-1, 1]."""

        def __init__(self, tiny, scaling_factor: float):
            super().__init__()
            self.decoder = tiny.decoder
            self.scaling_factor = float(scaling_factor)

        def forward(self, z):
            return self.decoder(z * self.scaling_factor)

    class TinyEncoder(torch.nn.Module):
        """``AutoencoderTiny``'s encoder in the full encoder's convention: image (B, 3, H, W) in
        [-1, 1] -> ``z`` (B, 4, h, w) = latents / the VAE's ``scaling_factor`` (a deterministic
        encoder: posterior mean and sample coincide)."""

        def __init__(self, tiny, scaling_factor: float):
            super().__init__()
            self.encoder = tiny.encoder
            self.scaling_factor = float(scaling_factor)

        def forward(self, images):
            return self.encoder(images) / self.scaling_factor

    return TinyDecoder, TinyEncoder


def tiny_decoder(tiny, scaling_factor: float):
    """A torch module: ``z`` (latents / ``scaling_factor``) -> image in [-1, 1], through ``tiny``."""
    return _wrappers()[0](tiny, scaling_factor)


def tiny_encoder(tiny, scaling_factor: float):
    """A torch module: image in [-1, 1] -> ``z`` (latents / ``scaling_factor``), through ``tiny``."""
    return _wrappers()[1](tiny, scaling_factor)


__all__ = ["DECODERS", "TINY", "available_decoders", "DecoderChoiceError", "build_tiny", "tiny_decoder",
           "tiny_encoder", "has_tiny",
           "resolve_decoder", "tiny_config"]

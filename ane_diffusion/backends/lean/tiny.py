"""The tiny autoencoder (diffusers' ``AutoencoderTiny``, the TAESD architecture) in plain torch.

Parameter names are diffusers' (``encoder.layers.N...``, ``decoder.layers.N.conv.M...``,
``.skip``), so a saved ``vae_tiny`` state dict loads with ``strict=True``. The maths is that of
diffusers 0.42.1's ``EncoderTiny``, ``DecoderTiny`` and ``AutoencoderTinyBlock``:

* block: ``fuse(conv(x) + skip(x))`` with ``conv`` = conv3x3, act, conv3x3, act, conv3x3,
  ``skip`` a bias-free 1x1 conv when the widths differ (identity otherwise), ``fuse`` a ReLU
  whatever ``act_fn`` is;
* encoder: image in [-1, 1] mapped to [0, 1] (``(x + 1) / 2``), conv3x3, then per level a bias-free
  stride-2 conv3x3 (not on the first level) and that level's blocks, then conv3x3 to the latents;
* decoder: latents soft-clamped ``3 tanh(z / 3)``, conv3x3 and act, then per level its blocks, an
  upsampling (``upsample_fn``, ``upsampling_scaling_factor``) and a bias-free conv3x3 (on the last
  level: no upsampling and a conv with bias to the image channels), output in [0, 1] mapped to
  [-1, 1] (``2x - 1``).

Decoder input and encoder output are TAESD's *scaled* latents; :mod:`ane_diffusion.decoders` puts
the VAE's scaling factor on each side. :func:`ane_diffusion.backends.lean.tiny_why_not` says which
configs this module cannot run.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from . import TINY_DEFAULTS, tiny_why_not

ACTIVATIONS = {"swish": nn.SiLU, "silu": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}
"""``act_fn`` names diffusers' ``get_activation`` accepts (case-insensitive), as torch modules."""


class AutoencoderTinyBlock(nn.Module):
    """Three 3x3 convs with ``act`` between, plus a skip, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, act_fn: str):
        super().__init__()
        act = ACTIVATIONS[act_fn.lower()]()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), act,
                                  nn.Conv2d(out_channels, out_channels, 3, padding=1), act,
                                  nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (nn.Conv2d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels
                     else nn.Identity())
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class EncoderTiny(nn.Module):
    """image (B, in_channels, H, W) in [-1, 1] -> scaled latents (B, latent_channels, H/f, W/f),
    f = 2 ** (levels - 1)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks, block_out_channels, act_fn: str):
        super().__init__()
        layers = []
        for i, count in enumerate(num_blocks):
            width = int(block_out_channels[i])
            layers.append(nn.Conv2d(in_channels, width, 3, padding=1) if i == 0
                          else nn.Conv2d(width, width, 3, padding=1, stride=2, bias=False))
            layers += [AutoencoderTinyBlock(width, width, act_fn) for _ in range(int(count))]
        layers.append(nn.Conv2d(int(block_out_channels[-1]), out_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.add(1).div(2))


class DecoderTiny(nn.Module):
    """scaled latents (B, latent_channels, h, w) -> image (B, out_channels, h*f, w*f) in [-1, 1]
    (unbounded: nothing clips the output), f = upsampling_scaling_factor ** (levels - 1)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks, block_out_channels,
                 upsampling_scaling_factor: int, act_fn: str, upsample_fn: str):
        super().__init__()
        layers = [nn.Conv2d(in_channels, int(block_out_channels[0]), 3, padding=1), ACTIVATIONS[act_fn.lower()]()]
        for i, count in enumerate(num_blocks):
            last, width = i == len(num_blocks) - 1, int(block_out_channels[i])
            layers += [AutoencoderTinyBlock(width, width, act_fn) for _ in range(int(count))]
            if not last:
                layers.append(nn.Upsample(scale_factor=upsampling_scaling_factor, mode=upsample_fn))
            layers.append(nn.Conv2d(width, out_channels if last else width, 3, padding=1, bias=last))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.tanh(x / 3) * 3).mul(2).sub(1)


class AutoencoderTiny(nn.Module):
    """``encode(images).latents`` and ``decode(latents).sample`` as diffusers' ``AutoencoderTiny``
    (no tiling or slicing); ``forward`` is its 8-bit round trip. Raises ValueError for a config
    :func:`~ane_diffusion.backends.lean.tiny_why_not` rejects."""

    def __init__(self, config: dict):
        super().__init__()
        reason = tiny_why_not(config)
        if reason is not None:
            raise ValueError(f"the lean AutoencoderTiny does not implement {reason}")
        self.config = dict(config)
        c = {**TINY_DEFAULTS, **config}
        self.encoder = EncoderTiny(int(c["in_channels"]), int(c["latent_channels"]), c["num_encoder_blocks"],
                                   c["encoder_block_out_channels"], c["act_fn"])
        self.decoder = DecoderTiny(int(c["latent_channels"]), int(c["out_channels"]), c["num_decoder_blocks"],
                                   c["decoder_block_out_channels"], c["upsampling_scaling_factor"], c["act_fn"],
                                   c["upsample_fn"])
        self.latent_magnitude, self.latent_shift = c["latent_magnitude"], c["latent_shift"]

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(latents=self.encoder(x))

    def decode(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=self.decoder(x))

    def scale_latents(self, x: torch.Tensor) -> torch.Tensor:
        """raw latents -> [0, 1]"""
        return x.div(2 * self.latent_magnitude).add(self.latent_shift).clamp(0, 1)

    def unscale_latents(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> raw latents"""
        return x.sub(self.latent_shift).mul(2 * self.latent_magnitude)

    def forward(self, sample: torch.Tensor) -> SimpleNamespace:
        """Encode, quantise the latents to 8 bits, decode (diffusers' ``AutoencoderTiny.forward``)."""
        quantised = self.scale_latents(self.encode(sample).latents).mul_(255).round_().byte()
        return self.decode(self.unscale_latents(quantised / 255.0))

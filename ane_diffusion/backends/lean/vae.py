"""The Stable Diffusion VAE (diffusers' ``AutoencoderKL``): ``encode(x).latent_dist.mean``, ``decode(z).sample``."""

from __future__ import annotations

from types import SimpleNamespace

import torch.nn.functional as F
from torch import nn

from .layers import Downsample, ResnetBlock, Upsample, VAEAttention

EPS = 1e-6


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.attentions = nn.ModuleList([VAEAttention(channels, groups)])
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, None, groups, EPS) for _ in range(2)])

    def forward(self, h):
        return self.resnets[1](self.attentions[0](self.resnets[0](h)))


class _Level(nn.Module):
    def __init__(self, pairs, groups: int, down: bool | None, channels: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(i, o, None, groups, EPS) for i, o in pairs])
        if down is True:
            self.downsamplers = nn.ModuleList([Downsample(channels, padding=0)])
        elif down is False:
            self.upsamplers = nn.ModuleList([Upsample(channels)])

    def forward(self, h):
        for resnet in self.resnets:
            h = resnet(h)
        for resample in list(getattr(self, "downsamplers", [])) + list(getattr(self, "upsamplers", [])):
            h = resample(h)
        return h


class Encoder(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        channels, per, groups = list(c["block_out_channels"]), int(c["layers_per_block"]), int(c["norm_num_groups"])
        self.conv_in = nn.Conv2d(int(c.get("in_channels", 3)), channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        out = channels[0]
        for i in range(len(channels)):
            inp, out = out, channels[i]
            self.down_blocks.append(_Level([(inp if j == 0 else out, out) for j in range(per)], groups,
                                           True if i < len(channels) - 1 else None, out))
        self.mid_block = _Mid(channels[-1], groups)
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=EPS)
        self.conv_out = nn.Conv2d(channels[-1], 2 * int(c["latent_channels"]), 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(h))))


class Decoder(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        channels, per, groups = list(c["block_out_channels"]), int(c["layers_per_block"]), int(c["norm_num_groups"])
        reversed_channels = channels[::-1]
        self.conv_in = nn.Conv2d(int(c["latent_channels"]), channels[-1], 3, padding=1)
        self.mid_block = _Mid(channels[-1], groups)
        self.up_blocks = nn.ModuleList()
        out = reversed_channels[0]
        for i in range(len(channels)):
            prev, out = out, reversed_channels[i]
            self.up_blocks.append(_Level([(prev if j == 0 else out, out) for j in range(per + 1)], groups,
                                         False if i < len(channels) - 1 else None, out))
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=EPS)
        self.conv_out = nn.Conv2d(channels[0], int(c.get("out_channels", 3)), 3, padding=1)

    def forward(self, z):
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class VAE(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        latent = int(config["latent_channels"])
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1)
        self.post_quant_conv = nn.Conv2d(latent, latent, 1)

    def encode(self, x):
        """images (B, 3, H, W) in [-1, 1] -> ``.latent_dist.mean`` (B, latent_channels, H/f, W/f), unscaled."""
        moments = self.quant_conv(self.encoder(x))
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=moments[:, :moments.shape[1] // 2]))

    def decode(self, z):
        """latents (B, latent_channels, h, w), already divided by the scaling factor -> ``.sample`` (B, 3, h*f, w*f)."""
        return SimpleNamespace(sample=self.decoder(self.post_quant_conv(z)))

"""The Stable Diffusion UNet (diffusers' ``UNet2DConditionModel`` for SD 1.x/2.x-style configs)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Downsample, ResnetBlock, SpatialTransformer, Upsample


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float) -> torch.Tensor:
    """Sinusoidal timestep features (B,) -> (B, dim), as diffusers' ``get_timestep_embedding``."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / (half - shift)
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, dim: int, cond_dim: int | None):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.cond_proj = nn.Linear(cond_dim, in_channels, bias=False) if cond_dim else None

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        if condition is not None and self.cond_proj is not None:
            sample = sample + self.cond_proj(condition)
        return self.linear_2(F.silu(self.linear_1(sample)))


class Block(nn.Module):
    """One down or up level: resnets (with attention when ``heads``), then a resampler."""

    def __init__(self, resnet_channels: list[tuple[int, int]], temb: int, groups: int, eps: float,
                 heads: int | None, context_dim: int, linear: bool, down: bool | None, out_channels: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(i, o, temb, groups, eps) for i, o in resnet_channels])
        self.attentions = nn.ModuleList([SpatialTransformer(o, heads, context_dim, groups, linear)
                                         for _, o in resnet_channels]) if heads else None
        if down is True:
            self.downsamplers = nn.ModuleList([Downsample(out_channels, padding=1)])
        elif down is False:
            self.upsamplers = nn.ModuleList([Upsample(out_channels)])


class MidBlock(nn.Module):
    def __init__(self, channels: int, temb: int, groups: int, eps: float, heads: int, context_dim: int, linear: bool):
        super().__init__()
        self.attentions = nn.ModuleList([SpatialTransformer(channels, heads, context_dim, groups, linear)])
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, temb, groups, eps) for _ in range(2)])

    def forward(self, h, temb, context):
        h = self.resnets[0](h, temb)
        return self.resnets[1](self.attentions[0](h, context), temb)


class UNet(nn.Module):
    """``forward(sample, timestep, encoder_hidden_states, timestep_cond=None).sample``, as diffusers'."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        c = self.config
        channels = list(c["block_out_channels"])
        levels, per_block = len(channels), int(c["layers_per_block"])
        groups, eps = int(c.get("norm_num_groups", 32)), float(c.get("norm_eps", 1e-5))
        heads = c.get("num_attention_heads") or c.get("attention_head_dim") or 8
        heads = list(heads) if isinstance(heads, (list, tuple)) else [int(heads)] * levels
        context, linear = int(c["cross_attention_dim"]), bool(c.get("use_linear_projection", False))
        temb = 4 * channels[0]
        self.conv_in = nn.Conv2d(int(c.get("in_channels", 4)), channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], temb, c.get("time_cond_proj_dim"))
        self.down_blocks = nn.ModuleList()
        out = channels[0]
        for i, kind in enumerate(c["down_block_types"]):
            inp, out = out, channels[i]
            pairs = [(inp if j == 0 else out, out) for j in range(per_block)]
            self.down_blocks.append(Block(pairs, temb, groups, eps, heads[i] if kind.startswith("CrossAttn") else None,
                                          context, linear, True if i < levels - 1 else None, out))
        self.mid_block = MidBlock(channels[-1], temb, groups, eps, heads[-1], context, linear)
        self.up_blocks = nn.ModuleList()
        reversed_channels, reversed_heads = channels[::-1], heads[::-1]
        out = reversed_channels[0]
        for i, kind in enumerate(c["up_block_types"]):
            prev, out = out, reversed_channels[i]
            skip_in = reversed_channels[min(i + 1, levels - 1)]
            pairs = [((prev if j == 0 else out) + (skip_in if j == per_block else out), out)
                     for j in range(per_block + 1)]
            self.up_blocks.append(Block(pairs, temb, groups, eps,
                                        reversed_heads[i] if kind.startswith("CrossAttn") else None,
                                        context, linear, False if i < levels - 1 else None, out))
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=eps)
        self.conv_out = nn.Conv2d(channels[0], int(c.get("out_channels", 4)), 3, padding=1)

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, **_):
        """sample (B, C_in, h, w), timestep int or (B,) / (1,), encoder_hidden_states (B, 77, D),
        timestep_cond (B, time_cond_proj_dim) or None -> ``.sample`` (B, C_out, h, w), the input's dtype."""
        c = self.config
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
        t = t.reshape(-1).expand(sample.shape[0])
        features = timestep_embedding(t, self.conv_in.out_channels, bool(c.get("flip_sin_to_cos", True)),
                                      float(c.get("freq_shift", 0))).to(sample.dtype)
        temb = self.time_embedding(features, timestep_cond)
        h = self.conv_in(sample)
        skips = [h]
        for block in self.down_blocks:
            for k, resnet in enumerate(block.resnets):
                h = resnet(h, temb)
                if block.attentions is not None:
                    h = block.attentions[k](h, encoder_hidden_states)
                skips.append(h)
            if hasattr(block, "downsamplers"):
                h = block.downsamplers[0](h)
                skips.append(h)
        h = self.mid_block(h, temb, encoder_hidden_states)
        for block in self.up_blocks:
            for k, resnet in enumerate(block.resnets):
                h = resnet(torch.cat([h, skips.pop()], dim=1), temb)
                if block.attentions is not None:
                    h = block.attentions[k](h, encoder_hidden_states)
            if hasattr(block, "upsamplers"):
                h = block.upsamplers[0](h)
        return SimpleNamespace(sample=self.conv_out(F.silu(self.conv_norm_out(h))))

"""Tiny LoRA files for the tests, in the kohya and the diffusers/peft layouts."""

from __future__ import annotations

from pathlib import Path


def lora_targets(components) -> dict:
    """``{diffusers module path: (out, in)}`` of the layers the tiny LoRAs adapt: every attention
    query, value and output projection of the UNet and the text encoder."""
    targets = {}
    for name, module in components.unet.named_modules():
        if name.endswith((".to_q", ".to_v", ".to_out.0")) and "transformer_blocks" in name:
            targets["unet." + name] = tuple(module.weight.shape)
    for name, module in components.text_encoder.named_modules():
        if name.endswith((".q_proj", ".v_proj", ".out_proj")):
            targets["text_encoder." + name.removeprefix("text_model.")] = tuple(module.weight.shape)
    return targets


def make_lora(path: Path, targets: dict, rank: int = 2, alpha: float = 1.0, seed: int = 0, layout: str = "kohya") -> dict:
    """Write a LoRA of random ``A`` (rank x in), ``B`` (out x rank) for each target; returns
    ``{target: (A, B * alpha / rank)}``, the factors whose product is the weight update at scale 1.

    ``kohya``: ``lora_unet_<path_with_underscores>.lora_down/.lora_up/.alpha`` (``lora_te_`` for the
    text encoder, under ``text_model``); ``peft``: ``<target>.lora_A/.lora_B`` with the alpha/rank
    factor folded into ``B`` (the layout carries no alpha)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors, factors = {}, {}
    for target, (out_dim, in_dim) in sorted(targets.items()):
        a = torch.randn(rank, in_dim, generator=generator) * 0.3
        b = torch.randn(out_dim, rank, generator=generator) * 0.3
        factors[target] = (a, b * alpha / rank)
        if layout == "kohya":
            part, module = target.split(".", 1)
            if part == "text_encoder":
                module = "text_model." + module
            stem = ("lora_unet_" if part == "unet" else "lora_te_") + module.replace(".", "_")
            tensors |= {f"{stem}.lora_down.weight": a, f"{stem}.lora_up.weight": b, f"{stem}.alpha": torch.tensor(alpha)}
        else:
            tensors |= {f"{target}.lora_A.weight": a, f"{target}.lora_B.weight": b * alpha / rank}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return factors

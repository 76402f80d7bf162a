"""Tiny original-layout (CompVis / Stability) Stable Diffusion checkpoints, for the loader tests.

:func:`make_original_checkpoint` builds tiny diffusers/transformers modules of one family (SD 1.x
or 2.x text encoder, 4- or 9-channel UNet, optional LCM-style guidance input), renames their
weights to the original layout (the inverse of diffusers' single-file conversion, written out
below from the original code's module names) and saves one ``.safetensors`` file. The loader must
give back modules that compute exactly what the source modules compute.
"""

from __future__ import annotations

from pathlib import Path

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def tiny_family_configs(base: str = "sd1", in_channels: int = 4, guidance_dim: int | None = None) -> dict:
    """Configs of a tiny model of family ``base`` ('sd1' or 'sd2'); 32-channel groups as in SD."""
    text_hidden = 32 if base == "sd1" else 64
    unet = dict(sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1,
                block_out_channels=[32, 64, 64], norm_num_groups=32, cross_attention_dim=text_hidden,
                down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                attention_head_dim=8 if base == "sd1" else [1, 1, 1], use_linear_projection=base == "sd2")
    if guidance_dim:
        unet["time_cond_proj_dim"] = guidance_dim
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[32, 32],
               down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
               layers_per_block=1, norm_num_groups=32, sample_size=16)
    text = dict(hidden_size=text_hidden, intermediate_size=2 * text_hidden, num_attention_heads=1,
                num_hidden_layers=2, vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                eos_token_id=49407, pad_token_id=49407, projection_dim=text_hidden,
                hidden_act="quick_gelu" if base == "sd1" else "gelu")
    return {"unet": unet, "vae": vae, "text_encoder": text}


def unet_to_original(state: dict, config: dict) -> dict:
    """Diffusers UNet2DConditionModel weights -> ``model.diffusion_model.*`` names."""
    per = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    rename = []
    for i in range(levels):
        for j in range(per):
            rename.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.0."))
            rename.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.1."))
        rename.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op."))
        has_attention = config["up_block_types"][i].startswith("CrossAttn")
        for j in range(per + 1):
            rename.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(per + 1) * i + j}.0."))
            rename.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(per + 1) * i + j}.1."))
        rename.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(per + 1) * i + per}.{2 if has_attention else 1}."))
    rename += [("mid_block.attentions.0.", "middle_block.1."), ("mid_block.resnets.0.", "middle_block.0."),
               ("mid_block.resnets.1.", "middle_block.2.")]
    out = {}
    for key, value in state.items():
        new = key
        for hf, sd in UNET_TOP.items():
            if new.startswith(hf + "."):
                new = sd + new[len(hf):]
        for hf, sd in rename:
            if new.startswith(hf):
                rest = new[len(hf):]
                if "resnets" in hf:
                    for a, b in UNET_RESNET.items():
                        if rest.startswith(a + "."):
                            rest = b + rest[len(a):]
                new = sd + rest
                break
        out["model.diffusion_model." + new] = value
    return out


def vae_to_original(state: dict, config: dict) -> dict:
    """Diffusers AutoencoderKL weights -> ``first_stage_model.*`` names (attention as 1x1 convs)."""
    levels = len(config["block_out_channels"])
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out")
        new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
        for j in range(2):
            new = new.replace(f"mid_block.resnets.{j}.", f"mid.block_{j + 1}.")
        for i in range(levels):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block.")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")
        for a, b in VAE_RESNET.items():
            new = new.replace(f".{a}.", f".{b}.")
        if ".attn_1." in new:
            for a, b in VAE_ATTENTION.items():
                new = new.replace(f".attn_1.{a}.", f".attn_1.{b}.")
            if value.ndim == 2:
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def clip_to_original(state: dict) -> dict:
    """transformers CLIPTextModel weights -> SD 1.x ``cond_stage_model.transformer.text_model.*``."""
    return {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v for k, v in state.items()}


def openclip_to_original(state: dict, hidden: int) -> dict:
    """transformers CLIPTextModel weights -> SD 2.x OpenCLIP ``cond_stage_model.model.*`` names.

    SD 2.x runs the penultimate OpenCLIP layer, so one extra (unused) residual block is appended,
    as in the real checkpoints."""
    import torch

    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {"cond_stage_model.model.token_embedding.weight": state["embeddings.token_embedding.weight"],
           "cond_stage_model.model.positional_embedding": state["embeddings.position_embedding.weight"],
           "cond_stage_model.model.ln_final.weight": state["final_layer_norm.weight"],
           "cond_stage_model.model.ln_final.bias": state["final_layer_norm.bias"],
           "cond_stage_model.model.text_projection": torch.eye(hidden)}
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    for i in range(layers + 1):
        src = f"encoder.layers.{min(i, layers - 1)}."
        dst = f"cond_stage_model.model.transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[dst + f"attn.in_proj_{part}"] = torch.cat([state[src + f"self_attn.{n}_proj.{part}"] for n in "qkv"])
            out[dst + f"attn.out_proj.{part}"] = state[src + f"self_attn.out_proj.{part}"]
            out[dst + f"ln_1.{part}"] = state[src + f"layer_norm1.{part}"]
            out[dst + f"ln_2.{part}"] = state[src + f"layer_norm2.{part}"]
            out[dst + f"mlp.c_fc.{part}"] = state[src + f"mlp.fc1.{part}"]
            out[dst + f"mlp.c_proj.{part}"] = state[src + f"mlp.fc2.{part}"]
    return out


def make_original_checkpoint(path: Path, base: str = "sd1", in_channels: int = 4, guidance_dim: int | None = None,
                             seed: int = 0, metadata: dict | None = None, half: bool = False):
    """Write a tiny original-layout checkpoint to ``path``; returns the source TorchComponents.

    ``half``: store float16 weights (as most shared files do); the returned modules hold the same
    float16-rounded values in float32."""
    import torch
    from safetensors.torch import save_file

    from ..torch_models import TorchComponents, build_from_configs

    configs = tiny_family_configs(base, in_channels, guidance_dim)
    torch.manual_seed(seed)
    components = build_from_configs(configs | {"scheduler": {}})
    with torch.no_grad():  # non-trivial norms and a live guidance input, so every weight matters
        for name, param in components.unet.named_parameters():
            if name.endswith("norm1.weight") or "cond_proj" in name:
                param.normal_(1.0 if "norm" in name else 0.0, 0.3)
        if half:
            for module in components.modules().values():
                for param in module.parameters():
                    param.copy_(param.half().float())
    components = TorchComponents(*(m.eval() for m in (components.text_encoder, components.unet, components.vae)))
    state = unet_to_original(components.unet.state_dict(), configs["unet"])
    state |= vae_to_original(components.vae.state_dict(), configs["vae"])
    text_state = {k: v for k, v in components.text_encoder.state_dict().items() if "position_ids" not in k}
    state |= (clip_to_original(text_state) if base == "sd1"
              else openclip_to_original(text_state, configs["text_encoder"]["hidden_size"]))
    state = {k: v.half() if half and v.is_floating_point() else v for k, v in state.items()}
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return components


__all__ = ["make_original_checkpoint", "tiny_family_configs"]

"""Lean PyTorch modules for inference: the Stable Diffusion UNet, VAE and CLIP text encoder (and a
bundle's tiny autoencoder, ``vae_tiny``) in plain ``torch.nn``, loading the same safetensors
weights as diffusers and transformers.

Why: importing diffusers and transformers takes several times longer than importing torch
(about 10 s against 2-3 s on a 2-core machine), while the embedded demo model computes an image
in a tenth of a second; for the first image of a fresh process the imports were the whole cost.
These modules keep diffusers' and transformers' parameter names (weights load with
``strict=True``) and their maths for the configurations :func:`supports` accepts (the SD 1.x/2.x
family and this project's students); the tests check them against diffusers and transformers on
the same weights. Anything else (other block types, LoRA adapters, training, conversion) uses
diffusers and transformers as before.

``ANE_DIFFUSION_TORCH_MODELS=diffusers`` turns them off.
"""

from __future__ import annotations

import os

ENV = "ANE_DIFFUSION_TORCH_MODELS"

_UNET_FIXED = {  # config key: the values the lean UNet implements (missing key = diffusers' default)
    "act_fn": ("silu",), "center_input_sample": (False,), "class_embed_type": (None,), "addition_embed_type": (None,),
    "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,), "time_embedding_type": ("positional",),
    "resnet_time_scale_shift": ("default",), "dual_cross_attention": (False,), "only_cross_attention": (False,),
    "upcast_attention": (False, None), "attention_type": ("default",), "conv_in_kernel": (3,), "conv_out_kernel": (3,),
    "time_embedding_act_fn": (None,), "timestep_post_act": (None,), "num_class_embeds": (None,),
    "resnet_out_scale_factor": (1.0, 1), "mid_block_scale_factor": (1, 1.0), "downsample_padding": (1,),
    "transformer_layers_per_block": (1, None), "reverse_transformer_layers_per_block": (None,),
    "time_embedding_dim": (None,), "mid_block_only_cross_attention": (None, False), "class_embeddings_concat": (False,),
    "resnet_skip_time_act": (False,), "cross_attention_norm": (None,), "dropout": (0.0, 0),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", None), "addition_time_embed_dim": (None,),
    "projection_class_embeddings_input_dim": (None,)}
_VAE_FIXED = {"act_fn": ("silu",), "use_quant_conv": (True, None), "use_post_quant_conv": (True, None),
              "mid_block_add_attention": (True, None)}

TINY_DEFAULTS = {"in_channels": 3, "out_channels": 3, "encoder_block_out_channels": (64, 64, 64, 64),
                 "decoder_block_out_channels": (64, 64, 64, 64), "act_fn": "relu", "upsample_fn": "nearest",
                 "latent_channels": 4, "upsampling_scaling_factor": 2, "num_encoder_blocks": (1, 3, 3, 3),
                 "num_decoder_blocks": (3, 3, 3, 1), "latent_magnitude": 3, "latent_shift": 0.5}
"""diffusers' ``AutoencoderTiny`` defaults (TAESD's own configuration)."""
_TINY_ACTIVATIONS = ("swish", "silu", "mish", "gelu", "relu")  # diffusers' get_activation, case-insensitive
_TINY_UPSAMPLE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic")  # nn.Upsample on 4-D, align_corners unset


def why_not(configs: dict) -> str | None:
    """Why the lean modules cannot run ``configs`` (a reason in words), or None when they can."""
    if os.environ.get(ENV, "").lower() == "diffusers":
        return f"{ENV}=diffusers"
    unet, vae, text = configs["unet"], configs["vae"], configs["text_encoder"]
    for key, allowed in _UNET_FIXED.items():
        if key in unet and unet[key] not in allowed:
            return f"unet {key}={unet[key]!r}"
    if not set(unet["down_block_types"]) <= {"CrossAttnDownBlock2D", "DownBlock2D"} or not set(
            unet["up_block_types"]) <= {"CrossAttnUpBlock2D", "UpBlock2D"}:
        return "unet block types"
    if not isinstance(unet.get("layers_per_block"), int):
        return "unet layers_per_block per level"
    for key, allowed in _VAE_FIXED.items():
        if key in vae and vae[key] not in allowed:
            return f"vae {key}={vae[key]!r}"
    if set(vae.get("down_block_types", [])) - {"DownEncoderBlock2D"} or set(vae.get("up_block_types", [])) - {
            "UpDecoderBlock2D"}:
        return "vae block types"
    if text.get("hidden_act", "quick_gelu") not in ("quick_gelu", "gelu"):
        return f"text encoder hidden_act={text.get('hidden_act')!r}"
    return tiny_why_not(configs["vae_tiny"]) if "vae_tiny" in configs else None


def tiny_why_not(config: dict) -> str | None:
    """Why the lean ``AutoencoderTiny`` (:mod:`.tiny`) cannot run ``config``, or None when it can."""
    c = {**TINY_DEFAULTS, **config}
    if c.get("_class_name", "AutoencoderTiny") != "AutoencoderTiny":
        return f"vae_tiny _class_name={c['_class_name']!r}"
    if str(c["act_fn"]).lower() not in _TINY_ACTIVATIONS:
        return f"vae_tiny act_fn={c['act_fn']!r}"
    if c["upsample_fn"] not in _TINY_UPSAMPLE_MODES:
        return f"vae_tiny upsample_fn={c['upsample_fn']!r}"
    for part in ("encoder", "decoder"):
        widths, blocks = list(c[f"{part}_block_out_channels"]), list(c[f"num_{part}_blocks"])
        if not widths or len(widths) != len(blocks):
            return f"vae_tiny {part} levels"
        if len(set(widths)) != 1:  # diffusers' level-changing convs keep the width: only one width runs
            return f"vae_tiny {part}_block_out_channels={widths!r}"
    return None


def build(configs: dict):
    """Randomly initialised lean text encoder, UNet and VAE, plus the tiny autoencoder when
    ``configs`` has ``vae_tiny`` (a ``TorchComponents``)."""
    from ...torch_models import TorchComponents
    from .clip import TextEncoder
    from .tiny import AutoencoderTiny
    from .unet import UNet
    from .vae import VAE

    return TorchComponents(text_encoder=TextEncoder(configs["text_encoder"]), unet=UNet(configs["unet"]),
                           vae=VAE(configs["vae"]),
                           vae_tiny=AutoencoderTiny(configs["vae_tiny"]) if "vae_tiny" in configs else None)


def adapt_state(name: str, state: dict) -> dict:
    """A saved state dict in the lean modules' names: the text encoder's optional ``text_model.``
    prefix and ``position_ids`` buffer dropped."""
    if name != "text_encoder":
        return state
    return {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}

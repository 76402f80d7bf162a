"""Lean PyTorch modules for inference: the Stable Diffusion UNet, VAE and CLIP text encoder in
plain ``torch.nn``, loading the same safetensors weights as diffusers and transformers.

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
    return None


def build(configs: dict):
    """Randomly initialised lean text encoder, UNet and VAE (a ``TorchComponents``)."""
    from ...torch_models import TorchComponents
    from .clip import TextEncoder
    from .unet import UNet
    from .vae import VAE

    return TorchComponents(text_encoder=TextEncoder(configs["text_encoder"]), unet=UNet(configs["unet"]),
                           vae=VAE(configs["vae"]))


def adapt_state(name: str, state: dict) -> dict:
    """A saved state dict in the lean modules' names: the text encoder's optional ``text_model.``
    prefix and ``position_ids`` buffer dropped."""
    if name != "text_encoder":
        return state
    return {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}

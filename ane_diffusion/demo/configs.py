"""Model configs of the embedded demo model: Stable Diffusion's classes, sized for 2 CPU cores.

32x32 RGB images, a VAE with downsampling factor 4 (8x8x4 latents), a 2-layer CLIP text encoder
and a 2-level cross-attention UNet. The tokenizer vocabulary is built from the scene captions.
"""

from __future__ import annotations

import json

from ..schedule import DiscreteSchedule

RESOLUTION = 32
LATENT_SIZE = 8
TEXT_WIDTH = 64


def tokenizer_files() -> tuple[dict, dict]:
    """vocab.json / merges.txt texts built from every caption the scenes can produce."""
    from ..tokenizer import MERGES_HEADER, build_clip_vocab
    from .shapes import caption_corpus

    vocab, merges = build_clip_vocab(caption_corpus())
    merges_text = MERGES_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return {"vocab.json": json.dumps(vocab), "merges.txt": merges_text}, vocab


def vae_config(scaling_factor: float = 1.0) -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[32, 64, 64],
                down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                layers_per_block=1, norm_num_groups=16, sample_size=RESOLUTION, scaling_factor=scaling_factor)


def unet_config() -> dict:
    return dict(sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=[64, 96], down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=TEXT_WIDTH,
                attention_head_dim=8, norm_num_groups=16)


def text_encoder_config(vocab: dict) -> dict:
    return dict(hidden_size=TEXT_WIDTH, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
                projection_dim=TEXT_WIDTH)


def scheduler_config(prediction_type: str = "epsilon") -> dict:
    return DiscreteSchedule.scaled_linear().to_config() | {
        "_class_name": "DDIMScheduler", "prediction_type": prediction_type, "clip_sample": False,
        "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "trailing"}

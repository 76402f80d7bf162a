"""Stable Diffusion 1.5 at 512x512, from its public configs, inline (no download).

The configs below are those of ``runwayml/stable-diffusion-v1-5`` (``unet/config.json``,
``vae/config.json``, ``text_encoder/config.json`` = CLIP ViT-L/14's text tower, and the
scheduler's betas). Weights are random: latency and FLOPs do not depend on weight values.
SD 1.4 has exactly this architecture, so Apple's SD 1.4 baselines are projected with it.

:func:`sd21_base_configs` is Stable Diffusion 2.1-base (OpenCLIP ViT-H/14 text tower, 1024-wide
cross-attention, per-level head counts, linear projections in the transformer blocks). It is only
ever built on the meta device, to count the work of Apple's SD 2.1-base baselines for the
projection; it is never timed.
"""

from __future__ import annotations

RESOLUTION = 512
LATENT_SIZE = 64
GUIDANCE_EMBEDDING_DIM = 256
BOS_ID, EOS_ID, PAD_ID = 49406, 49407, 49407


def unet_config() -> dict:
    return dict(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=[320, 640, 1280, 1280],
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
        center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
        mid_block_scale_factor=1)


def vae_config() -> dict:
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=RESOLUTION, scaling_factor=0.18215)


def text_encoder_config(bos_id: int = BOS_ID, eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> dict:
    """CLIP ViT-L/14's text tower. ``*_id``: the special tokens of the tokenizer in use."""
    return dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        projection_dim=768, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)


def scheduler_config() -> dict:
    """SD 1.5's 1000-step scaled-linear betas, epsilon prediction (as the project's demo writes it)."""
    return {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "beta_end": 0.012, "_class_name": "DDIMScheduler", "prediction_type": "epsilon",
            "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "trailing"}


def configs(bos_id: int = BOS_ID, eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> dict:
    return {"unet": unet_config(), "vae": vae_config(), "text_encoder": text_encoder_config(bos_id, eos_id, pad_id),
            "scheduler": scheduler_config()}


def sd21_base_configs() -> dict:
    """Stable Diffusion 2.1-base (512x512), for work counts only (meta device)."""
    unet = unet_config() | dict(attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                                use_linear_projection=True)
    text = text_encoder_config() | dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                        num_attention_heads=16, hidden_act="gelu", projection_dim=512)
    return {"unet": unet, "vae": vae_config(), "text_encoder": text, "scheduler": scheduler_config()}

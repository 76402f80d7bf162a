"""A factory of tiny Stable-Diffusion-architecture bundles (teacher or student) from configs.

Same classes as Stable Diffusion (CLIPTextModel, UNet2DConditionModel with cross-attention,
AutoencoderKL), a few thousand times smaller; the CLIP BPE tokenizer files are built here from a
small corpus. Weights are random (seeded): these bundles test plumbing and math, not quality.
"""

from __future__ import annotations

from pathlib import Path

from ..card import ModelCard
from ..guidance import STUDENT_W_SCALE
from ..schedule import DiscreteSchedule

TINY_CORPUS = [
    "a red circle on a blue background", "a small green square at the top left",
    "a large yellow triangle in the center", "a white cross on a black background",
    "a photo of a cat", "an astronaut riding a horse",
]


def tiny_configs(sample_size: int = 8, cross_attention_dim: int = 32, vocab_size: int = 1000,
                 bos_id: int = 998, eos_id: int = 999, prediction_type: str = "epsilon",
                 unet_in_channels: int = 4) -> dict:
    """Configs of a tiny text encoder, UNet, VAE (scale factor 2) and SD's scheduler."""
    unet = dict(sample_size=sample_size, in_channels=unet_in_channels, out_channels=4, layers_per_block=1,
                block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=cross_attention_dim,
                attention_head_dim=8, norm_num_groups=8)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[16, 32],
               down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
               layers_per_block=1, norm_num_groups=8, sample_size=sample_size * 2, scaling_factor=0.18215)
    text_encoder = dict(hidden_size=cross_attention_dim, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, vocab_size=vocab_size, max_position_embeddings=77,
                        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id,
                        projection_dim=cross_attention_dim)
    scheduler = DiscreteSchedule.scaled_linear().to_config() | {
        "_class_name": "DDIMScheduler", "prediction_type": prediction_type, "clip_sample": False,
        "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "trailing"}
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def tiny_tokenizer_files(corpus=TINY_CORPUS) -> tuple[dict, dict]:
    """``(files, vocab)``: vocab.json/merges.txt texts built from ``corpus``, and the vocab."""
    import json

    from ..tokenizer import build_clip_vocab

    vocab, merges = build_clip_vocab(corpus)
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return {"vocab.json": json.dumps(vocab), "merges.txt": merges_text}, vocab


def make_tiny_bundle(folder: Path, student: bool = False, seed: int = 0, prediction_type: str = "epsilon",
                     embedding_dim: int = 16, steps: int | None = None, sample_size: int = 8,
                     card: ModelCard | None = None, unet_in_channels: int = 4,
                     embedding_scale: float = STUDENT_W_SCALE) -> Path:
    """Write a tiny teacher (or guidance-conditioned student) bundle to ``folder``.

    A student's card records ``embedding_scale`` (default: what students distilled here record).

    ``unet_in_channels=9`` makes a dedicated inpainting UNet (latent, mask, masked-image latent).
    """
    import torch

    from ..student import add_guidance_input
    from ..torch_models import build_from_configs, save_bundle

    files, vocab = tiny_tokenizer_files()
    configs = tiny_configs(sample_size=sample_size, vocab_size=len(vocab), bos_id=vocab["<|startoftext|>"],
                           eos_id=vocab["<|endoftext|>"], prediction_type=prediction_type,
                           unet_in_channels=unet_in_channels)
    torch.manual_seed(seed)
    components = build_from_configs(configs)
    if student:
        components.unet = add_guidance_input(components.unet, embedding_dim)
        with torch.no_grad():  # a random (not zero) guidance projection, so w visibly matters
            components.unet.time_embedding.cond_proj.weight.normal_(0, 0.5)
    if card is None:
        card = (ModelCard(kind="guidance-distilled", prediction_type=prediction_type, steps=steps,
                          w_min=0.0, w_max=8.0, default_w=3.0, guidance_embedding_dim=embedding_dim,
                          guidance_embedding_scale=embedding_scale,
                          recommended_sampler="ddim", recommended_steps=steps or 4,
                          description="tiny random student for tests")
                if student else
                ModelCard(kind="teacher", prediction_type=prediction_type, default_w=3.0,
                          recommended_sampler="ddim", recommended_steps=8,
                          description="tiny random teacher for tests"))
    return save_bundle(folder, components, configs["scheduler"], files, card)

"""The demo recipe's text stage: CLIP's contrastive loss on known embeddings, and a short training
that must pull the four corner captions apart (what the first demo teacher's encoder never did)."""

import numpy as np
import pytest
import torch

from ane_diffusion.demo.recipe import RecipeSettings, corner_captions, parse_setting
from ane_diffusion.demo.train_text import caption_separation, contrastive_loss, train_text_encoder


def test_contrastive_loss_counts_identical_captions_as_positives():
    emb = torch.nn.functional.normalize(torch.eye(4)[[0, 1, 2, 2]], dim=-1)  # samples 2 and 3: one caption
    scale = torch.tensor(float(np.log(100.0)))
    loss, accuracy = contrastive_loss(emb, emb, scale, torch.tensor([0, 1, 2, 2]))
    assert accuracy == 1.0
    # rows 2 and 3 split their probability over their two (equal) positives: loss = (2 * ln 2) / 4 per side
    assert loss.item() == pytest.approx(np.log(2) / 2, abs=1e-4)
    shuffled, accuracy = contrastive_loss(emb, emb[[1, 0, 2, 3]], scale, torch.tensor([0, 1, 2, 2]))
    assert accuracy == 0.5 and shuffled.item() > 10 * loss.item()


def test_short_contrastive_training_separates_the_corner_captions():
    from ane_diffusion.demo.configs import text_encoder_config, tokenizer_files
    from ane_diffusion.demo.shapes import make_dataset
    from ane_diffusion.tokenizer import CLIPTokenizer

    torch.manual_seed(0)
    files, vocab = tokenizer_files()
    tokenizer = CLIPTokenizer.from_strings(files["vocab.json"], files["merges.txt"])
    config = {**text_encoder_config(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "projection_dim": 32}
    images, captions, _ = make_dataset(512, seed=3, split="train", style_weights=(1, 0, 0, 0, 0, 0))
    corners = tokenizer.encode_batch(corner_captions())
    from transformers import CLIPTextConfig, CLIPTextModel

    before = caption_separation(CLIPTextModel(CLIPTextConfig(**config)).eval(), corners)
    encoder, summary = train_text_encoder(images, tokenizer.encode_batch(captions), config, steps=60, batch_size=64,
                                          lr=3e-3, log=lambda line: None)
    after = caption_separation(encoder, corners)
    assert np.isfinite(summary["final_loss"]) and summary["distinct_captions"] > 100
    assert after["pooled_relative_distance"] > 2 * before["pooled_relative_distance"], (before, after)


def test_recipe_settings_parse_booleans_and_reject_unknown_names():
    settings = RecipeSettings()
    assert parse_setting(settings, "text_frozen", "false") is False
    assert parse_setting(settings, "text_steps", "10") == 10
    with pytest.raises(ValueError, match="true or false"):
        parse_setting(settings, "text_frozen", "no")
    with pytest.raises(ValueError, match="unknown setting"):
        parse_setting(settings, "text_step", "10")

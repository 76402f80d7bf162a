"""The guidance embedding and the seeded noise source."""

import numpy as np
import pytest

from ane_diffusion.guidance import (combine, guidance_embedding, guidance_scale_from_w, torch_guidance_embedding,
                                    w_from_guidance_scale)
from ane_diffusion.noise import NoiseSource, batch_noise


@pytest.mark.parametrize("dim", [16, 256, 33])
def test_embedding_matches_diffusers_lcm_pipeline(dim):
    import torch
    from diffusers import LatentConsistencyModelPipeline

    w = np.array([0.0, 1.5, 7.0], np.float32)
    theirs = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, torch.from_numpy(w), embedding_dim=dim)
    # Angles reach 7000 rad: one float32 ulp in a frequency moves sin/cos by ~4e-4.
    np.testing.assert_allclose(guidance_embedding(w, dim), theirs.numpy(), atol=2e-3)


def test_torch_embedding_equals_numpy():
    import torch

    w = np.array([0.25, 3.0], np.float32)
    np.testing.assert_allclose(torch_guidance_embedding(torch.from_numpy(w), 64).numpy(),
                               guidance_embedding(w, 64), atol=1e-6)


def test_w_convention():
    assert guidance_scale_from_w(6.5) == 7.5 and w_from_guidance_scale(7.5) == 6.5
    cond, uncond = np.array([2.0]), np.array([1.0])
    np.testing.assert_allclose(combine(cond, uncond, 3.0), 4 * cond - 3 * uncond)
    np.testing.assert_allclose(combine(cond, uncond, 0.0), cond)


def test_noise_is_numpy_randomstate_standard_normal():
    expected = np.random.RandomState(42).standard_normal((1, 4, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(NoiseSource(42).normal((1, 4, 2, 2)), expected)


def test_batch_noise_image_i_uses_seed_plus_i():
    z, _ = batch_noise(7, 3, (4, 2, 2))
    np.testing.assert_array_equal(z[2], NoiseSource(9).normal((4, 2, 2)))


def test_seed_range():
    with pytest.raises(ValueError, match="seed"):
        NoiseSource(-1)


def test_embedding_scale_multiplies_w_before_the_sinusoid():
    import torch

    from ane_diffusion.guidance import STUDENT_W_SCALE, GuidanceEmbedding, embedding_frequencies

    w = np.array([0.0, 0.5, 6.0], np.float32)
    angles = w[:, None] * embedding_frequencies(32)[None, :]
    np.testing.assert_allclose(guidance_embedding(w, 32, scale=1.0), np.concatenate([np.sin(angles), np.cos(angles)], 1),
                               atol=1e-6)
    np.testing.assert_allclose(guidance_embedding(w / 1000, 32, scale=1000.0), guidance_embedding(w, 32, 1.0), atol=2e-5)
    student = GuidanceEmbedding(32, STUDENT_W_SCALE)
    np.testing.assert_allclose(student.torch(torch.from_numpy(w)).numpy(), student.numpy(w), atol=1e-6)
    # over the demo's w range every frequency turns less than once at the students' scale, so the
    # embedding is smooth in w; at LCM's 1000 neighbouring w = 3 and 3.002 are already far apart
    near = GuidanceEmbedding(256, STUDENT_W_SCALE).numpy(np.array([3.0, 3.002], np.float32))
    lcm = GuidanceEmbedding(256, 1000.0).numpy(np.array([3.0, 3.002], np.float32))
    assert np.abs(near[0] - near[1]).max() < 0.01 < 0.5 < np.abs(lcm[0] - lcm[1]).max()


def test_card_scale_defaults_to_lcm_and_must_be_positive():
    from ane_diffusion.card import CardError, ModelCard

    card = ModelCard.from_dict({"kind": "progressive", "prediction_type": "v_prediction", "steps": 4,
                                "guidance_embedding_dim": 8})
    assert card.guidance_embedding_scale == 1000.0 and card.guidance_embedding.scale == 1000.0
    with pytest.raises(CardError, match="guidance_embedding_scale"):
        ModelCard.from_dict({"kind": "progressive", "prediction_type": "v_prediction", "steps": 4,
                             "guidance_embedding_dim": 8, "guidance_embedding_scale": 0})
    assert ModelCard(kind="teacher").guidance_embedding is None

"""Original-layout single-file checkpoints load offline: each family, written tiny by the test."""

import os

import numpy as np
import pytest
import torch

from ane_diffusion.bundle import ModelLoadError, resolve_bundle
from ane_diffusion.cli import main
from ane_diffusion.testing.original_layout import make_original_checkpoint

FAMILIES = {  # name: (base, UNet input channels, guidance input width, card kind, prediction type)
    "sd1": ("sd1", 4, None, "teacher", "epsilon"),
    "sd2-768-v": ("sd2", 4, None, "teacher", "v_prediction"),
    "sd1-inpainting": ("sd1", 9, None, "teacher", "epsilon"),
    "sd2-inpainting-fp16": ("sd2", 9, None, "teacher", "epsilon"),
    "sd1-lcm-student": ("sd1", 4, 16, "lcm", "epsilon"),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_loads_offline_and_computes_what_its_source_computes(family, tmp_path, recwarn):
    from ane_diffusion.backends.torch_backend import TorchBackend

    base, channels, guidance, kind, prediction = FAMILIES[family]
    path = tmp_path / f"{family}.safetensors"
    source = make_original_checkpoint(path, base, channels, guidance, seed=3, half=family.endswith("fp16"))
    bundle = resolve_bundle(path)
    assert (bundle.card.kind, bundle.card.prediction_type) == (kind, prediction)
    assert bundle.configs["unet"]["in_channels"] == channels
    assert bundle.default_size == (96 if family == "sd2-768-v" else 64) * 8 // 4  # tiny VAE: factor 2, not 8
    assert bundle.tokenizer().pad_id == (0 if base == "sd2" else 49407)  # SD 2.x pads with "!"
    backend = TorchBackend(bundle, device="cpu")
    assert all(p.dtype == torch.float32 for p in backend.components.unet.parameters())
    ids = np.array([bundle.tokenizer().encode("a photo of a cat")], np.int32)
    with torch.no_grad():
        expected_text = source.text_encoder(torch.from_numpy(ids).long())[0].numpy()
    hidden = backend.encode_text(ids)
    np.testing.assert_allclose(hidden, expected_text, atol=1e-5)
    z = np.random.default_rng(0).standard_normal((1, channels, 8, 8)).astype(np.float32)
    w = np.array([2.0], np.float32) if guidance else None
    with torch.no_grad():
        cond = None
        if guidance:
            from ane_diffusion.guidance import torch_guidance_embedding
            cond = torch_guidance_embedding(torch.from_numpy(w), guidance)
        expected = source.unet(torch.from_numpy(z), 500, torch.from_numpy(hidden), timestep_cond=cond).sample.numpy()
        latents = torch.from_numpy(z[:, :4])
        expected_image = source.vae.decode(latents).sample.numpy()
    np.testing.assert_allclose(backend.predict(z, 500, hidden, w), expected, atol=1e-5)
    np.testing.assert_allclose(backend.decode(z[:, :4]), expected_image, atol=1e-5)
    if guidance:  # the guidance input was loaded, not left at its initialisation
        assert np.abs(backend.predict(z, 500, hidden, w) - backend.predict(z, 500, hidden, w * 0)).max() > 1e-3


def test_generate_from_a_single_file_offline(tmp_path):
    path = tmp_path / "sd1.safetensors"
    make_original_checkpoint(path, "sd1")
    out = tmp_path / "x.png"
    assert main(["generate", "a red circle", "--model", str(path), "--height", "32", "--width", "32",
                 "--steps", "2", "-o", str(out), "--quiet"]) == 0
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (32, 32) and np.asarray(image).std() > 0


def _sd2_header_only(path, metadata=None):
    make_original_checkpoint(path, "sd2", metadata=metadata)
    return path


def test_sd2_prediction_type_from_sidecar_yaml_and_metadata(tmp_path, recwarn):
    base = _sd2_header_only(tmp_path / "base.safetensors")
    (tmp_path / "base.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    bundle = resolve_bundle(base)
    assert (bundle.card.prediction_type, bundle.default_size) == ("epsilon", 64 * 2)
    (tmp_path / "base.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert resolve_bundle(base).card.prediction_type == "v_prediction"
    tagged = _sd2_header_only(tmp_path / "tagged.safetensors", {"modelspec.prediction_type": "epsilon"})
    assert resolve_bundle(tagged).card.prediction_type == "epsilon"
    assert not [w for w in recwarn.list if "prediction-type hint" in str(w.message)]
    resolve_bundle(_sd2_header_only(tmp_path / "bare.safetensors"))
    assert [w for w in recwarn.list if "prediction-type hint" in str(w.message)]


def _save(path, tensors):
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return path


NOT_CHECKPOINTS = {
    "lora": ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
              "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
              "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, "is a LoRA"),
    "vae": ({"encoder.down.0.block.0.conv1.weight": torch.zeros(8, 3, 3, 3),
             "decoder.up.0.block.0.conv1.weight": torch.zeros(8, 8, 3, 3)}, "is a VAE alone"),
    "embedding": ({"emb_params": torch.zeros(2, 768)}, "is a textual-inversion embedding"),
    "sdxl": ({"conditioner.embedders.1.model.token_embedding.weight": torch.zeros(8, 4),
              "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, "is an SDXL checkpoint"),
    "unet-only": ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, "a UNet without"),
}


@pytest.mark.parametrize("what", list(NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint_is_named_in_one_line(what, tmp_path, capsys):
    tensors, message = NOT_CHECKPOINTS[what]
    path = _save(tmp_path / f"{what}.safetensors", tensors)
    with pytest.raises(ModelLoadError, match=message):
        resolve_bundle(path)
    assert main(["generate", "x", "--model", str(path), "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o.png").exists()


def test_shipped_clip_bpe_gives_clips_ids():
    from ane_diffusion.loaders.clip_bpe import clip_tokenizer_texts
    from ane_diffusion.tokenizer import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_strings(*clip_tokenizer_texts())
    assert len(tokenizer.vocab) == 49408
    # OpenAI CLIP's ids for this prompt (its simple_tokenizer, and transformers' CLIPTokenizer).
    assert tokenizer.encode("a photo of a cat")[:8] == [49406, 320, 1125, 539, 320, 2368, 49407, 49407]

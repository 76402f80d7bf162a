"""Bundle formats: diffusers folders, single-file safetensors, LCM-style students, cards."""

import json
import shutil

import numpy as np
import pytest

from ane_diffusion import load_pipeline
from ane_diffusion.bundle import resolve_bundle
from ane_diffusion.card import CARD_NAME, CardError, ModelCard
from ane_diffusion.pipeline import Settings
from ane_diffusion.torch_models import load_components, save_single_file


def test_single_file_round_trip_generates_the_same_image(tiny_student, tmp_path):
    bundle = resolve_bundle(tiny_student)
    path = save_single_file(bundle, load_components(bundle), tmp_path / "student.safetensors")
    single = resolve_bundle(path)
    assert single.card == bundle.card and single.configs["unet"] == bundle.configs["unet"]
    a = load_pipeline(str(tiny_student)).text_to_image("a red circle", Settings(steps=4, seed=2))
    b = load_pipeline(str(path)).text_to_image("a red circle", Settings(steps=4, seed=2))
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


def test_lcm_style_folder_without_card_loads_as_guided_student(tiny_student, tmp_path):
    copy = tmp_path / "lcm"
    shutil.copytree(tiny_student, copy)
    (copy / CARD_NAME).unlink()
    bundle = resolve_bundle(copy)
    assert bundle.card.kind == "lcm" and bundle.card.guidance_embedding_dim == 16
    assert bundle.card.recommended_sampler == "lcm"
    result = load_pipeline(str(copy)).text_to_image("a red circle", Settings(steps=2))
    assert result.timings.unet_calls == 2


def test_teacher_without_card_is_inferred_as_teacher(tiny_teacher, tmp_path):
    copy = tmp_path / "t"
    shutil.copytree(tiny_teacher, copy)
    (copy / CARD_NAME).unlink()
    assert resolve_bundle(copy).card.kind == "teacher"


def test_pickled_weights_are_never_loaded(tiny_teacher, tmp_path):
    copy = tmp_path / "pickled"
    shutil.copytree(tiny_teacher, copy)
    (copy / "unet" / "diffusion_pytorch_model.safetensors").rename(copy / "unet" / "diffusion_pytorch_model.bin")
    from ane_diffusion.bundle import ModelLoadError

    with pytest.raises(ModelLoadError, match="never loaded"):
        resolve_bundle(copy)


def test_card_round_trip_and_validation(tmp_path):
    card = ModelCard(kind="progressive", prediction_type="v_prediction", steps=2, guidance_embedding_dim=8,
                     lineage=["teacher", "stage1"], training={"updates": 10})
    card.save(tmp_path)
    assert ModelCard.load(tmp_path) == card
    with pytest.raises(CardError, match="guidance_embedding_dim"):
        ModelCard(kind="progressive").validate()
    with pytest.raises(CardError, match="unknown card fields"):
        ModelCard.from_dict({"kind": "teacher", "colour": "red"})
    with pytest.raises(CardError, match="w range is empty"):
        ModelCard(w_min=3, w_max=1).validate()
    (tmp_path / CARD_NAME).write_text("[1, 2]")
    with pytest.raises(CardError, match="JSON object"):
        ModelCard.load(tmp_path)


def test_student_initialisation_equals_teacher_conditional(tiny_teacher):
    import torch

    from ane_diffusion.guidance import torch_guidance_embedding
    from ane_diffusion.student import add_guidance_input

    teacher = load_components(resolve_bundle(tiny_teacher)).unet
    student = add_guidance_input(teacher, 32)
    z, hidden = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        expected = teacher(z, t, hidden).sample
        got = student(z, t, hidden, timestep_cond=torch_guidance_embedding(torch.tensor([0.0, 5.0]), 32)).sample
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="already has a guidance input"):
        add_guidance_input(student, 32)


def test_device_selection_prefers_accelerators(monkeypatch):
    import torch

    from ane_diffusion.backends.torch_backend import default_dtype, select_device

    assert select_device("cpu").type == "cpu" and default_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device().type == "cuda" and default_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device().type == "mps"


def test_scheduler_prediction_type_in_bundle(tiny_student):
    config = json.loads((tiny_student / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"


def test_layered_bundle_takes_components_from_the_layer(tiny_teacher, tiny_student, tmp_path):
    """The embedded models' layout: shared text encoder/VAE/tokenizer, a layer per model."""
    from ane_diffusion.bundle import load_folder

    layer = tmp_path / "layer"
    layer.mkdir()
    for name in ("unet", "scheduler"):
        shutil.copytree(tiny_student / name, layer / name)
    shutil.copy(tiny_student / CARD_NAME, layer / CARD_NAME)
    bundle = load_folder(tiny_teacher, layer=layer)
    assert bundle.card.kind == "guidance-distilled"
    assert bundle.weights_path("unet") == layer / "unet" / "diffusion_pytorch_model.safetensors"
    assert bundle.weights_path("vae") == tiny_teacher / "vae" / "diffusion_pytorch_model.safetensors"
    assert bundle.configs["unet"]["time_cond_proj_dim"] == 16
    unet = load_components(bundle).unet
    assert unet.time_embedding.cond_proj is not None

"""The fast first image: lean torch modules equal diffusers/transformers, the default path imports
neither, and the thread policy picks what it says. (Timings live in benchmarks/first_image.py.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ane_diffusion.backends.lean import adapt_state, build, why_not
from ane_diffusion.bundle import resolve_bundle
from ane_diffusion.testing.factory import tiny_configs
from ane_diffusion.testing.original_layout import tiny_family_configs
from ane_diffusion.threads import ENV, planned_threads
from ane_diffusion.torch_models import build_from_configs, load_components

ROOT = Path(__file__).resolve().parents[1]


def _configs(kind):
    if kind in ("sd1", "sd2"):
        return tiny_family_configs(kind) | {"scheduler": {}}
    configs = tiny_configs(unet_in_channels=9 if kind == "inpainting" else 4)
    if kind == "student":
        configs["unet"]["time_cond_proj_dim"] = 16
    return configs


@pytest.mark.parametrize("kind", ["teacher", "student", "inpainting", "sd1", "sd2"])
def test_lean_modules_compute_what_diffusers_and_transformers_compute(kind):
    configs = _configs(kind)
    assert why_not(configs) is None
    torch.manual_seed(0)
    reference = build_from_configs(configs)
    with torch.no_grad():  # away from the initialisation (zero-initialised outputs would hide errors)
        for module in reference.modules().values():
            for param in module.parameters():
                param.add_(torch.randn_like(param) * 0.05)
    lean = build(configs)
    for name, module in lean.modules().items():
        module.load_state_dict(adapt_state(name, getattr(reference, name).state_dict()), strict=True)
    ids = torch.randint(0, configs["text_encoder"]["vocab_size"], (2, 77))
    size, channels = configs["unet"]["sample_size"], configs["unet"]["in_channels"]
    z = torch.randn(2, channels, size, size)
    t = torch.tensor([999, 20])
    cond = torch.randn(2, 16) if kind == "student" else None
    latents = torch.randn(1, 4, size, size)
    with torch.no_grad():
        hidden = reference.text_encoder(ids)[0]
        torch.testing.assert_close(lean.text_encoder(ids)[0], hidden, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lean.unet(z, t, hidden, timestep_cond=cond).sample,
                                   reference.unet(z, t, hidden, timestep_cond=cond).sample, atol=1e-5, rtol=1e-5)
        image = reference.vae.decode(latents).sample
        torch.testing.assert_close(lean.vae.decode(latents).sample, image, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lean.vae.encode(image).latent_dist.mean,
                                   reference.vae.encode(image).latent_dist.mean, atol=1e-5, rtol=1e-5)


def test_unsupported_configs_fall_back_to_diffusers(monkeypatch):
    configs = _configs("teacher")
    configs["unet"]["up_block_types"] = ["UpBlock2D", "SimpleCrossAttnUpBlock2D"]
    assert why_not(configs) == "unet block types"
    monkeypatch.setenv("ANE_DIFFUSION_TORCH_MODELS", "diffusers")
    assert why_not(_configs("teacher")) is not None


def test_embedded_model_lean_equals_diffusers():
    bundle = resolve_bundle("default")
    lean, full = load_components(bundle, lean=True), load_components(bundle)
    assert type(lean.unet).__module__.startswith("ane_diffusion.backends.lean")
    assert type(full.unet).__module__.startswith("diffusers")
    for name in ("text_encoder", "unet", "vae"):
        assert lean.modules()[name].state_dict().keys() == adapt_state(name, full.modules()[name].state_dict()).keys()


def test_default_generate_imports_neither_diffusers_nor_transformers(tmp_path):
    code = ("import sys; from ane_diffusion.cli import main; "
            f"assert main(['generate', 'a red circle', '-o', {str(tmp_path / 'x.png')!r}, '--quiet']) == 0; "
            "heavy = sorted(m for m in ('diffusers', 'transformers', 'peft', 'accelerate') if m in sys.modules); "
            "print('imported:', heavy)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip().endswith("imported: []")
    assert (tmp_path / "x.png").exists()


def test_thread_policy(monkeypatch):
    bundle = resolve_bundle("default")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(ENV, raising=False)
    assert planned_threads(bundle) == 1  # the embedded model is small
    big = resolve_bundle("default")
    big.configs = dict(big.configs, unet=dict(big.configs["unet"], block_out_channels=[320, 640, 1280, 1280],
                                             sample_size=64))
    assert planned_threads(big) is None  # full size: torch's default
    assert planned_threads(bundle, requested=3) == 3
    monkeypatch.setenv(ENV, "2")
    assert planned_threads(bundle) == 2 and planned_threads(bundle, requested=1) == 1
    monkeypatch.setenv(ENV, "zero")
    with pytest.raises(ValueError, match=ENV):
        planned_threads(bundle)
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert planned_threads(bundle) is None  # torch already follows OMP_NUM_THREADS


def test_threads_flag_reaches_torch(tmp_path):
    from ane_diffusion.api import load_pipeline

    before = torch.get_num_threads()
    try:
        pipeline = load_pipeline("default", threads=2)
        assert pipeline.backend.threads == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)

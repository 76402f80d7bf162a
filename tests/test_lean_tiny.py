"""The lean tiny autoencoder: diffusers' ``AutoencoderTiny`` maths on diffusers' weights, and a
bundle carrying ``vae_tiny`` loads through the lean path without importing diffusers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ane_diffusion.backends.lean import why_not
from ane_diffusion.backends.lean.tiny import AutoencoderTiny
from ane_diffusion.decoders import build_tiny, tiny_config, tiny_decoder, tiny_encoder
from ane_diffusion.testing.factory import tiny_configs

ROOT = Path(__file__).resolve().parents[1]
DEMO = tiny_config(tiny_configs()["vae"])  # 2 levels of 16 channels: the demo's layout, narrower
TAESD = {"_class_name": "AutoencoderTiny"}  # diffusers' defaults are TAESD's configuration
CASES = {"demo": (DEMO, 2), "taesd": (TAESD, 8), "narrow-silu-bilinear": (
    dict(TAESD, act_fn="SiLU", upsample_fn="bilinear", num_encoder_blocks=[1, 2, 0], num_decoder_blocks=[2, 0, 1],
         encoder_block_out_channels=[8] * 3, decoder_block_out_channels=[8] * 3), 4)}
"""name: (vae_tiny config, its scale factor)."""


def _pair(config):
    torch.manual_seed(0)
    reference = build_tiny(config)
    with torch.no_grad():  # away from the initialisation, latents large enough to reach tanh's bend
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    lean = AutoencoderTiny(config)
    lean.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), lean.eval()


@pytest.mark.parametrize("case", CASES)
def test_lean_tiny_computes_what_diffusers_computes(case):
    config, factor = CASES[case]
    assert why_not(dict(tiny_configs(), vae_tiny=config)) is None
    reference, lean = _pair(config)
    images = torch.rand(2, 3, 8 * factor, 8 * factor) * 2 - 1
    latents = torch.randn(2, 4, 8, 8) * 4
    with torch.no_grad():
        want = reference.decode(latents).sample
        assert want.std() > 0.01 and torch.isfinite(want).all()
        torch.testing.assert_close(lean.decode(latents).sample, want, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(lean.encode(images).latents, reference.encode(images).latents, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(lean(images).sample, reference(images).sample, atol=1e-6, rtol=1e-6)
        for wrap, x in ((tiny_decoder, latents), (tiny_encoder, images)):  # the full VAE's convention
            torch.testing.assert_close(wrap(lean, 0.18215)(x), wrap(reference, 0.18215)(x), atol=1e-6, rtol=1e-6)


def test_lean_tiny_rejects_what_it_does_not_implement():
    base = tiny_configs()
    assert why_not(dict(base, vae_tiny=dict(DEMO, act_fn="tanh"))) == "vae_tiny act_fn='tanh'"
    assert why_not(dict(base, vae_tiny=dict(DEMO, upsample_fn="area"))) == "vae_tiny upsample_fn='area'"
    assert why_not(dict(base, vae_tiny=dict(DEMO, num_decoder_blocks=[1]))) == "vae_tiny decoder levels"
    assert why_not(dict(base, vae_tiny=dict(DEMO, encoder_block_out_channels=[16, 32]))) == (
        "vae_tiny encoder_block_out_channels=[16, 32]")
    with pytest.raises(ValueError, match="vae_tiny act_fn"):
        AutoencoderTiny(dict(DEMO, act_fn="tanh"))


def test_bundle_with_vae_tiny_loads_lean_without_diffusers(tiny_student, tmp_path):
    from ane_diffusion.bundle import resolve_bundle
    from ane_diffusion.torch_models import load_components, save_bundle

    bundle = resolve_bundle(str(tiny_student))
    components = load_components(bundle)
    torch.manual_seed(3)
    components.vae_tiny = build_tiny(tiny_config(bundle.configs["vae"]))
    folder = save_bundle(tmp_path / "with_tiny", components, bundle.configs["scheduler"],
                         bundle.tokenizer_files, bundle.card)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        want = tiny_decoder(components.vae_tiny.eval(), bundle.scaling_factor)(z)
    torch.save(z, tmp_path / "z.pt")  # our own tensor, read back with weights_only below
    code = ("import sys, torch; from ane_diffusion.bundle import resolve_bundle; "
            "from ane_diffusion.torch_models import load_components; from ane_diffusion.decoders import tiny_decoder; "
            f"b = resolve_bundle({str(folder)!r}); c = load_components(b, lean=True); "
            f"z = torch.load({str(tmp_path / 'z.pt')!r}, weights_only=True); "
            f"torch.save(tiny_decoder(c.vae_tiny, b.scaling_factor)(z).detach(), {str(tmp_path / 'x.pt')!r}); "
            "print(type(c.vae_tiny).__module__); "
            "print('imported:', sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.split() == ["ane_diffusion.backends.lean.tiny", "imported:", "[]"]
    torch.testing.assert_close(torch.load(tmp_path / "x.pt", weights_only=True), want, atol=1e-6, rtol=1e-6)

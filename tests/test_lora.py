"""--lora FILE[:SCALE]: kohya and diffusers/peft files, fused; identities checked on tiny LoRAs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ane_diffusion.bundle import ModelLoadError, resolve_bundle
from ane_diffusion.cli import main
from ane_diffusion.images import read_metadata
from ane_diffusion.loaders.lora import load_adapters, with_loras
from ane_diffusion.testing.loras import lora_targets, make_lora
from ane_diffusion.torch_models import load_components

UNET_LAYER = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
TEXT_LAYER = "text_encoder.encoder.layers.1.self_attn.out_proj"


@pytest.fixture(scope="module")
def setup(tiny_teacher, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    bundle = resolve_bundle(tiny_teacher)
    base = load_components(bundle)
    targets = lora_targets(base)
    factors = {layout: make_lora(folder / f"{layout}.safetensors", targets, rank=2, alpha=1.0, seed=0, layout=layout)
               for layout in ("kohya", "peft")}
    factors["second"] = make_lora(folder / "second.safetensors", targets, rank=3, alpha=3.0, seed=1, layout="peft")
    return bundle, base, folder, factors


def _outputs(components, bundle):
    tokenizer = bundle.tokenizer()
    ids = torch.tensor([tokenizer.encode("a red circle on a blue background")])
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32))
    with torch.no_grad():
        hidden = components.text_encoder(ids)[0]
        return hidden.numpy(), components.unet(z, 400, hidden).sample.numpy()


def _weight(components, target):
    part, path = target.split(".", 1)
    return getattr(components, part).get_submodule(path).weight.detach()


def test_scale_zero_equals_no_lora(setup):
    bundle, base, folder, _ = setup
    fused = load_components(with_loras(bundle, [f"{folder / 'kohya.safetensors'}:0"]))
    for got, want in zip(_outputs(fused, bundle), _outputs(base, bundle)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("layout", ["kohya", "peft"])
def test_fused_weights_are_base_plus_scale_times_b_a(setup, layout):
    bundle, base, folder, factors = setup
    fused = load_components(with_loras(bundle, [f"{folder / f'{layout}.safetensors'}:0.7"]))
    for target in (UNET_LAYER, TEXT_LAYER):
        a, b = factors[layout][target]
        torch.testing.assert_close(_weight(fused, target), _weight(base, target) + 0.7 * b @ a, atol=1e-6, rtol=0)
    changed = [np.abs(got - want).max() for got, want in zip(_outputs(fused, bundle), _outputs(base, bundle))]
    assert min(changed) > 1e-3  # both the text encoder and the UNet moved


def test_kohya_and_peft_layouts_of_one_lora_agree(setup):
    bundle, _, folder, _ = setup
    kohya = load_components(with_loras(bundle, [f"{folder / 'kohya.safetensors'}:0.5"]))
    peft = load_components(with_loras(bundle, [f"{folder / 'peft.safetensors'}:0.5"]))
    for got, want in zip(_outputs(kohya, bundle), _outputs(peft, bundle)):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_fused_equals_unfused_with_two_loras(setup):
    bundle, base, folder, factors = setup
    loras = [f"{folder / 'kohya.safetensors'}:0.5", f"{folder / 'second.safetensors'}:-0.3"]
    stacked = with_loras(bundle, loras)
    fused = load_components(stacked)
    unfused = load_components(bundle)
    load_adapters(unfused, stacked.extra["loras"])  # peft adapter layers, live
    for got, want in zip(_outputs(fused, bundle), _outputs(unfused, bundle)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    (a1, b1), (a2, b2) = factors["kohya"][UNET_LAYER], factors["second"][UNET_LAYER]
    torch.testing.assert_close(_weight(fused, UNET_LAYER),
                               _weight(base, UNET_LAYER) + 0.5 * b1 @ a1 - 0.3 * b2 @ a2, atol=1e-6, rtol=0)
    assert [r["scale"] for r in stacked.card.lineage[-2:]] == [0.5, -0.3]


def test_cli_lora_pixels_metadata_and_from_png(setup, tiny_teacher, tmp_path):
    _, _, folder, _ = setup
    common = ["--model", str(tiny_teacher), "--steps", "2", "--seed", "3", "--quiet"]
    assert main(["generate", "a cat", *common, "-o", str(tmp_path / "plain.png")]) == 0
    assert main(["generate", "a cat", *common, "--lora", f"{folder / 'kohya.safetensors'}:0",
                 "-o", str(tmp_path / "zero.png")]) == 0
    assert main(["generate", "a cat", *common, "--lora", f"{folder / 'kohya.safetensors'}:0.8",
                 "-o", str(tmp_path / "styled.png")]) == 0
    pixels = {n: np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("plain", "zero", "styled")}
    np.testing.assert_array_equal(pixels["plain"], pixels["zero"])
    assert np.abs(pixels["plain"].astype(int) - pixels["styled"]).max() > 0
    meta = read_metadata(tmp_path / "styled.png")
    assert meta["loras"][0]["name"] == "kohya.safetensors" and meta["loras"][0]["scale"] == 0.8
    assert 'Lora: "kohya.safetensors:0.8"' in Image.open(tmp_path / "styled.png").text["parameters"]
    assert main(["generate", "--from-png", str(tmp_path / "styled.png"), "-o", str(tmp_path / "again.png"),
                 "--quiet"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "again.png")), pixels["styled"])


def test_a_checkpoint_given_as_lora_is_one_line_error(setup, tiny_teacher, tmp_path, capsys):
    from ane_diffusion.testing.original_layout import make_original_checkpoint

    checkpoint = tmp_path / "model.safetensors"
    make_original_checkpoint(checkpoint, "sd1")
    with pytest.raises(ModelLoadError, match="is not a LoRA"):
        with_loras(resolve_bundle(tiny_teacher), [str(checkpoint)])
    assert main(["generate", "x", "--model", str(tiny_teacher), "--lora", f"{tmp_path / 'nope.safetensors'}:0.5",
                 "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --lora") and "not found" in err and "\n" not in err


def test_convert_an_original_file_with_a_lora_records_it_in_the_contract(tmp_path):
    """One conversion covers both whole-model paths: an original-layout file, and a LoRA fused first."""
    from ane_diffusion.testing.original_layout import make_original_checkpoint

    checkpoint = tmp_path / "sd1.safetensors"
    source = make_original_checkpoint(checkpoint, "sd1")
    make_lora(tmp_path / "style.safetensors", lora_targets(source), layout="peft")
    out = tmp_path / "export"
    assert main(["convert", "--model", str(checkpoint), "-o", str(out), "--components", "text_encoder",
                 "--lora", f"{tmp_path / 'style.safetensors'}:0.6", "--quiet", "--no-compile"]) == 0
    contract = json.loads((out / "ane_diffusion_coreml.json").read_text())
    lora = contract["model"]["lineage"][-1]
    assert (lora["kind"], lora["lora"], lora["scale"]) == ("lora", "style.safetensors", 0.6)
    assert len(lora["sha256"]) == 64 and "LoRA style.safetensors x0.6" in contract["model"]["description"]
    assert contract["converter"]["source_configs"]["text_encoder"]["vocab_size"] == 49408
    assert json.loads((out / "vocab.json").read_text())["<|endoftext|>"] == 49407

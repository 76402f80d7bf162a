"""Mixed-bit palettization (``--compress unet=auto:35``): k-means, allocation, recipe end to end."""

import numpy as np
import pytest

from ane_diffusion_conversion import mixed_bit as mb
from ane_diffusion_conversion.options import ConversionError, ConvertOptions, parse_compress_map, parse_compression


def test_kmeans_uses_at_most_2_to_the_bits_values_and_improves_with_bits():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    errors = {}
    for bits in (4, 6, 8):
        q = mb.kmeans_1d(w, bits)
        assert q.shape == w.shape and np.unique(q).size <= 2 ** bits
        errors[bits] = float(np.mean((q - w) ** 2))
        # the control: an evenly spaced table of as many values over the same range does worse
        grid = np.linspace(w.min(), w.max(), 2 ** bits)
        even = grid[np.abs(w[..., None] - grid).argmin(-1)]
        assert errors[bits] < float(np.mean((even - w) ** 2))
    assert errors[8] < errors[6] < errors[4] < 0.02


def _layers():
    # three layers: a sensitive small one, an insensitive big one, a medium one (PSNR per bit width)
    return [mb.Layer("a", "a", 4096, {4: 20.0, 6: 32.0, 8: 44.0}),
            mb.Layer("b", "b", 400000, {4: 45.0, 6: 57.0, 8: 69.0}),
            mb.Layer("c", "c", 60000, {4: 33.0, 6: 45.0, 8: 57.0})]


def test_allocation_reaches_the_target_cheaper_than_uniform_8bit():
    layers = _layers()
    for target in (30.0, 35.0, 40.0):
        allocation = mb.allocate(layers, target)
        assert mb.predicted_psnr(layers, allocation) >= target
        uniform8 = {layer.const: 8 for layer in layers}
        assert mb.allocation_bytes(layers, allocation) < mb.allocation_bytes(layers, uniform8)
    allocation = mb.allocate(layers, 35.0)
    assert allocation["a"] > allocation["b"]  # the sensitive layer gets more bits than the robust one
    # the control: uniform 4-bit misses the target the recipe reaches
    assert mb.predicted_psnr(layers, {layer.const: 4 for layer in layers}) < 35.0


def test_unreachable_target_gives_every_layer_the_most_bits():
    layers = _layers()
    allocation = mb.allocate(layers, 90.0)
    assert set(allocation.values()) == {8}


@pytest.mark.parametrize("text, target", [("auto", 35.0), ("auto:35", 35.0), ("AUTO:28.5", 28.5)])
def test_parse_auto(text, target):
    spec = parse_compression(text)
    assert spec.mode == "mixed" and spec.target_psnr == target and spec.name == f"auto:{target:g}"
    assert parse_compress_map(text)["unet"] == spec  # a bare auto:N means the UNet


@pytest.mark.parametrize("options, message", [
    ({"compress": "auto:5"}, "between 10 and 80"),
    ({"compress": "vae_decoder=auto:35"}, "cannot be used for vae_decoder"),
    ({"compress": "unet=auto:35", "chunk_unet": True}, "chunk-unet"),
])
def test_auto_option_errors(options, message):
    with pytest.raises(ConversionError, match=message):
        ConvertOptions(model="m", output="o", **options).validated()


@pytest.mark.slow
def test_auto_recipe_end_to_end(tiny_student, tmp_path):
    """~2 min: the recipe reaches its target on the package itself, smaller than uniform 8-bit."""
    import json

    from ane_diffusion_conversion import ConvertOptions, convert_bundle, verify_export
    from ane_diffusion_conversion.progress import Progress

    out8, auto = tmp_path / "eight", tmp_path / "auto"
    convert_bundle(ConvertOptions(model=str(tiny_student), output=out8, components="unet", compress="unet=8"),
                   progress=Progress(enabled=False))
    convert_bundle(ConvertOptions(model=str(tiny_student), output=auto, components="unet", compress="auto:35"),
                   progress=Progress(enabled=False))
    record = json.loads((auto / "ane_diffusion_coreml.json").read_text())["compression"]["Unet"]
    assert record["measured_worst_psnr"] >= 35.0 and record["unmatched_float16_tensors"] == 0
    size8 = json.loads((out8 / "ane_diffusion_coreml.json").read_text())["compression"]["Unet"]["bytes"]
    assert record["bytes"] < size8
    report = verify_export(str(tiny_student), auto)
    assert report.ok and report.rows[0].threshold == 35.0

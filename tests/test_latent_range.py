"""--clamp: the data latents' range in the card, and every step's x estimate clipped to it."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from ane_diffusion import edit, load_pipeline
from ane_diffusion.bundle import EMBEDDED_MODELS, embedded_coreml, resolve_bundle
from ane_diffusion.card import CardError, ModelCard
from ane_diffusion.images import read_metadata
from ane_diffusion.latent_range import LatentRange, LatentRangeError
from ane_diffusion.pipeline import GenerationError, Settings, Timings

NARROW = {"low": [-0.3, -0.2, -0.25, -0.1], "high": [0.2, 0.3, 0.1, 0.25], "percentiles": [0.05, 99.95],
          "examples": 8}
WIDE = {"low": [-1e4] * 4, "high": [1e4] * 4}


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ane_diffusion", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def with_range(bundle, folder, latent_range):
    """A copy of ``bundle`` whose card records ``latent_range``."""
    shutil.copytree(bundle, folder)
    card = ModelCard.load(folder)
    card.latent_range = latent_range
    card.save(folder)
    return folder


def test_the_range_is_each_channels_percentiles():
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(40, 3, 6, 6)) * np.array([1.0, 3.0, 0.5]).reshape(1, 3, 1, 1) + np.array(
        [0.0, 2.0, -1.0]).reshape(1, 3, 1, 1)
    measured = LatentRange.from_latents(latents.astype(np.float32), percentiles=(1.0, 99.0))
    per_channel = latents.astype(np.float32).transpose(1, 0, 2, 3).reshape(3, -1)
    assert np.allclose(measured.low, np.percentile(per_channel, 1.0, axis=1))
    assert np.allclose(measured.high, np.percentile(per_channel, 99.0, axis=1))
    assert measured.examples == 40 and measured.percentiles == (1.0, 99.0)
    # Larger sets are read at evenly spaced latents, first and last included.
    thinned = LatentRange.from_latents(latents, max_examples=3)
    assert thinned == LatentRange.from_latents(latents[[0, 20, 39]])


def test_clamp_clips_each_channel_to_its_own_bounds():
    bounds = LatentRange((-1.0, 0.0), (1.0, 0.5))
    x0 = np.array([[[[-3.0, 0.2, 2.0]], [[-0.1, 0.2, 0.9]]]], np.float32)  # (1, 2, 1, 3)
    clamped = bounds.clamp(x0)
    assert clamped.dtype == np.float32
    assert np.array_equal(clamped, np.array([[[[-1.0, 0.2, 1.0]], [[0.0, 0.2, 0.5]]]], np.float32))
    assert bounds.fraction_outside(x0) == pytest.approx(4 / 6)
    with pytest.raises(LatentRangeError, match="2-channel latent range cannot clamp"):
        bounds.clamp(np.zeros((1, 3, 2, 2), np.float32))


@pytest.mark.parametrize("bad, message", [
    ({"low": [0.0, 1.0], "high": [1.0]}, "one low and one high bound a channel"),
    ({"low": [1.0], "high": [1.0]}, "low < high"),
    ({"low": [float("nan")], "high": [1.0]}, "finite"),
    ({"low": [0.0], "high": [1.0], "scale": 2}, "unknown latent_range fields: scale"),
    ({"low": [True], "high": [1.0]}, "must be numbers"),
    ([0.0, 1.0], "an object with lists low and high"),
])
def test_a_card_with_a_senseless_range_is_refused(bad, message):
    with pytest.raises(CardError, match=message):
        ModelCard(latent_range=bad).validate()


def test_the_range_travels_in_the_card(tmp_path):
    ModelCard(latent_range=NARROW).validate().save(tmp_path)
    card = ModelCard.load(tmp_path)
    assert card.latent_range == NARROW and card.clamp_range.low == (-0.3, -0.2, -0.25, -0.1)
    assert ModelCard().clamp_range is None


def test_every_estimate_is_clamped_and_an_unused_clamp_changes_nothing(tiny_student, tmp_path):
    narrow = load_pipeline(str(with_range(tiny_student, tmp_path / "narrow", NARROW)))
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2, 4, 2, 2)).astype(np.float32) * 3
    cond = narrow.encode_prompts(["a red circle"] * 2, Timings())
    raw = narrow.denoiser(cond, None, 3.0, Timings())(z, 500)
    clamped = narrow.denoiser(cond, None, 3.0, Timings(), clamp=True)(z, 500)
    assert narrow.card.clamp_range.fraction_outside(raw) > 0.3   # the control: the range is really crossed
    assert np.array_equal(clamped, narrow.card.clamp_range.clamp(raw))

    def pixels(pipe, clamp):
        result = pipe.text_to_image("a red circle", Settings(steps=4, w=6.0, seed=2, clamp=clamp))
        return np.asarray(result.images[0], np.float32), result.metadata[0]

    plain, meta = pixels(narrow, False)
    tamed, tamed_meta = pixels(narrow, True)
    assert meta["clamp"] is False and tamed_meta["clamp"] is True
    assert np.abs(plain - tamed).mean() > 1.0
    wide = load_pipeline(str(with_range(tiny_student, tmp_path / "wide", WIDE)))
    assert np.array_equal(pixels(wide, True)[0], plain)  # never active: bit-identical images


def test_clamp_without_a_range_fails_in_one_line(tiny_student, tmp_path):
    with pytest.raises(GenerationError, match="--clamp needs the data latents' range"):
        load_pipeline(str(tiny_student)).text_to_image("a red circle", Settings(clamp=True))
    out = run_cli("generate", "a red circle", "--model", tiny_student, "--clamp", "-o", tmp_path / "x.png",
                  cwd=tmp_path)
    assert out.returncode == 2 and "--clamp needs the data latents' range" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


def test_the_png_records_clamp_and_from_png_repeats_it(tiny_student, tmp_path):
    model = with_range(tiny_student, tmp_path / "model", NARROW)
    first = run_cli("generate", "a red circle", "--model", model, "--clamp", "-w", "6", "--seed", "4",
                    "-o", tmp_path / "a.png", "--quiet", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert read_metadata(tmp_path / "a.png")["clamp"] is True
    again = run_cli("generate", "--from-png", tmp_path / "a.png", "-o", tmp_path / "b.png", "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))
    assert read_metadata(tmp_path / "b.png")["clamp"] is True


def test_edit_clamps_too(tiny_student, tmp_path):
    from PIL import Image

    model = str(with_range(tiny_student, tmp_path / "model", NARROW))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    plain = edit(image, "a red circle", strength=0.8, model=model, w=6.0, steps=4)
    tamed = edit(image, "a red circle", strength=0.8, model=model, w=6.0, steps=4, clamp=True)
    assert tamed.metadata[0]["clamp"] is True
    assert np.abs(np.asarray(plain.images[0], np.float32) - np.asarray(tamed.images[0], np.float32)).mean() > 0.5


def test_the_embedded_models_carry_their_training_latents_range():
    for name in EMBEDDED_MODELS:
        bounds = resolve_bundle(name).card.clamp_range
        assert bounds is not None and bounds.channels == 4 and bounds.examples == 4096, name
        assert all(hi - lo > 0.5 for lo, hi in zip(bounds.low, bounds.high)), name


@pytest.mark.skipif(not embedded_coreml().is_dir(), reason="embedded Core ML export not installed")
def test_the_coreml_export_clamps_as_pytorch_does():
    """The range reaches the Core ML backend through the export contract's card."""
    settings = Settings(seed=3, w=6.0, clamp=True)
    prompt = "a large yellow circle at the top right on a black background"
    coreml = load_pipeline("default", backend="coreml")
    assert coreml.card.latent_range == resolve_bundle("default").card.latent_range
    a = np.asarray(load_pipeline("default").text_to_image(prompt, settings).images[0], np.float64)
    b = np.asarray(coreml.text_to_image(prompt, settings).images[0], np.float64)
    psnr = 10 * np.log10(255.0**2 / max(np.mean((a - b) ** 2), 1e-12))
    assert psnr >= 30

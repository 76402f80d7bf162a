"""Image editing and inpainting on tiny bundles: grids, masks, kept pixels, bad input."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ane_diffusion import edit, inpaint, load_pipeline
from ane_diffusion.editing import (EditInputError, EditSettings, Editor, feathered, latent_mask, mask_to_array,
                                   strength_timesteps)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    rng = np.random.default_rng(0)
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:, :] = (30, 60, 200)
    pixels[4:12, 4:12] = (220, 40, 40)
    pixels += rng.integers(0, 10, pixels.shape, dtype=np.uint8)
    path = tmp_path_factory.mktemp("img") / "source.png"
    Image.fromarray(pixels).save(path)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    mask_path = path.with_name("mask.png")
    Image.fromarray(mask).save(mask_path)
    return path, mask_path


def test_strength_selects_a_grid_suffix():
    grid = np.array([999, 749, 499, 249])
    assert list(strength_timesteps(grid, 1.0)) == [999, 749, 499, 249]
    assert list(strength_timesteps(grid, 0.5)) == [499, 249]
    assert list(strength_timesteps(grid, 0.3)) == [249]
    with pytest.raises(EditInputError, match="runs no step"):
        strength_timesteps(grid, 0.2)
    for bad in (0.0, 1.5, -1):
        with pytest.raises(EditInputError, match=r"strength must be in \(0, 1\]"):
            strength_timesteps(grid, bad)


def test_edit_runs_the_remaining_steps(tiny_student, source):
    result = edit(source[0], "a red circle", strength=0.5, model=str(tiny_student), steps=4, seed=1)
    assert result.timings.unet_calls == 2 and result.timings.vae_encode > 0
    assert result.metadata[0]["steps_run"] == 2 and result.metadata[0]["mode"] == "edit"


def test_low_strength_stays_close_to_the_source(tiny_student, source):
    """Measured in latent space: the tiny VAE's weights are random, its round trip is not."""
    from ane_diffusion.editing import image_to_array
    from ane_diffusion.pipeline import Timings

    pipe = load_pipeline(str(tiny_student))
    editor = Editor(pipe)
    image = Image.open(source[0])
    latents = []
    original = pipe.decode
    pipe.decode = lambda x, timings, *rest: latents.append(x) or original(x, timings, *rest)
    editor.image_to_image(image, "a red circle", EditSettings(steps=4, strength=0.25))
    editor.image_to_image(image, "a red circle", EditSettings(steps=4, strength=1.0))
    src = editor.encode(image_to_array(image), Timings())
    near, far = (np.abs(x - src).mean() for x in latents)
    assert near < 0.8 * far


def psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def test_inpaint_keeps_unmasked_pixels_exactly(tiny_student, source):
    result = inpaint(source[0], source[1], "a green square", model=str(tiny_student), steps=4, seed=2)
    out, src = np.asarray(result.images[0]), np.asarray(Image.open(source[0]))
    keep = np.asarray(Image.open(source[1])) == 0
    assert np.array_equal(out[keep], src[keep])
    assert psnr(out[~keep], src[~keep]) < 30, "the masked region must be generated"
    assert result.metadata[0]["mode"] == "inpaint" and result.timings.unet_calls == 4


@pytest.mark.parametrize("sampler", ["ddim", "stochastic", "lcm"])
def test_inpaint_known_latent_region_tracks_the_source(tiny_student, source, sampler):
    """With a mask covering nothing, every sampler reproduces the source's latent."""
    pipe = load_pipeline(str(tiny_student))
    editor = Editor(pipe)
    image = Image.open(source[0])
    empty = Image.fromarray(np.zeros((16, 16), np.uint8))
    captured = {}
    original = pipe.decode

    def decode(latents, timings, *rest):
        captured["x"] = latents
        return original(latents, timings, *rest)

    pipe.decode = decode
    editor.inpaint(image, empty, "x", EditSettings(steps=4, sampler=sampler))
    from ane_diffusion.editing import image_to_array
    from ane_diffusion.pipeline import Timings

    expected = editor.encode(image_to_array(image), Timings())
    np.testing.assert_allclose(captured["x"], expected, atol=1e-5)


def test_inpainting_unet_gets_nine_channels(tmp_path, source):
    from ane_diffusion.testing import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "inpaint", unet_in_channels=9)
    pipe = load_pipeline(str(bundle))
    seen = []
    predict = pipe.backend.predict
    pipe.backend.predict = lambda sample, *a, **k: seen.append(sample.shape) or predict(sample, *a, **k)
    result = inpaint(source[0], source[1], "a red circle", pipeline=pipe, steps=2, w=0.0)
    assert seen and all(shape[1] == 9 for shape in seen)
    keep = np.asarray(Image.open(source[1])) == 0
    assert np.array_equal(np.asarray(result.images[0])[keep], np.asarray(Image.open(source[0]))[keep])
    from ane_diffusion.pipeline import GenerationError

    with pytest.raises(GenerationError, match="inpainting UNet"):
        pipe.text_to_image("a red circle")


def test_masks():
    binary = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8))
    np.testing.assert_array_equal(mask_to_array(binary)[0, 0], [[0, 1], [1, 0]])
    grey_rgb = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("RGB")
    np.testing.assert_array_equal(mask_to_array(grey_rgb)[0, 0], [[0, 1], [1, 0]])  # what editors save
    with pytest.raises(EditInputError, match="has colour"):
        mask_to_array(Image.new("RGB", (2, 2), (255, 0, 0)))
    with pytest.raises(EditInputError, match="not binary"):
        mask_to_array(Image.fromarray(np.full((4, 4), 128, np.uint8)))
    m = np.zeros((1, 1, 4, 4), np.float32)
    m[0, 0, 0, 0] = 1
    np.testing.assert_array_equal(latent_mask(m, 2)[0, 0], [[1, 0], [0, 0]])
    weights = feathered(np.pad(np.ones((1, 1, 4, 4), np.float32), ((0, 0), (0, 0), (4, 4), (4, 4))), 1.0)
    assert weights[0, 0, 0, 0] == 0 and 0.5 <= weights[0, 0, 6, 6] <= 1.0


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ane_diffusion", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_edit_and_inpaint(tiny_student, source, tmp_path):
    proc = run_cli("edit", "a red circle", "--image", source[0], "--strength", "0.5", "--model", tiny_student,
                   "--steps", "4", "-o", tmp_path / "e.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("inpaint", "a red circle", "--image", source[0], "--mask", source[1], "--model", tiny_student,
                   "--steps", "2", "-o", tmp_path / "i.png", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "e.png").exists() and (tmp_path / "i.png").exists()


def test_cli_edit_bad_input(tiny_student, source, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    odd = tmp_path / "odd.png"
    Image.new("RGB", (15, 16)).save(odd)
    rgb_mask = tmp_path / "rgbmask.png"
    Image.new("RGB", (16, 16), (0, 0, 255)).save(rgb_mask)
    small_mask = tmp_path / "smallmask.png"
    Image.new("L", (8, 8)).save(small_mask)
    cases = [
        (["edit", "x", "--image", source[0], "--strength", "1.5"], "strength must be in"),
        (["edit", "x", "--image", odd], "pass --resize"),
        (["edit", "x", "--image", tmp_path / "missing.png"], "image not found"),
        (["inpaint", "x", "--image", source[0], "--mask", rgb_mask], "has colour"),
        (["inpaint", "x", "--image", source[0], "--mask", small_mask], "must match"),
    ]
    for args, message in cases:
        proc = run_cli(*args, "--model", tiny_student, "--steps", "4", cwd=work)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    assert list(work.iterdir()) == []
    proc = run_cli("edit", "x", "--image", odd, "--resize", "--model", tiny_student, "--steps", "4",
                   "-o", work / "r.png", "--quiet", cwd=work)
    assert proc.returncode == 0 and Image.open(work / "r.png").size == (16, 16)

"""The ``parameters`` PNG chunk of the Stable Diffusion UIs: written, parsed back, re-run."""

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ane_diffusion.cli import main
from ane_diffusion.images import read_metadata, read_settings
from ane_diffusion.png_parameters import ParametersError, format_parameters, parse_parameters

META = {"prompt": "a red circle,\non blue", "negative_prompt": "blurry, dark", "seed": 7, "steps": 4, "w": 3.0,
        "guidance_scale": 4.0, "sampler": "ddim", "height": 64, "width": 48, "model": "/m/x: y.safetensors",
        "model_kind": "teacher", "backend": "torch", "generator": "ane-diffusion"}


def test_format_follows_the_convention_and_says_cfg_is_one_plus_w():
    text = format_parameters(META)
    lines = text.split("\n")
    assert lines[:3] == ["a red circle,", "on blue", "Negative prompt: blurry, dark"]
    assert lines[3].startswith("Steps: 4, Sampler: DDIM, CFG scale: 4.0, Seed: 7, Size: 48x64, ")
    assert 'Guidance w: 3.0, Guidance convention: CFG scale = 1 + w' in lines[3]


def test_parse_round_trips_our_text():
    back = parse_parameters(format_parameters(META))
    assert back == {"prompt": META["prompt"], "negative_prompt": "blurry, dark", "steps": 4, "seed": 7, "w": 3.0,
                    "width": 48, "height": 64, "sampler": "ddim", "model": "/m/x: y.safetensors"}


def test_parse_reads_another_tools_line_with_cfg_scale_minus_one():
    text = ("masterpiece, a cat\nNegative prompt: lowres\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, "
            "Seed: 123, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.9.0")
    back = parse_parameters(text)
    assert back["w"] == 6.0 and back["sampler"] == "dpmpp-2m" and (back["width"], back["height"]) == (512, 768)
    assert back["prompt"] == "masterpiece, a cat" and back["negative_prompt"] == "lowres" and back["seed"] == 123


def test_parse_rejects_text_without_a_settings_line():
    with pytest.raises(ParametersError):
        parse_parameters("just a caption")


def _pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_from_png_reproduces_the_same_pixels(tiny_teacher, tmp_path):
    first = tmp_path / "first.png"
    assert main(["generate", "a red circle", "--model", str(tiny_teacher), "--seed", "5", "--steps", "3",
                 "-w", "2.5", "--negative-prompt", "blue", "--sampler", "ddim", "-o", str(first), "--quiet"]) == 0
    with Image.open(first) as image:
        assert "parameters" in image.text and "CFG scale: 3.5" in image.text["parameters"]
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(first), "-o", str(again), "--quiet"]) == 0
    np.testing.assert_array_equal(_pixels(first), _pixels(again))
    assert read_metadata(again)["seed"] == 5 and read_metadata(again)["negative_prompt"] == "blue"

    # Only the convention's chunk (as another tool would keep it): the same pixels again.
    with Image.open(first) as image:
        bare = PngInfo()
        bare.add_text("parameters", image.text["parameters"])
        image.save(tmp_path / "bare.png", pnginfo=bare)
    assert read_settings(tmp_path / "bare.png")["w"] == 2.5
    third = tmp_path / "third.png"
    assert main(["generate", "--from-png", str(tmp_path / "bare.png"), "-o", str(third), "--quiet"]) == 0
    np.testing.assert_array_equal(_pixels(first), _pixels(third))

    # An option given on the command line wins over the PNG's.
    other = tmp_path / "other.png"
    assert main(["generate", "--from-png", str(first), "--seed", "6", "-o", str(other), "--quiet"]) == 0
    assert read_metadata(other)["seed"] == 6 and not np.array_equal(_pixels(first), _pixels(other))


def test_from_png_without_parameters_is_one_line_error(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert main(["generate", "--from-png", str(tmp_path / "plain.png"), "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --from-png") and "\n" not in err and not (tmp_path / "o.png").exists()

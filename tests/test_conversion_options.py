"""Conversion options and bad input: parsed and refused before anything is loaded or written.

The CLI cases run ``python -m ane_diffusion convert`` and check the contract with users: exit 2, one
``error:`` line, and no output folder (or nothing new in an existing one) afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from ane_diffusion_conversion.options import (CompressionSpec, ConversionError, ConvertOptions, parse_components,
                                              parse_compress_map, parse_compression, parse_target)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ane_diffusion", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


# --------------------------------------------------------------------------------------------- #
# Parsing
# --------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("text,expected", [
    ("6", CompressionSpec("palettize", 6)),
    ("8-bit", CompressionSpec("palettize", 8)),
    ("4g16", CompressionSpec("palettize", 4, group_size=16)),
    ("int8", CompressionSpec("linear", 8)),
    ("INT4", CompressionSpec("linear", 4, block_size=32)),
    ("none", None), ("", None),
])
def test_parse_compression(text, expected):
    assert parse_compression(text) == expected


def test_compression_names_targets_and_records():
    assert parse_compression("6").name == "6" and parse_compression("6").min_generation == 16
    assert parse_compression("4g16").name == "4g16" and parse_compression("4g16").min_generation == 18
    assert parse_compression("int4").min_generation == 18 and parse_compression("int8").min_generation == 16
    assert parse_compression("4g16").to_dict() == {"spec": "4g16", "mode": "palettize", "nbits": 4,
                                                   "granularity": "per_grouped_channel", "group_size": 16}


@pytest.mark.parametrize("text,message", [
    ("5", "unsupported bit width 5"), ("2", "unsupported bit width 2"), ("16", "unsupported bit width 16"),
    ("int3", "unknown compression"), ("lots", "unknown compression"), ("4g3", "power of two"),
])
def test_bad_compression(text, message):
    with pytest.raises(ConversionError, match=message):
        parse_compression(text, "unet")


def test_compress_map_and_components():
    specs = parse_compress_map("unet=6, TextEncoder=8,vae=int8")
    assert {k: v.name for k, v in specs.items()} == {"unet": "6", "text_encoder": "8", "vae_decoder": "int8",
                                                    "vae_encoder": "int8"}
    assert set(parse_compress_map("all=4")) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    assert parse_components("VAEDecoder,unet") == ("unet", "vae_decoder")  # conversion order
    with pytest.raises(ConversionError, match="unknown component"):
        parse_components("unet,safety_checker")
    with pytest.raises(ConversionError, match="COMPONENT=BITS"):
        parse_compress_map("unet6")


def test_targets():
    assert parse_target("ios17") == "iOS17" and parse_target("MACOS15") == "macOS15"
    with pytest.raises(ConversionError, match="too old"):
        parse_target("iOS15")
    with pytest.raises(ConversionError, match="unknown minimum deployment target"):
        parse_target("visionOS1")


def test_options_validation():
    base = dict(model="m", output="out")
    ok = ConvertOptions(**base, compress="unet=4g16", min_target="macOS15").validated()
    assert ok.compress["unet"].group_size == 16 and ok.min_target == "macOS15"
    assert ok.component_options("unet")["compression"] == "4g16"
    cases = [
        (dict(attention="flash"), "unsupported attention"),
        (dict(precision="bfloat16"), "unsupported precision"),
        (dict(compress="unet=4g16"), "needs iOS18 / macOS15 or newer; --min-target is iOS16"),
        (dict(compress="text_encoder=int4", min_target="iOS17"), "needs iOS18"),
        (dict(components="unet", compress="text_encoder=8"), "not being converted"),
        (dict(components="text_encoder", chunk_unet=True), "--chunk-unet needs the unet"),
        (dict(height=0), "height must be a positive integer"),
    ]
    for extra, message in cases:
        with pytest.raises(ConversionError, match=message):
            ConvertOptions(**base, **extra).validated()
    with pytest.raises(ConversionError, match="no model"):
        ConvertOptions(output="out").validated()


# --------------------------------------------------------------------------------------------- #
# Bad input through the CLI: exit 2, one line, nothing written
# --------------------------------------------------------------------------------------------- #


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("args,fragments", [
    (["--attention", "flash"], ["invalid choice: 'flash'"]),
    (["--compress", "unet=5"], ["unsupported bit width 5 for unet"]),
    (["--compress", "unet=4g16", "--min-target", "iOS17"], ["needs iOS18", "iOS17"]),
    (["--compress", "unet=int4"], ["int4 linear quantization", "needs iOS18"]),
    (["--min-target", "iOS15"], ["too old"]),
    (["--height", "18"], ["height 18 cannot be taken by this model", "multiples of 4"]),
    (["--width", "22", "--height", "16"], ["width 22"]),
    (["--components", "unet,safety_checker"], ["unknown component 'safety_checker'"]),
])
def test_cli_bad_options(tiny_student, tmp_path, args, fragments):
    out = tmp_path / "export"
    proc = run_cli("convert", "--model", tiny_student, "--output", out, *args)
    assert_one_line_error(proc, *fragments)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left next to it either


def test_cli_model_without_needed_components(tiny_student, tmp_path):
    broken = tmp_path / "no-vae"
    shutil.copytree(tiny_student, broken)
    shutil.rmtree(broken / "vae")
    out = tmp_path / "export"
    assert_one_line_error(run_cli("convert", "--model", broken, "--output", out), "vae/config.json")
    assert not out.exists()


def test_cli_student_card_without_guidance_input(tiny_teacher, tmp_path):
    import json

    fake = tmp_path / "fake-student"
    shutil.copytree(tiny_teacher, fake)
    card = json.loads((fake / "ane_diffusion.json").read_text())
    card.update(kind="guidance-distilled", guidance_embedding_dim=16)
    (fake / "ane_diffusion.json").write_text(json.dumps(card))
    out = tmp_path / "export"
    assert_one_line_error(run_cli("convert", "--model", fake, "--output", out), "no guidance input")
    assert not out.exists()


def test_cli_output_folder_holding_something_else(tiny_student, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 not ours")
    proc = run_cli("convert", "--model", tiny_student, "--output", out)
    assert_one_line_error(proc, "not an ane-diffusion Core ML export", "holiday.jpg")
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]
    assert (out / "holiday.jpg").read_bytes() == b"\xff\xd8 not ours"


def test_cli_output_is_a_file_or_has_no_parent(tiny_student, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert_one_line_error(run_cli("convert", "--model", tiny_student, "--output", target), "not a folder")
    missing = tmp_path / "no" / "such" / "export"
    assert_one_line_error(run_cli("convert", "--model", tiny_student, "--output", missing), "does not exist")
    assert not (tmp_path / "no").exists()


def test_cli_verify_bad_input(tiny_student, tmp_path):
    proc = run_cli("verify", "--model", tiny_student, "--coreml", tmp_path)
    assert_one_line_error(proc, "not an ane-diffusion Core ML export folder")

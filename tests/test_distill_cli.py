"""The ``distill`` command: help, and one-line errors (exit 2) for bad input."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from ane_diffusion.cli import main


def test_help_works():
    result = subprocess.run([sys.executable, "-m", "ane_diffusion", "distill", "guidance", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "--teacher" in result.stdout and "--prediction-type" in result.stdout and "--resume" in result.stdout


def run_cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if not line.startswith("warning:")]


@pytest.mark.parametrize("argv, message", [
    (["guidance", "--teacher", "no/such/teacher", "--data", "x", "-o", "{out}"], "model not found"),
    (["guidance", "--teacher", "t", "--data", "x", "--w-min", "5", "--w-max", "2", "-o", "{out}"],
     "--w-min 5.0 is greater than --w-max 2.0"),
    (["progressive", "--student", "s", "--data", "x", "--start-steps", "6", "--target-steps", "4", "-o", "{out}"],
     "--target-steps 4 is not reachable by halving --start-steps 6"),
    (["guidance", "--teacher", "t", "-o", "{out}"], "exactly one of --data FOLDER, --shards SHARDS or --prompts FILE"),
    (["guidance", "--teacher", "t", "--data", "x", "--updates", "0", "-o", "{out}"], "--updates must be >= 1"),
    (["guidance", "--teacher", "t", "--data", "x", "--guidance-lr-scale", "0", "-o", "{out}"],
     "--guidance-lr-scale must be positive"),
    (["progressive", "--student", "s", "--data", "x", "--target-steps", "1", "--w-power", "0", "-o", "{out}"],
     "--w-power must be a finite number > 0"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("{out}", str(tmp_path / "run")) for a in argv]
    code, err = run_cli(["distill", *argv], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_data_and_checkpoint_errors_exit_2_with_one_line(tmp_path, capsys):
    from ane_diffusion.testing import make_tiny_bundle

    teacher = make_tiny_bundle(tmp_path / "teacher")
    images = tmp_path / "images"
    images.mkdir()
    (images / "manifest.jsonl").write_text(json.dumps({"file": "a.png"}) + "\n")
    base = ["distill", "guidance", "--teacher", str(teacher), "--data", str(images), "--quiet"]
    code, err = run_cli([*base, "-o", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err) == 1 and "manifest.jsonl:1" in err[0], err
    assert not (tmp_path / "run").exists()  # the data is checked before the run folder is made
    (images / "manifest.jsonl").write_text(json.dumps({"file": "a.png", "caption": "x"}) + "\n")
    Image.new("RGB", (16, 16)).save(images / "a.png")
    code, err = run_cli([*base, "-o", str(tmp_path / "fresh"), "--resume"], capsys)
    assert code == 2 and len(err) == 1 and "no checkpoint to resume from" in err[0], err
    code, err = run_cli(["distill", "progressive", "--student", str(teacher), "--data", str(images),
                         "--target-steps", "1", "-o", str(tmp_path / "p")], capsys)
    assert code == 2 and len(err) == 1 and "needs a guidance-distilled student" in err[0], err

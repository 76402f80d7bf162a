"""Text to image through the Python API and the CLI, on tiny teacher and student bundles."""

import json
import subprocess
import sys

import numpy as np
import pytest

from ane_diffusion import generate, load_pipeline
from ane_diffusion.bundle import ModelLoadError, resolve_bundle
from ane_diffusion.images import read_metadata
from ane_diffusion.pipeline import Settings


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ane_diffusion", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_student_generates_with_one_call_per_step(tiny_student, tmp_path):
    pipe = load_pipeline(str(tiny_student))
    result = pipe.text_to_image(["a red circle"], Settings(steps=4, w=2.0, seed=3, num_images=2))
    assert len(result.images) == 2 and result.images[0].size == (16, 16)
    assert result.timings.unet_calls == 4
    assert [m["seed"] for m in result.metadata] == [3, 4]
    # image 1 of seed 3 is image 0 of seed 4: every image is reproducible alone
    alone = pipe.text_to_image(["a red circle"], Settings(steps=4, w=2.0, seed=4))
    assert np.array_equal(np.asarray(alone.images[0]), np.asarray(result.images[1]))


def test_w_changes_a_student_image(tiny_student):
    pipe = load_pipeline(str(tiny_student))
    a = np.asarray(pipe.text_to_image("a red circle", Settings(steps=2, w=0.0)).images[0], np.float32)
    b = np.asarray(pipe.text_to_image("a red circle", Settings(steps=2, w=8.0)).images[0], np.float32)
    assert np.abs(a - b).mean() > 0.5


def test_teacher_guidance_is_batch_two_and_matches_manual_cfg(tiny_teacher):
    """The guided denoiser equals (1+w) x_c - w x_u from two separate calls."""
    pipe = load_pipeline(str(tiny_teacher))
    from ane_diffusion.pipeline import Timings

    timings = Timings()
    cond = pipe.encode_prompts(["a red circle"], timings)
    uncond = pipe.encode_prompts([""], timings)
    z = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    guided = pipe.denoiser(cond, uncond, 3.0, timings)(z, 500)
    x_c = pipe.denoiser(cond, None, 0.0, timings)(z, 500)
    x_u = pipe.denoiser(uncond, None, 0.0, timings)(z, 500)
    np.testing.assert_allclose(guided, 4 * x_c - 3 * x_u, atol=1e-4)
    result = pipe.text_to_image("a red circle", Settings(steps=3, w=3.0, sampler="ddim"))
    assert result.timings.unet_calls == 3


@pytest.mark.parametrize("sampler", ["ddim", "stochastic", "lcm", "dpmpp-2m"])
def test_every_sampler_runs_and_is_seeded(tiny_student, sampler):
    pipe = load_pipeline(str(tiny_student))
    a = pipe.text_to_image("a red circle", Settings(steps=4, sampler=sampler, seed=5))
    b = pipe.text_to_image("a red circle", Settings(steps=4, sampler=sampler, seed=5))
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


def test_api_writes_png_with_metadata(tiny_student, tmp_path):
    result = generate(["a red circle", "a green square"], model=str(tiny_student), steps=4, w=1.0,
                      output=tmp_path / "out.png")
    paths = [m["path"] for m in result.metadata]
    assert [p.endswith(n) for p, n in zip(paths, ["out-0.png", "out-1.png"])] == [True, True]
    meta = read_metadata(paths[1])
    assert meta["prompt"] == "a green square" and meta["w"] == 1.0 and meta["guidance_scale"] == 2.0
    assert meta["steps"] == 4 and meta["model_kind"] == "guidance-distilled"


def test_cli_generate_student_and_teacher(tiny_student, tiny_teacher, tmp_path):
    out = tmp_path / "s.png"
    proc = run_cli("generate", "a red circle", "--model", tiny_student, "--steps", "4", "-w", "2",
                   "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "unet" in proc.stderr and str(out) in proc.stdout
    out = tmp_path / "t.png"
    proc = run_cli("generate", "a red circle", "--model", tiny_teacher, "--steps", "3", "--sampler", "dpmpp-2m",
                   "--negative-prompt", "blue", "--output", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert read_metadata(out)["negative_prompt"] == "blue"


def test_cli_help_lists_subcommands():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "generate" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--sampler", "euler"], "invalid choice"),
    (["--steps", "0"], "steps must be >= 1"),
    (["-w", "20"], "outside this student's range"),
    (["--height", "17"], "not a multiple of"),
    (["--width", "-16"], "must be positive"),
    (["--output", "/nonexistent/dir/x.png"], "does not exist"),
    (["--output", "x.jpg"], "must end in .png"),
])
def test_cli_bad_input_one_line_error(tiny_student, tmp_path, args, message):
    proc = run_cli("generate", "a red circle", "--model", tiny_student, *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_prompt_too_long(tiny_student, tmp_path):
    proc = run_cli("generate", " ".join(["red circle"] * 60), "--model", tiny_student, cwd=tmp_path)
    assert proc.returncode == 2 and "77" in proc.stderr and list(tmp_path.iterdir()) == []


def test_student_steps_mismatch_warns(tiny_student, tmp_path):
    proc = run_cli("generate", "a red circle", "--model", tiny_student, "--steps", "8", "--output",
                   tmp_path / "a.png", "--quiet")
    assert proc.returncode == 0 and "warning: this student was distilled for 4 steps" in proc.stderr


def test_missing_and_malformed_models(tmp_path, tiny_student):
    proc = run_cli("generate", "x", "--model", tmp_path / "nope", cwd=tmp_path)
    assert proc.returncode == 2 and "model not found" in proc.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="missing unet/config.json"):
        resolve_bundle(broken)
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        resolve_bundle(broken)
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(ModelLoadError, match="only .safetensors"):
        resolve_bundle(pickle)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not in the hub cache"):
        resolve_bundle("someone/some-model-that-is-not-cached")


def test_bad_card_is_reported(tmp_path, tiny_student):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_student, copy)
    card = json.loads((copy / "ane_diffusion.json").read_text())
    card["kind"] = "wizard"
    (copy / "ane_diffusion.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="card kind 'wizard'"):
        resolve_bundle(copy)

"""The quality harness's checks can fail: bootstrap intervals, the Frechet controls, the w-fidelity
verdict and the matched-quality speed-up, each on inputs whose answer is known."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ane_diffusion.distill.fidelity import w_fidelity, w_response  # noqa: E402
from benchmarks.quality.matched import matched_speedups  # noqa: E402
from benchmarks.quality.stats import bootstrap_interval  # noqa: E402

WS = (0.0, 1.0, 3.0, 6.0)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    small = rng.random(64) < 0.7
    large = rng.random(4096) < 0.7
    low, high = bootstrap_interval(small, np.arange(64))
    assert low < small.mean() < high and 0.1 < high - low < 0.35  # ~ 2 x 1.96 x sqrt(0.21 / 64) = 0.22
    low2, high2 = bootstrap_interval(large, np.arange(4096))
    assert high2 - low2 < 0.25 * (high - low) and low2 < 0.7 < high2


def test_bootstrap_resamples_prompts_not_images():
    """16 prompts x 8 seeds where each prompt is all right or all wrong: the prompt-level interval is as
    wide as 16 independent draws, far wider than treating the 128 images as independent."""
    per_prompt = np.array([1] * 9 + [0] * 7, dtype=bool)
    correct, groups = np.repeat(per_prompt, 8), np.repeat(np.arange(16), 8)
    clustered = np.subtract(*bootstrap_interval(correct, groups)[::-1])
    independent = np.subtract(*bootstrap_interval(correct, np.arange(128))[::-1])
    assert clustered > 2 * independent
    with pytest.raises(ValueError):
        bootstrap_interval(correct, groups[:-1])


def test_frechet_controls_rank_damaged_real_images_worse_than_the_floor():
    from benchmarks.quality.controls import validate_features
    from benchmarks.quality.evaluator import Evaluator
    from benchmarks.quality.harness import choose_scenes, render_real

    evaluator = Evaluator.load()
    scenes = choose_scenes("train", 64, 0)
    real, real_again = render_real(scenes, 4, 123), render_real(scenes, 4, 124)
    controls = validate_features(evaluator.features, real, real_again)
    assert controls["validated"], controls
    assert controls["blurred"] > 3 * controls["floor"] and controls["colour_shifted"] > 3 * controls["floor"]
    # features blind to the damage (the evaluator's shape, size and position READINGS, which it was
    # trained to make despite blur, and which a colour shift does not touch) must fail the validation
    classes = evaluator.config.classes

    def readings(images):
        predicted = evaluator.predict(images)
        return np.concatenate([np.eye(len(classes[name]))[predicted[name]] for name in ("shape", "size", "position")],
                              1)

    blind = validate_features(readings, real, real_again)
    assert not blind["validated"], blind


def _teacher_sweep(rng, n=24):
    """Fake teacher images: an object whose brightness grows with w, plus fixed per-seed noise."""
    base = rng.integers(0, 200, size=(n, 8, 8, 3)).astype(float)
    return {w: np.clip(base + 8.0 * w, 0, 255) for w in WS}


def test_w_fidelity_passes_a_faithful_student_and_fails_one_that_ignores_w():
    rng = np.random.default_rng(1)
    teacher = _teacher_sweep(rng)
    faithful = {w: teacher[w] + rng.normal(0, 2.0, teacher[w].shape) for w in WS}
    result = w_fidelity(faithful, teacher, WS)
    assert result["passed"] and result["nearest_teacher_w"] == list(WS) and result["response_ratio"] > 0.9
    ignoring = {w: teacher[1.0] for w in WS}  # one guidance strength at every w (issue 11's students)
    result = w_fidelity(ignoring, teacher, WS)
    assert not result["passed"] and result["response_ratio"] == 0.0 and result["nearest_teacher_w"] == [1.0] * 4
    weak = {w: teacher[0.0] + 0.5 * (teacher[w] - teacher[0.0]) for w in WS}  # half the teacher's change
    result = w_fidelity(weak, teacher, WS)
    assert not result["passed"] and result["response_ratio"] == pytest.approx(0.5, abs=0.05)
    assert w_response(teacher, WS)[6.0] == pytest.approx(48.0, abs=3.0)
    with pytest.raises(ValueError):
        w_fidelity({0.0: teacher[0.0]}, teacher, WS)
    with pytest.raises(ValueError):
        w_fidelity({**faithful, 3.0: faithful[3.0] * np.nan}, teacher, WS)


def test_matched_speedup_picks_the_cheapest_teacher_within_the_interval():
    def row(model, steps, acc, seconds, interval=None):
        return {"model": model, "steps": steps, "all_attributes": acc, "seconds_per_image": seconds,
                "intervals": {"all": interval or [acc - 0.05, acc + 0.05]}}

    rows = [{"model": "real images", "steps": None, "all_attributes": 1.0, "seconds_per_image": None,
             "intervals": {"all": [1.0, 1.0]}},
            row("teacher 64", 64, 0.90, 1.0), row("teacher 16", 16, 0.88, 0.25), row("teacher 4", 4, 0.50, 0.06),
            row("progressive 4", 4, 0.90, 0.02, [0.86, 0.94]), row("progressive 1", 1, 0.97, 0.01, [0.95, 0.99])]
    entries = {e["student"]: e for e in matched_speedups(rows)}
    assert entries["progressive 4"]["teacher"] == "teacher 16"
    assert entries["progressive 4"]["speedup"] == pytest.approx(12.5)
    assert entries["progressive 1"]["teacher"] is None and entries["progressive 1"]["speedup"] is None


def test_models_embedded_plans_every_shipped_model_by_name():
    from benchmarks.quality.harness import parse_args, plan_rows

    rows, missing = plan_rows(parse_args(["--models", "embedded", "--teacher-steps", "16", "4"]))
    assert missing == []
    assert [(r.label, str(r.bundle)) for r in rows] == [
        ("teacher 16", "demo-teacher"), ("teacher 4", "demo-teacher"), ("stage-1 16", "demo-stage1"),
        ("stage-1 4", "demo-stage1"), ("progressive 8", "demo-8step"), ("progressive 4", "demo-4step"),
        ("progressive 2", "demo-2step"), ("progressive 1", "demo-1step")]


def test_paired_decoder_difference_sees_damage_and_nothing_else():
    """benchmarks/decoder_quality.py's paired measure: the same images twice differ by exactly 0
    (interval [0, 0], no image wrong with one only); images whose colour channels are rolled lose
    colour accuracy with an interval below 0."""
    from benchmarks.decoder_quality import paired_accuracy
    from benchmarks.quality.evaluator import Evaluator
    from benchmarks.quality.harness import choose_scenes, render_real

    scenes = choose_scenes("train", 16, 0)
    per_image = [s for s in scenes for _ in range(2)]
    groups = np.repeat(np.arange(16), 2)
    real = render_real(scenes, 2, 5).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1  # (N, 3, 32, 32)
    evaluator = Evaluator.load()
    same = {r["attribute"]: r for r in paired_accuracy(evaluator, {"full": real, "tiny": real.copy()}, per_image, groups)}
    assert set(same) == {"shape", "colour", "size", "position", "background", "all_attributes"}
    for row in same.values():
        assert row["difference_points"] == 0 and row["interval_points"] == [0, 0]
        assert row["wrong_only_with_tiny"] == row["wrong_only_with_full"] == 0
    rolled = {r["attribute"]: r for r in paired_accuracy(
        evaluator, {"full": real, "tiny": np.roll(real, 1, axis=1)}, per_image, groups)}
    assert rolled["colour"]["interval_points"][1] < 0 and rolled["colour"]["wrong_only_with_tiny"] > 8


def test_noise_control_matches_the_decoders_error_size():
    """decoder_quality.py's control: white noise with the tiny decoder's mean squared error (here a
    blur stands in for the tiny decoder) has the same PSNR, clipping to [-1, 1] included; identical
    images flip no verdict, colour-rolled ones do."""
    import torch

    from ane_diffusion.distill.decoder import psnr_db
    from benchmarks.decoder_quality import flipped, flips, noise_like, paired_accuracy, verdicts
    from benchmarks.quality.evaluator import Evaluator
    from benchmarks.quality.harness import choose_scenes, render_real

    scenes = choose_scenes("train", 8, 0)
    real = render_real(scenes, 2, 5).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1  # (16, 3, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(torch.from_numpy(real), 3, 1, 1, count_include_pad=False).numpy()
    noisy = noise_like(real, blurred, seed=0)
    assert noisy.shape == real.shape and noisy.dtype == np.float32 and noisy.min() >= -1 and noisy.max() <= 1
    assert abs(psnr_db(noisy, real) - psnr_db(blurred, real)) < 0.05  # the same error after clipping
    assert not np.array_equal(noisy, noise_like(real, blurred, seed=1))
    per_image = [s for s in scenes for _ in range(2)]
    rows = paired_accuracy(Evaluator.load(), {"full": real, "tiny": real.copy()}, per_image, np.repeat(np.arange(8), 2))
    assert flips(rows) == 0
    damaged = paired_accuracy(Evaluator.load(), {"full": real, "tiny": np.roll(real, 1, axis=1)}, per_image,
                              np.repeat(np.arange(8), 2))
    assert flips(damaged) == sum(r["wrong_only_with_tiny"] + r["wrong_only_with_full"] for r in damaged
                                 if r["attribute"] != "all_attributes") > 0
    evaluator = Evaluator.load()
    assert not flipped(verdicts(evaluator, {"full": real, "tiny": real.copy()}, per_image)).any()
    changed = flipped(verdicts(evaluator, {"full": real, "tiny": np.roll(real, 1, axis=1)}, per_image))
    assert 0 < changed.sum() <= flips(damaged)  # an image may flip on several attributes


def test_flips_png_draws_full_above_tiny(tmp_path):
    from PIL import Image

    from benchmarks.decoder_quality import FLIPS_SHOWN, flips_png

    white, black = np.ones((1, 3, 32, 32), np.float32), -np.ones((1, 3, 32, 32), np.float32)
    flips_png([np.stack([white, black]), np.zeros((2, 0, 3, 32, 32), np.float32)], tmp_path / "f.png")
    grid = np.asarray(Image.open(tmp_path / "f.png"))
    assert grid.shape == (3 * 2 * (2 * 32 + 4), 3 * FLIPS_SHOWN * 32, 3)
    assert (grid[:96, :96] == 255).all() and (grid[96:192, :96] == 0).all()  # full (white) above tiny (black)
    assert (grid[:, 96:] == 255).all()  # padding, and the empty second strip

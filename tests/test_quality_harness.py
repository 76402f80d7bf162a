"""The quality harness: Frechet distance against closed forms, the committed attribute evaluator's
trust check on fresh real images, and an end-to-end ``--quick`` run on tiny random bundles."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.quality.frechet import (  # noqa: E402
    METHODS, feature_statistics, frechet_distance, frechet_distance_features)

SOLVERS = [m for m in METHODS if m != "auto"]


def _random_rotation(dim, rng):
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def _needs(method):
    if method == "scipy":
        pytest.importorskip("scipy.linalg")


@pytest.mark.parametrize("method", SOLVERS)
def test_frechet_closed_form_commuting_gaussians(method):
    """Covariances sharing eigenvectors: d^2 = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2."""
    _needs(method)
    rng = np.random.default_rng(0)
    dim = 6
    q = _random_rotation(dim, rng)
    a, b = rng.uniform(0.2, 3.0, dim), rng.uniform(0.2, 3.0, dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T, method=method)
    assert got == pytest.approx(expected, rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("method", SOLVERS)
def test_frechet_general_gaussians_and_identity(method):
    """Non-commuting case against the 1-D formula and against the other solver; zero for equal inputs."""
    _needs(method)
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]], method=method) == pytest.approx(4 + 1)
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = m1 @ m1.T + 0.1 * np.eye(5), m2 @ m2.T + 0.1 * np.eye(5)
    mu = rng.normal(size=5)
    assert frechet_distance(mu, c1, mu, c1, method=method) == pytest.approx(0, abs=1e-8)
    other = "eigh" if method == "scipy" else method
    assert frechet_distance(mu, c1, -mu, c2, method=method) == pytest.approx(
        frechet_distance(mu, c1, -mu, c2, method=other), rel=1e-8)


def test_frechet_from_samples_approaches_closed_form():
    rng = np.random.default_rng(2)
    x = rng.normal([0, 0, 0], [1.0, 2.0, 0.5], size=(200_000, 3))
    y = rng.normal([1, 0, -1], [1.0, 1.0, 1.0], size=(200_000, 3))
    expected = 2 + (np.sqrt(4) - 1) ** 2 + (np.sqrt(0.25) - 1) ** 2
    assert frechet_distance_features(x, y) == pytest.approx(expected, rel=0.02)
    mu, cov = feature_statistics(x)
    assert mu.shape == (3,) and cov.shape == (3, 3)


def test_evaluator_trusted_on_fresh_real_images():
    """The trust check: the committed evaluator reads >= 98% of every attribute of real images it
    has never seen (fresh seeds), on train-split and held-out scenes alike."""
    from benchmarks.quality.evaluator import DEFAULT_DIR, TRUST_THRESHOLD, Evaluator, is_trusted, measure_accuracy

    evaluator = Evaluator.load(DEFAULT_DIR)
    accuracy = measure_accuracy(evaluator, num_images=250, seeds={"train": 777_001, "heldout": 777_002})
    for split, values in accuracy.items():
        for name, value in values.items():
            if name != "all":
                assert value >= TRUST_THRESHOLD, f"{split} {name}: {value:.3f} < {TRUST_THRESHOLD}"
    assert is_trusted(accuracy) and is_trusted(evaluator.stored_accuracy)
    size = sum(p.stat().st_size for p in DEFAULT_DIR.iterdir())
    assert size < 2 * 1024 * 1024, f"evaluator folder is {size} bytes: keep it under 2 MB"
    assert not any(p.suffix in (".pt", ".pth", ".pkl", ".bin") for p in DEFAULT_DIR.iterdir())


def test_evaluator_features_and_resizing():
    from PIL import Image

    from benchmarks.quality.evaluator import Evaluator

    evaluator = Evaluator.load()
    from ane_diffusion.demo.shapes import make_dataset

    images, _, scenes = make_dataset(4, seed=5, split="all")
    feats = evaluator.features(images)
    assert feats.shape == (4, evaluator.config.feature_dim) and np.isfinite(feats).all()
    big = [Image.fromarray(image).resize((64, 64), Image.Resampling.NEAREST) for image in images]
    assert evaluator.accuracy(big, scenes)["all"] == 1.0


@pytest.fixture(scope="module")
def progressive_folder(tmp_path_factory):
    """A progressive folder with only steps-2 (steps-1 is missing on purpose)."""
    from ane_diffusion.card import ModelCard
    from ane_diffusion.testing import make_tiny_bundle

    folder = tmp_path_factory.mktemp("progressive")
    card = ModelCard(kind="progressive", prediction_type="v_prediction", steps=2, w_min=0.0, w_max=8.0,
                     default_w=3.0, guidance_embedding_dim=16, recommended_sampler="ddim", recommended_steps=2,
                     description="tiny random progressive student for tests")
    make_tiny_bundle(folder / "steps-2", student=True, seed=2, prediction_type="v_prediction", steps=2, card=card)
    return folder


def test_quick_mode_end_to_end(tiny_teacher, tiny_student, progressive_folder, tmp_path):
    from PIL import Image

    from benchmarks.quality.harness import COLUMNS, GRID_CELL, GRID_GAP, GRID_LABEL_WIDTH, main

    out = tmp_path / "quality"
    status = main(["--teacher", str(tiny_teacher), "--stage1", str(tiny_student), "--progressive",
                   str(progressive_folder), "--quick", "--out", str(out)])
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["quality.json", "quality.md", "samples-heldout.png",
                                                     "samples-train.png", "samples-w-sweep.png"]
    record = json.loads((out / "quality.json").read_text())
    assert {"date", "machine", "versions", "settings", "evaluator", "tables"} <= set(record)
    assert record["evaluator"]["trusted"] is True
    assert record["settings"]["w"] == 3.0 and record["settings"]["quick"] is True
    assert any("steps-1" in note for note in record["missing"])
    expected = ["real images", "teacher 4", "teacher 1", "stage-1 4", "stage-1 1", "progressive 2"]
    evals = {"real images": 0, "teacher 4": 8, "teacher 1": 2, "stage-1 4": 4, "stage-1 1": 1, "progressive 2": 2}
    markdown = (out / "quality.md").read_text()
    for split in ("train", "heldout"):
        table = record["tables"][split]
        rows = table["rows"]
        assert [row["model"] for row in rows] == expected
        for row in rows:
            assert set(COLUMNS) <= set(row)
            assert row["evaluations_per_image"] == evals[row["model"]]
            assert 0.0 <= row["all_attributes"] <= 1.0 and row["frechet"] >= 0.0
            assert row["images"] == 3 * 2
            for name in ("shape", "position", "all"):
                low, high = row["intervals"][name]
                assert 0.0 <= low <= high <= 1.0
        controls = table["frechet_controls"]
        assert {"floor", "blurred", "colour_shifted", "validated"} <= set(controls)
        assert [m["student"] for m in table["matched_speedup"]] == expected[3:]
        assert rows[0]["all_attributes"] == 1.0  # real images of the prompts: the evaluator reads them all
        assert all(row["seconds_per_image"] > 0 for row in rows[1:])
        grid = Image.open(out / table["samples"])
        step = GRID_CELL + GRID_GAP
        assert grid.height == len(expected) * step
        assert (grid.width - GRID_LABEL_WIDTH) // step == len(table["grid_prompts"])
    assert len(set(record["tables"]["heldout"]["prompts"]) & set(record["tables"]["train"]["prompts"])) == 0
    sweep = record["w_sweep"]
    assert sweep["ws"] == [0.0, 1.0, 3.0, 6.0] and sweep["teacher"] == "teacher 4"
    assert set(sweep["fidelity"]) == {"teacher", "stage-1 4", "progressive 2"}
    for label in ("stage-1 4", "progressive 2"):
        result = sweep["fidelity"][label]
        assert len(result["distance"]) == 4 and isinstance(result["passed"], bool)
        assert set(sweep["accuracy"][label]) == {"0.0", "1.0", "3.0", "6.0"}
    assert "## w sweep" in markdown and "Frechet feature space" in markdown
    main_tables = markdown.split("## w sweep")[0]  # the sweep's own tables follow the two main ones
    table_lines = [line for line in main_tables.splitlines() if line.startswith("| ") and line.count("|") == 12]
    assert len([line for line in table_lines if line.startswith("| model |")]) == 2
    for label in expected:
        assert sum(line.startswith(f"| {label} |") for line in table_lines) == 2


def test_frechet_auto_falls_back_to_numpy_without_scipy(monkeypatch):
    import benchmarks.quality.frechet as frechet

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(50, 4)), rng.normal(1.0, 2.0, size=(60, 4))
    expected = frechet.frechet_distance_features(x, y, method="eigh")
    monkeypatch.setitem(sys.modules, "scipy", None)  # "import scipy..." now raises ImportError
    monkeypatch.setitem(sys.modules, "scipy.linalg", None)
    assert not frechet._have_scipy()
    assert frechet.frechet_distance_features(x, y) == expected


def test_every_image_of_a_benchmark_gets_its_own_noise():
    """The pipeline gives every prompt of one call the same seeds; the benchmarks' sampling gives image j
    of prompt i the seed i * k + j, and is otherwise the plain pipeline (same images for those seeds)."""
    from ane_diffusion import load_pipeline
    from ane_diffusion.pipeline import Settings
    from benchmarks.quality.noise import text_to_image_distinct

    pipe = load_pipeline("demo-1step")
    prompts = ["a small red circle at the top left on a black background"] * 3
    settings = Settings(steps=1, w=3.0, sampler="ddim", seed=5, num_images=2, decoder="full")
    shared = pipe.text_to_image(prompts, settings)
    distinct = text_to_image_distinct(pipe, prompts, settings)
    pixels = [np.asarray(image, dtype=np.int16) for image in distinct.images]
    assert [m["seed"] for m in shared.metadata] == [5, 6] * 3  # the pipeline's own behaviour
    assert [m["seed"] for m in distinct.metadata] == [5, 6, 7, 8, 9, 10]
    assert np.array_equal(np.asarray(shared.images[2]), np.asarray(shared.images[0]))  # same prompt, same noise
    assert all(np.abs(pixels[i] - pixels[j]).mean() > 0.3 for i in range(6) for j in range(i))  # shared: 0
    direct = pipe.text_to_image(prompts[:1], Settings(**{**vars(settings), "seed": 9}))
    assert np.array_equal(np.asarray(direct.images[0]), pixels[4])
    assert distinct.timings.unet_calls == shared.timings.unet_calls and distinct.timings.total > 0


def test_the_harness_and_the_w_sweep_sample_one_noise_per_image():
    """The quality harness's rows and the w sweep go through the distinct-noise sampling: the same
    prompt twice gives two different images (with the pipeline's shared seeds it gives one twice)."""
    from ane_diffusion import load_pipeline
    from benchmarks.quality.harness import Generator
    from benchmarks.quality.wsweep import sweep_images

    pipe = load_pipeline("demo-1step")
    prompts = ["a large green triangle in the center on a gray background"] * 2

    def differ(images):
        a, b = (np.asarray(image, dtype=np.int16) for image in images)
        return np.abs(a - b).mean() > 0.3

    assert differ(Generator("torch", 3.0, 0, 1, "full")._run(pipe, prompts, 1).images)
    assert differ(sweep_images(pipe, prompts, [0.0], 1, 0, 1)[0.0])

"""The editing benchmark: its edit cases (one attribute changed, the rest kept, always a valid and
seen scene), masks, strengths, and an end-to-end ``--quick`` run on tiny random bundles."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ane_diffusion.demo.shapes import (  # noqa: E402
    BACKGROUND_RGB, HELDOUT_PAIRS, Scene, is_heldout, parse_caption, train_scenes)
from benchmarks.editing.cases import (  # noqa: E402
    ALL_ATTRIBUTES, EDITABLE, PSNR_IDENTICAL, box_mask, change_attribute, edit_caption, object_box, object_mask,
    plan_cases, scale_mask, target_values, unmasked_psnr)


def test_target_values_change_one_attribute_into_valid_seen_scenes():
    """Over every train scene and both editable attributes: each target differs in that attribute only,
    is a valid scene (colour never the background's), is not a held-out pair, and its caption is the
    source's with one word changed."""
    count = 0
    for scene in train_scenes():
        for attribute in EDITABLE:
            values = target_values(scene, attribute)
            assert values, f"no target for {scene} / {attribute}"
            for value in values:
                target = change_attribute(scene, attribute, value)
                count += 1
                assert getattr(target, attribute) == value != getattr(scene, attribute)
                assert all(getattr(target, a) == getattr(scene, a) for a in ALL_ATTRIBUTES if a != attribute)
                assert target.colour != target.background
                assert not is_heldout(target)
                before, after = scene.caption(0).split(), target.caption(0).split()
                assert len(before) == len(after) and sum(a != b for a, b in zip(before, after)) == 1
                fields = parse_caption(target.caption(0))
                assert fields == {a: getattr(target, a) for a in ALL_ATTRIBUTES}
    assert count > 2000


def test_heldout_targets_only_when_allowed_and_labelled():
    scene = Scene("circle", "red", "small", "center", "black")
    assert "yellow" not in target_values(scene, "colour")
    assert "yellow" in target_values(scene, "colour", allow_heldout=True)
    assert "blue" in target_values(scene, "colour") and "red" not in target_values(scene, "colour")
    on_blue = replace(scene, background="blue")
    assert "blue" not in target_values(on_blue, "colour", allow_heldout=True)
    with pytest.raises(ValueError, match="invisible"):
        change_attribute(on_blue, "colour", "blue")
    with pytest.raises(ValueError, match="already"):
        change_attribute(scene, "colour", "red")
    with pytest.raises(ValueError, match="cannot be edited"):
        change_attribute(scene, "size", "large")
    cases = plan_cases(200, seed=3, allow_heldout=True)
    labelled = [c for c in cases if c.heldout_target]
    assert labelled, "with allow_heldout some of 200 targets should be held-out pairs"
    assert all((c.target.shape, c.target.colour) in HELDOUT_PAIRS for c in labelled)
    assert all(c.to_dict()["heldout_target"] == c.heldout_target for c in cases)


def test_plan_cases_is_deterministic_balanced_and_valid():
    cases = plan_cases(48, seed=0)
    assert cases == plan_cases(48, seed=0) and cases != plan_cases(48, seed=1)
    assert len({c.source for c in cases}) == 48
    assert [c.index for c in cases] == list(range(48))
    assert sum(c.attribute == "colour" for c in cases) == sum(c.attribute == "shape" for c in cases) == 24
    for case in cases:
        assert not is_heldout(case.source) and not case.heldout_target
        assert case.target.colour != case.target.background
        assert case.kept == tuple(a for a in ALL_ATTRIBUTES if a != case.attribute)
        value = getattr(case.target, case.attribute)
        assert edit_caption(case.source_caption, case.attribute, value) == case.target_caption
    with pytest.raises(ValueError, match="not a full caption"):
        edit_caption("a red circle", "colour", "green")


@pytest.mark.parametrize("scene", [Scene("circle", "red", "small", "top left", "blue"),
                                   Scene("cross", "white", "large", "bottom right", "gray"),
                                   Scene("triangle", "green", "large", "center", "black")])
def test_mask_covers_the_object_with_a_margin(scene):
    image = scene.render(32)
    x0, y0, x1, y1 = object_box(image, scene.background)
    pixels = np.asarray(image).astype(int)
    differs = np.any(pixels != np.array(BACKGROUND_RGB[scene.background]), axis=-1)
    mask = np.asarray(object_mask(scene, image, dilate=2)) > 0
    assert not (differs & ~mask).any(), "every object pixel is in the mask"
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min()) == (max(0, x0 - 2), max(0, y0 - 2))
    assert (xs.max() + 1, ys.max() + 1) == (min(32, x1 + 2), min(32, y1 + 2))
    assert set(np.unique(np.asarray(object_mask(scene, image)))) == {0, 255}
    small = np.asarray(scale_mask(object_mask(scene, image), 16)) > 0
    assert not (differs.reshape(16, 2, 16, 2).any(axis=(1, 3)) & ~small).any()


def test_unmasked_psnr():
    from PIL import Image

    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mask = box_mask(8, (2, 2, 6, 6), dilate=0)
    out = src.copy()
    out[2:6, 2:6] = 0  # only masked pixels change
    assert unmasked_psnr(Image.fromarray(out), Image.fromarray(src), mask) == PSNR_IDENTICAL
    out[0, 0, 0] = src[0, 0, 0] ^ 16  # one unmasked value off by 16
    keep = 64 - 16
    expected = 10 * np.log10(255**2 / (16**2 / (keep * 3)))
    assert unmasked_psnr(Image.fromarray(out), Image.fromarray(src), mask) == pytest.approx(expected)


def test_strengths_run_two_three_four_steps():
    from benchmarks.editing.harness import strength_for

    assert [strength_for(k, 8) for k in (2, 3, 4)] == [0.25, 0.375, 0.5]
    assert [strength_for(k, 4) for k in (2, 3, 4)] == [0.5, 0.75, 1.0]
    for n in range(1, 20):
        for k in range(1, n + 1):
            assert int(n * strength_for(k, n)) == k


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """Tiny 8-step and 2-step students (the 4-step one is the session's ``tiny_student``)."""
    from ane_diffusion.card import ModelCard
    from ane_diffusion.testing import make_tiny_bundle

    folder = tmp_path_factory.mktemp("editing-students")
    paths = {}
    for n in (8, 2):
        card = ModelCard(kind="progressive", prediction_type="v_prediction", steps=n, w_min=0.0, w_max=8.0,
                         default_w=3.0, guidance_embedding_dim=16, recommended_sampler="ddim", recommended_steps=n,
                         description="tiny random progressive student for tests")
        paths[n] = make_tiny_bundle(folder / f"steps-{n}", student=True, seed=n, prediction_type="v_prediction",
                                    steps=n, card=card)
    return paths


def test_quick_mode_end_to_end(tiny_teacher, tiny_student, students, tmp_path):
    from PIL import Image

    from benchmarks.editing.harness import EDIT_COLUMNS, GRID_CELL, GRID_GAP, INPAINT_COLUMNS, main

    out = tmp_path / "editing"
    status = main(["--models", str(students[8]), str(tiny_student), "--inpaint-models", str(tiny_student),
                   str(students[2]), "--teacher", str(tiny_teacher), "--quick", "--out", str(out)])
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["edit-samples.png", "editing.json", "editing.md",
                                                     "inpaint-samples.png"]
    record = json.loads((out / "editing.json").read_text())
    assert {"date", "machine", "versions", "settings", "evaluator", "cases", "tables"} <= set(record)
    assert record["evaluator"]["trusted"] is True and record["evaluator"]["reads_sources_all_five"] == 1.0
    assert record["settings"]["w"] == 3.0 and record["settings"]["quick"] is True
    assert record["settings"]["model_resolutions"]["student"] == 16
    cases = record["cases"]
    assert len(cases) == 4 and {c["attribute"] for c in cases} == {"colour", "shape"}
    for case in cases:
        source, target = parse_caption(case["source_caption"]), parse_caption(case["target_caption"])
        assert target[case["attribute"]] == case["to"] != source[case["attribute"]] == case["from"]
        assert {k: v for k, v in target.items() if k != case["attribute"]} == \
            {k: v for k, v in source.items() if k != case["attribute"]}

    # (setting, strength, steps run, evaluations per image)
    expected = {
        "edit": [("steps-8 s=0.25", 0.25, 2, 2), ("steps-8 s=0.375", 0.375, 3, 3), ("steps-8 s=0.5", 0.5, 4, 4),
                 ("student s=0.5", 0.5, 2, 2), ("student s=0.75", 0.75, 3, 3), ("student s=1", 1.0, 4, 4),
                 ("teacher 4 s=0.5", 0.5, 2, 4)],
        "inpaint": [("student 2 steps", 1.0, 2, 2), ("student 3 steps", 1.0, 3, 3), ("student 4 steps", 1.0, 4, 4),
                    ("steps-2 2 steps", 1.0, 2, 2), ("teacher 4 steps", 1.0, 4, 8)],
    }
    markdown = (out / "editing.md").read_text()
    for task, settings in expected.items():
        table = record["tables"][task]
        rows = table["rows"]
        assert [r["setting"] for r in rows] == ["source (no edit)", "target (real render)"] + [s[0] for s in settings]
        # doing nothing keeps everything and reaches no target; real target renders are read perfectly
        assert rows[0]["kept_attributes"] == 1.0 and rows[0]["target_attribute"] == 0.0
        assert rows[1]["edit_success"] == 1.0
        for row, (label, strength, steps_run, evaluations) in zip(rows[2:], settings):
            assert set(INPAINT_COLUMNS if task == "inpaint" else EDIT_COLUMNS) <= set(row)
            assert (row["strength"], row["steps_run"], row["evaluations_per_image"]) == (strength, steps_run,
                                                                                          evaluations)
            assert row["images"] == 4 and row["seconds_per_image"] > 0 and row["resolution"] == 16
            for key in ("edit_success", "target_attribute", "kept_attributes"):
                assert 0.0 <= row[key] <= 1.0
            assert row["edit_success"] <= min(row["target_attribute"], row["kept_attributes"])
            assert len(row["outcomes"]) == 4
            if task == "inpaint":  # the unmasked pixels are kept exactly
                assert row["unmasked_psnr_min"] == PSNR_IDENTICAL and row["unmasked_identical"] == 1.0
                assert row["psnr_ok"] is True
            assert sum(line.startswith(f"| {label} |") for line in markdown.splitlines()) == 1
        if task == "inpaint":  # the 4-step student at 2 and 3 steps runs, with the pipeline's warning as a note
            assert all(any("distilled for 4 steps" in n for n in row["notes"]) for row in rows[2:4])
            assert not any("distilled for" in n for n in rows[4]["notes"])
        grid = Image.open(out / table["samples"])
        extra = 3 if task == "inpaint" else 2  # source, [mask,] real target
        assert grid.height == (len(settings) + extra) * (GRID_CELL + GRID_GAP)
    assert "psnr_note" in record["tables"]["inpaint"]
    assert record["settings"]["decoder"].startswith("each model's default")  # the tiny bundles have no tiny VAE
    assert all(row["decoder"] == "full" for table in record["tables"].values() for row in table["rows"][2:])
    assert sum(line.startswith(("| inpaint |", "| edit |")) for line in markdown.splitlines()) == 12


def test_missing_embedded_model_fails_in_one_line(monkeypatch, tmp_path, capsys):
    from ane_diffusion import bundle
    from benchmarks.editing.harness import main

    monkeypatch.setattr(bundle, "embedded_root", lambda: tmp_path / "no-assets")
    status = main(["--quick", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: the embedded model 'demo-8step' is not installed")
    assert not (tmp_path / "out").exists()


def test_decoder_the_models_lack_fails_in_one_line(tiny_student, tmp_path, capsys):
    from benchmarks.editing.harness import main

    status = main(["--models", str(tiny_student), "--teacher", "none", "--tasks", "edit", "--quick",
                   "--decoder", "tiny", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and "tiny" in err
    assert not (tmp_path / "out").exists()

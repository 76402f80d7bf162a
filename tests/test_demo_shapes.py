"""The demo-scene generator: splits, captions, rendering and the image-folder writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ane_diffusion.demo import shapes
from ane_diffusion.demo.shapes import (
    BACKGROUND_RGB,
    CAPTION_STYLES,
    COLOUR_RGB,
    HELDOUT_PAIRS,
    MANIFEST_NAME,
    Scene,
    all_scenes,
    caption_corpus,
    heldout_scenes,
    make_dataset,
    parse_caption,
    train_scenes,
    write_image_folder,
)

ATTRIBUTES = {
    "shape": shapes.SHAPES,
    "colour": shapes.COLOURS,
    "size": shapes.SIZES,
    "position": shapes.POSITIONS,
    "background": shapes.BACKGROUNDS,
}


def attributes(scene: Scene) -> dict[str, str]:
    return {name: getattr(scene, name) for name in ATTRIBUTES}


def object_mask(image: Image.Image) -> np.ndarray:
    """Pixels that differ from the top-left corner pixel, taken as the background."""
    pixels = np.asarray(image).astype(int)
    return np.abs(pixels - pixels[0, 0]).max(axis=-1) > 24


# --- scenes and splits ---------------------------------------------------------------------------


def test_attribute_lists_are_large_enough_and_distinct():
    assert len(shapes.SHAPES) >= 3 and len(shapes.COLOURS) >= 5 and len(shapes.BACKGROUNDS) >= 3
    corners = {"top left", "top right", "bottom left", "bottom right"}
    assert corners | {"center"} <= set(shapes.POSITIONS)
    for values in ATTRIBUTES.values():
        assert len(set(values)) == len(values)


def test_all_scenes_is_every_combination_with_a_visible_object():
    scenes = all_scenes()
    assert len(set(scenes)) == len(scenes)
    assert all(s.colour != s.background for s in scenes)
    n_combos = np.prod([len(v) for v in ATTRIBUTES.values()])
    n_invisible = sum(c == b for c in shapes.COLOURS for b in shapes.BACKGROUNDS)
    n_invisible *= len(shapes.SHAPES) * len(shapes.SIZES) * len(shapes.POSITIONS)
    assert len(scenes) == n_combos - n_invisible


def test_scene_rejects_unknown_values_and_invisible_objects():
    with pytest.raises(ValueError):
        Scene("hexagon", "red", "small", "center", "black")
    with pytest.raises(ValueError):
        Scene("circle", "blue", "small", "center", "blue")


def test_splits_partition_all_scenes_and_hold_out_about_an_eighth():
    train, heldout = set(train_scenes()), set(heldout_scenes())
    assert not train & heldout
    assert train | heldout == set(all_scenes())
    assert 0.10 <= len(heldout) / len(all_scenes()) <= 0.15
    assert all((s.shape, s.colour) in HELDOUT_PAIRS for s in heldout)


def test_every_attribute_value_is_seen_in_training():
    train = train_scenes()
    for name, values in ATTRIBUTES.items():
        assert {getattr(s, name) for s in train} == set(values), name


def test_train_dataset_never_shows_a_heldout_pair():
    _, captions, scenes = make_dataset(2000, resolution=8, seed=5, split="train")
    assert all((s.shape, s.colour) not in HELDOUT_PAIRS for s in scenes)
    assert set(scenes) == set(train_scenes())
    for caption in captions:
        stated = parse_caption(caption)
        assert (stated["shape"], stated["colour"]) not in HELDOUT_PAIRS


def test_heldout_dataset_only_shows_heldout_pairs():
    _, _, scenes = make_dataset(200, resolution=8, seed=5, split="heldout")
    assert set(scenes) == set(heldout_scenes())


def test_unknown_split_and_bad_style_weights_are_rejected():
    with pytest.raises(ValueError):
        make_dataset(1, split="validation")
    with pytest.raises(ValueError):
        make_dataset(1, style_weights=(1.0, 1.0))


# --- captions ------------------------------------------------------------------------------------


def test_full_caption_wording():
    assert Scene("circle", "red", "small", "top left", "blue").caption() == (
        "a small red circle at the top left on a blue background"
    )
    assert Scene("square", "green", "large", "center", "gray").caption() == (
        "a large green square in the center on a gray background"
    )
    assert Scene("circle", "red", "small", "top left", "blue").caption(style=1) == "a red circle"


@pytest.mark.parametrize("style", range(len(CAPTION_STYLES)))
def test_every_caption_style_parses_back_to_the_attributes_it_states(style):
    stated = {"shape", "colour", *CAPTION_STYLES[style]}
    for scene in all_scenes():
        expected = {k: v for k, v in attributes(scene).items() if k in stated}
        assert parse_caption(scene.caption(style)) == expected


def test_parse_caption_ignores_case_and_spacing_and_rejects_other_text():
    assert parse_caption("  A Red  Circle ") == {"colour": "red", "shape": "circle"}
    unparseable = ("a circle", "a red hexagon", "two red circles", "a red circle on a pink wall")
    for text in unparseable:
        with pytest.raises(ValueError):
            parse_caption(text)


def test_caption_corpus_covers_every_style_of_every_scene():
    corpus = caption_corpus()
    assert len(set(corpus)) == len(corpus)
    assert set(corpus) == {s.caption(k) for s in all_scenes() for k in range(len(CAPTION_STYLES))}
    _, captions, _ = make_dataset(300, resolution=8, seed=1, split="all")
    assert set(captions) <= set(corpus)


# --- rendering -----------------------------------------------------------------------------------


def test_object_colour_at_its_centre_and_background_at_the_corners():
    for scene in all_scenes():
        image = scene.render(32)
        assert image.mode == "RGB" and image.size == (32, 32)
        pixels = np.asarray(image).astype(int)
        background = np.array(BACKGROUND_RGB[scene.background])
        for corner in (pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]):
            np.testing.assert_array_equal(corner, background, err_msg=str(scene))
        rows, cols = np.nonzero(object_mask(image))
        centre = pixels[(rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2]
        assert np.abs(centre - COLOUR_RGB[scene.colour]).max() <= 2, scene


def test_object_lies_in_its_stated_position():
    for scene in all_scenes():
        rows, cols = np.nonzero(object_mask(scene.render(32)))
        y, x = (rows.min() + rows.max() + 1) / 64, (cols.min() + cols.max() + 1) / 64
        if scene.position == "center":
            assert abs(x - 0.5) < 0.05 and abs(y - 0.5) < 0.05, scene
        else:
            assert (y < 0.5) == scene.position.startswith("top"), scene
            assert (x < 0.5) == scene.position.endswith("left"), scene


def test_sizes_differ_in_area_even_with_jitter():
    rng = np.random.default_rng(0)

    def areas(shape, size):
        scene = Scene(shape, "white", size, "center", "black")
        return [object_mask(scene.render(32, rng)).sum() for _ in range(40)]

    for shape in shapes.SHAPES:
        assert max(areas(shape, "small")) * 1.5 < min(areas(shape, "large")), shape


def test_jitter_varies_images_but_no_rng_means_none():
    scene = Scene("cross", "yellow", "large", "bottom right", "gray")
    assert np.array_equal(np.asarray(scene.render()), np.asarray(scene.render()))
    rng = np.random.default_rng(0)
    assert not np.array_equal(np.asarray(scene.render(rng=rng)), np.asarray(scene.render(rng=rng)))


# --- datasets ------------------------------------------------------------------------------------


def test_make_dataset_is_deterministic_for_a_seed():
    images, captions, scenes = make_dataset(64, resolution=16, seed=3)
    assert images.shape == (64, 16, 16, 3) and images.dtype == np.uint8
    assert len(captions) == len(scenes) == 64
    again = make_dataset(64, resolution=16, seed=3)
    np.testing.assert_array_equal(images, again[0])
    assert (captions, scenes) == (again[1], again[2])
    other = make_dataset(64, resolution=16, seed=4)
    assert not np.array_equal(images, other[0])


def test_make_dataset_of_nothing_is_empty():
    images, captions, scenes = make_dataset(0, resolution=16)
    assert images.shape == (0, 16, 16, 3) and captions == scenes == []


def test_make_dataset_mixes_caption_styles():
    _, captions, scenes = make_dataset(300, resolution=8, seed=0)
    full = sum(c == s.caption() for c, s in zip(captions, scenes))
    assert 0.35 * 300 < full < 0.65 * 300
    assert len({len(parse_caption(c)) for c in captions}) >= 4


def test_write_image_folder_manifest_matches_the_dataset(tmp_path):
    folder = write_image_folder(tmp_path / "data", 20, resolution=24, seed=2)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    images, captions, _ = make_dataset(20, resolution=24, seed=2)
    lines = (folder / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["caption"] for e in entries] == captions
    for entry, expected in zip(entries, images):
        assert set(entry) == {"file", "caption"}
        with Image.open(folder / entry["file"]) as image:
            assert image.size == (24, 24) and image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image), expected)


def test_write_image_folder_refuses_to_overwrite(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(FileExistsError):
        write_image_folder(tmp_path / "data", 2)


def test_write_image_folder_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    real_save = Image.Image.save
    saved = []

    def failing_save(self, *args, **kwargs):
        if len(saved) == 5:
            raise OSError("disk full")
        saved.append(args[0])
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_image_folder(tmp_path / "data", 20, resolution=8)
    assert len(saved) == 5
    assert list(tmp_path.iterdir()) == []

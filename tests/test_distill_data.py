"""Training data: manifests, one-line errors with file:line, the latent/embedding cache."""

import json

import numpy as np
import pytest

from ane_diffusion.distill import DataError, DistillConfig
from ane_diffusion.distill.data import batch_indices, load_image, load_training_set, read_manifest, read_prompts
from ane_diffusion.testing import TINY_CORPUS, make_tiny_bundle


def write_images(folder, count=6):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return [f"{i}.png" for i in range(count)]


def write_jsonl(folder, rows):
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    import torch

    from ane_diffusion.bundle import resolve_bundle
    from ane_diffusion.torch_models import load_components

    path = make_tiny_bundle(tmp_path_factory.mktemp("data") / "teacher")
    bundle = resolve_bundle(path)
    torch.manual_seed(0)
    return bundle, load_components(bundle)


def test_jsonl_and_csv_manifests_parse(tmp_path):
    files = write_images(tmp_path / "a", 3)
    write_jsonl(tmp_path / "a", [{"file": f, "caption": c} for f, c in zip(files, TINY_CORPUS)])
    manifest, examples = read_manifest(tmp_path / "a")
    assert manifest.name == "manifest.jsonl"
    assert [e.caption for e in examples] == TINY_CORPUS[:3]
    write_images(tmp_path / "b", 2)
    (tmp_path / "b" / "manifest.csv").write_text('file,caption,extra\n0.png,"a cat, on a mat",x\n1.png,a dog,y\n')
    manifest, examples = read_manifest(tmp_path / "b")
    assert [e.caption for e in examples] == ["a cat, on a mat", "a dog"]
    assert examples[1].file == tmp_path / "b" / "1.png"


@pytest.mark.parametrize("name, text, where", [
    ("manifest.jsonl", '{"file": "0.png", "caption": "a"}\n{"file": "1.png", "caption": \n', "manifest.jsonl:2"),
    ("manifest.jsonl", '{"file": "0.png", "caption": "a"}\n\n{"file": "1.png"}\n', "manifest.jsonl:3"),
    ("manifest.jsonl", '{"file": "missing.png", "caption": "a"}\n', "manifest.jsonl:1"),
    ("manifest.jsonl", '{"file": "0.png", "caption": 3}\n', "manifest.jsonl:1"),
    ("manifest.csv", "file,caption\n0.png,a\n1.png\n", "manifest.csv:3"),
    ("manifest.csv", "path,text\n0.png,a\n", "manifest.csv:1"),
])
def test_malformed_rows_name_file_and_line(tmp_path, name, text, where):
    write_images(tmp_path, 2)
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=where) as info:
        read_manifest(tmp_path)
    assert "\n" not in str(info.value)


def test_bad_sources_are_one_line_errors(tmp_path):
    write_images(tmp_path, 1)
    write_jsonl(tmp_path, [{"file": "0.png", "caption": "a"}])
    (tmp_path / "manifest.csv").write_text("file,caption\n0.png,a\n")
    with pytest.raises(DataError, match="exactly one"):
        read_manifest(tmp_path)
    (tmp_path / "prompts.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="no prompts"):
        read_prompts(tmp_path / "prompts.txt")


def test_images_are_resized_and_centre_cropped(tmp_path):
    write_images(tmp_path, 1)
    pixels = load_image(tmp_path / "0.png", 16)
    assert pixels.shape == (3, 16, 16) and pixels.dtype == np.float32
    assert -1.0 <= pixels.min() and pixels.max() <= 1.0


def test_latent_cache_is_reused_without_vae_or_text_encoder_calls(tmp_path, teacher, monkeypatch):
    bundle, components = teacher
    files = write_images(tmp_path / "images", 5)
    write_jsonl(tmp_path / "images", [{"file": f, "caption": TINY_CORPUS[i % 2]} for i, f in enumerate(files)])
    cfg = DistillConfig(model="unused", output=str(tmp_path / "run"), data=str(tmp_path / "images"))
    first = load_training_set(cfg, bundle, components, tmp_path / "cache", "cpu")
    assert first.latents.shape == (5, 4, 8, 8) and first.embeddings.shape[0] == 2
    assert first.uncond.shape == (1, 77, 32)
    assert len(list((tmp_path / "cache").glob("images-*.safetensors"))) == 1

    def forbidden(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(components.vae, "encode", forbidden)
    monkeypatch.setattr(components.text_encoder, "forward", forbidden)
    second = load_training_set(cfg, bundle, components, tmp_path / "cache", "cpu")
    assert second.key == first.key
    assert (second.latents == first.latents).all() and (second.embeddings == first.embeddings).all()
    x0, cond, uncond = second.batch([4, 0])
    assert x0.shape == (2, 4, 8, 8) and cond.shape == uncond.shape == (2, 77, 32)


def test_prompt_samples_are_generated_once_and_cached(tmp_path, teacher, monkeypatch):
    bundle, components = teacher
    (tmp_path / "prompts.txt").write_text("\n".join(TINY_CORPUS[:2]) + "\n")
    cfg = DistillConfig(model="unused", output=str(tmp_path / "run"), prompts=str(tmp_path / "prompts.txt"),
                        sample_steps=2, samples_per_prompt=2, sample_w=2.0)
    first = load_training_set(cfg, bundle, components, tmp_path / "cache", "cpu")
    assert first.latents.shape == (4, 4, 8, 8) and first.caption_index.tolist() == [0, 0, 1, 1]
    assert not (first.latents[0] == first.latents[1]).all()  # different noise per sample
    monkeypatch.setattr(components.unet, "forward", lambda *a, **k: pytest.fail("sampled again"))
    assert (load_training_set(cfg, bundle, components, tmp_path / "cache", "cpu").latents == first.latents).all()


def test_batch_indices_are_epoch_permutations_and_deterministic():
    stream = batch_indices(7, seed=3, start=0, count=21)
    for epoch in range(3):
        assert sorted(stream[7 * epoch:7 * epoch + 7].tolist()) == list(range(7))
    assert (batch_indices(7, seed=3, start=5, count=4) == stream[5:9]).all()
    assert not (batch_indices(7, seed=4, start=0, count=7) == stream[:7]).all()

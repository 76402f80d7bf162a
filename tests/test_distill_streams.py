"""Streamed shards (webdataset, img2dataset's layout): shuffle, the split across processes, resume
in the middle of an epoch, the disk cache, bad samples refused or skipped, and a streamed stage-1
run that resumes exactly. The shards are written by the tests (a few dozen 16x16 JPEGs)."""

import json
import warnings

import numpy as np
import pytest
import torch

from ane_diffusion.bundle import resolve_bundle
from ane_diffusion.distill import DataError, DistillConfig, distill_guidance
from ane_diffusion.distill.data.cache import ShardEncoder
from ane_diffusion.distill.data.streams import StreamSet, list_shards
from ane_diffusion.testing.shards import write_shards
from ane_diffusion.torch_models import load_components

SHARDS, PER_SHARD = 4, 8
ALL_KEYS = {f"{s:05d}{i:04d}" for s in range(SHARDS) for i in range(PER_SHARD)}


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    bundle = resolve_bundle(tiny_teacher)
    return bundle, load_components(bundle)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, SHARDS, PER_SHARD)
    return folder


def encoder(teacher, cache, bad_data="refuse"):
    bundle, components = teacher
    return ShardEncoder(bundle, components, 16, "cpu", cache, bad_data)


def keys(stream, count):
    return [stream.next_sample()[2] for _ in range(count)]


def test_one_epoch_is_every_sample_once_shuffled(teacher, shards, tmp_path):
    stream = StreamSet(str(shards), encoder(teacher, tmp_path), seed=0, shuffle_buffer=8)
    first, second = keys(stream, 32), keys(stream, 32)
    assert set(first) == ALL_KEYS and len(first) == 32
    assert set(second) == ALL_KEYS and first != second  # a new order each epoch
    assert first != sorted(first)  # shuffled, not the shards' order
    assert stream.state() == {"epoch": 1, "offset": 32}  # epochs roll over when the next sample is asked for
    again = StreamSet(str(shards), encoder(teacher, tmp_path), seed=0, shuffle_buffer=8)
    assert keys(again, 32) == first  # a pure function of the seed (here read back from the cache)
    other_seed = StreamSet(str(shards), encoder(teacher, tmp_path), seed=1, shuffle_buffer=8)
    assert keys(other_seed, 32) != first


def test_processes_split_the_epoch_without_overlap(teacher, shards, tmp_path):
    for epoch in range(2):
        ranks = [StreamSet(str(shards), encoder(teacher, tmp_path), seed=3, rank=r, world=2, shuffle_buffer=4)
                 for r in range(2)]
        for stream in ranks:
            stream.load_state({"epoch": epoch, "offset": 0})
        seen = [keys(stream, 16) for stream in ranks]
        assert not set(seen[0]) & set(seen[1])
        assert set(seen[0]) | set(seen[1]) == ALL_KEYS
        assert all(stream.state() == {"epoch": epoch, "offset": 16} for stream in ranks)


def test_resume_in_the_middle_of_an_epoch_continues_the_stream(teacher, shards, tmp_path):
    stream = StreamSet(str(shards), encoder(teacher, tmp_path), seed=0, shuffle_buffer=8)
    keys(stream, 45)  # epoch 1, 13 samples in
    saved = dict(stream.state())
    expected = [stream.next_sample() for _ in range(30)]
    resumed = StreamSet(str(shards), encoder(teacher, tmp_path), seed=0, shuffle_buffer=8)
    resumed.load_state(saved)
    got = [resumed.next_sample() for _ in range(30)]
    assert saved == {"epoch": 1, "offset": 13}
    assert [k for _, _, k in got] == [k for _, _, k in expected]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, expected))


def test_streamed_tensors_equal_the_in_memory_encoding(teacher, shards, tmp_path):
    from ane_diffusion.distill.data import encode_texts, load_image

    bundle, components = teacher
    enc = encoder(teacher, tmp_path)
    (latents, embeddings, names), = list(enc.chunks(str(shards / "00001.tar")))
    assert names == [f"00001{i:04d}" for i in range(PER_SHARD)]
    import io
    import tarfile

    with tarfile.open(shards / "00001.tar") as tar:
        image = tar.extractfile(f"{names[2]}.jpg").read()
        caption = tar.extractfile(f"{names[2]}.txt").read().decode()
    pixels = torch.from_numpy(load_image(io.BytesIO(image), 16))[None]
    with torch.no_grad():
        latent = components.vae.encode(pixels).latent_dist.mean * bundle.scaling_factor
    torch.testing.assert_close(latents[2:3], latent, rtol=1e-5, atol=1e-6)
    expected = encode_texts(components.text_encoder, bundle.tokenizer(), [caption], "cpu")
    torch.testing.assert_close(embeddings[2:3], expected)
    cached, = [c for c in (tmp_path / f"stream-{enc.key}").iterdir()]
    assert (cached / "done.json").is_file() and (cached / "00000.safetensors").is_file()


@pytest.mark.parametrize("problem", ["corrupt", "no_caption"])
def test_bad_samples_are_refused_or_skipped_by_choice(teacher, tmp_path, problem):
    bad = "000010003"
    folder = tmp_path / "shards"
    write_shards(folder, 2, 6, **{problem: (bad,)}, json_captions=problem == "no_caption")
    shard = folder / "00001.tar"
    with pytest.raises(DataError) as refused:
        list(encoder(teacher, tmp_path / "a").chunks(str(shard)))
    assert str(shard) in str(refused.value) and f"sample {bad}" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1
    skip = encoder(teacher, tmp_path / "b", bad_data="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (_, _, names), = list(skip.chunks(str(shard)))
    assert bad not in names and len(names) == 5 and skip.skipped == 1
    assert any(bad in str(w.message) and str(shard) in str(w.message) for w in caught)


def test_shard_lists_and_unreadable_shards(tmp_path, teacher):
    folder = tmp_path / "shards"
    write_shards(folder, 3, 2)
    assert list_shards(str(folder)) == [str(folder / f"{i:05d}.tar") for i in range(3)]
    assert list_shards(str(folder / "{00000..00001}.tar")) == [str(folder / "00000.tar"), str(folder / "00001.tar")]
    with pytest.raises(DataError, match=r"00003.tar does not exist \(and 1 more\)"):
        list_shards(str(folder / "{00000..00004}.tar"))
    broken = tmp_path / "broken" / "00000.tar"
    broken.parent.mkdir()
    broken.write_bytes((folder / "00000.tar").read_bytes()[:700])
    with pytest.raises(DataError, match="00000.tar"):
        list(encoder(teacher, tmp_path / "c").chunks(str(broken)))
    with pytest.raises(DataError, match="cannot feed 4 processes"):
        StreamSet(str(folder), encoder(teacher, tmp_path / "c"), seed=0, world=4)


class Killed(Exception):
    pass


def test_streamed_lora_stage1_resumes_exactly(tmp_path, shards, monkeypatch):
    """Stream position, LoRA checkpoint (trainable tensors only) and EMA: resumed == uninterrupted."""
    from ane_diffusion.distill.engine import Engine
    from ane_diffusion.testing import make_tiny_bundle

    teacher = make_tiny_bundle(tmp_path / "teacher", prediction_type="v_prediction")

    def config(output, **extra):
        return DistillConfig(model=str(teacher), output=str(output), shards=str(shards), updates=7, batch_size=3,
                             lr=1e-3, checkpoint_every=3, w_min=0.0, w_max=4.0, guidance_embedding_dim=16,
                             shuffle_buffer=8, cache_dir=str(tmp_path / "cache"), progress=False, lora_rank=2,
                             ema_decay=0.9, **extra)

    straight = load_components(resolve_bundle(distill_guidance(config(tmp_path / "a")))).unet.state_dict()
    original = Engine._update

    def dying(self, model, optimizer, scheduler, loss_fn, data, phase, step):
        if step == 4:
            raise Killed
        return original(self, model, optimizer, scheduler, loss_fn, data, phase, step)

    monkeypatch.setattr(Engine, "_update", dying)
    with pytest.raises(Killed):
        distill_guidance(config(tmp_path / "b"))
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert state["meta"]["update"] == 3 and state["meta"]["stream"] == [{"epoch": 0, "offset": 9}]
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "b" / "checkpoint" / "student.safetensors"))
    assert saved and all("lora_" in k or "cond_proj" in k for k in saved)  # trainable tensors only
    monkeypatch.setattr(Engine, "_update", original)
    resumed = load_components(resolve_bundle(distill_guidance(config(tmp_path / "b", resume=True)))).unet.state_dict()
    assert all(torch.allclose(straight[k], resumed[k], rtol=0, atol=1e-6) for k in straight)
    card = resolve_bundle(tmp_path / "b" / "student").card
    assert card.training["data"]["kind"] == "shards" and card.training["data"]["shards"] == SHARDS
    assert np.isfinite(card.training["final_loss"])


def test_hugging_face_parquet_shards_stream_too(teacher, tmp_path):
    from ane_diffusion.testing.shards import write_parquet_shards

    write_parquet_shards(tmp_path / "hf", 2, 4, no_caption=("000010002",))
    with pytest.raises(DataError, match=r"train-00001-of-00002.parquet: sample 000010002: no caption"):
        keys(StreamSet(str(tmp_path / "hf"), encoder(teacher, tmp_path / "a"), seed=0), 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stream = StreamSet(str(tmp_path / "hf"), encoder(teacher, tmp_path / "b", bad_data="skip"), seed=0)
        seen = keys(stream, 7)
    assert sorted(seen) == sorted({f"{s:05d}{i:04d}" for s in range(2) for i in range(4)} - {"000010002"})

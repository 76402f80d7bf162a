"""The pure-Python CLIP tokenizer against transformers' CLIPTokenizer, on a vocabulary we build."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ane_diffusion.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    MAX_LENGTH,
    CLIPTokenizer,
    PromptTooLongError,
    build_clip_vocab,
    bytes_to_unicode,
    write_tokenizer_files,
)

CORPUS = [
    "a small red circle at the top left on a blue background",
    "a large green square in the center of a white background",
    "two yellow triangles at the bottom right on a black background",
    "a photo of a cat sitting on a wooden table",
    "a photo of a dog running on the beach at sunset",
    "a watercolor painting of a mountain lake in the morning",
    "an oil painting of a ship on a stormy sea",
    "a close up photo of a red rose with water drops",
    "a blue car parked in front of a brick house",
    "a bowl of fresh fruit on a kitchen counter",
    "three purple stars in the sky above a small town",
    "a portrait of an old man with a white beard",
    "a city street at night with neon lights and rain",
    "a forest path covered with orange autumn leaves",
    "a small boat on a calm river under a bridge",
    "a cup of coffee next to an open book",
    "a snowy mountain peak under a clear blue sky",
    "a red circle and a blue square side by side",
    "a green triangle inside a yellow circle",
    "a black and white photo of a lighthouse",
    "a pixel art drawing of a castle on a hill",
    "a bird sitting on a branch in the spring",
    "a plate of pasta with tomato sauce and basil",
    "an astronaut riding a horse on the moon",
    "a sketch of a robot holding a flower",
    "a colorful hot air balloon over green fields",
    "a quiet library with tall wooden shelves",
    "a child flying a kite on a windy day",
    "a glass of orange juice on a sunny window sill",
    "the top left corner is red and the bottom right corner is blue",
]

PROMPTS = [
    "a small red circle at the top left on a blue background",
    "an astronaut riding a horse on the moon",
    "a zebra eating quinoa in Reykjavik",  # words not in the corpus: sub-word and byte pieces
    "Hello, world! (really?) -- yes: 100% #1 @home",
    "4k 8K 1920x1080 3.14159 2024-01-31",
    "A PHOTO Of A Cat, In MiXeD CaSe",
    "   lots \t of\n\nwhite   space\u00a0and\u3000more   ",
    "",
    "it's a dog's life, isn't it? they're, we've, I'm, you'll, he'd",
    "IT'S LOUD'S 'quoted' ''s !'s",
    "café crème brûlée, naïve résumé",
    "cafe\u0301 (decomposed accent)",
    "a cat 🐱 and a rocket 🚀 👩‍🚀",
    "日本語のテキスト and русский текст and العربية",
    "ΟΔΟΣ Σ İstanbul straße ½ ² ١٢٣",
    "control\x1cchars\x00and\u200bzero width",
    "a cat<|endoftext|>a dog <|startoftext|> x",
    "<|ENDOFTEXT|>! <|endoftext|>!",
]

LONG_PROMPT = " ".join(CORPUS[i % len(CORPUS)].split()[i % 5] for i in range(100)) + " and a zebra"


@pytest.fixture(scope="module")
def built():
    return build_clip_vocab(CORPUS)


@pytest.fixture(scope="module")
def folder(built, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip_tokenizer")
    write_tokenizer_files(path, *built)
    return path


@pytest.fixture(scope="module")
def ours(folder):
    return CLIPTokenizer.from_folder(folder)


@pytest.fixture(scope="module")
def theirs(folder):
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPTokenizer.from_pretrained(str(folder))


def reference_ids(tokenizer, text, **kwargs):
    return tokenizer(text, padding="max_length", max_length=MAX_LENGTH, **kwargs)["input_ids"]


# --- the builder --------------------------------------------------------------------------------


def test_vocab_has_clip_layout(built):
    vocab, merges = built
    base = list(bytes_to_unicode().values())
    ids = sorted(vocab.values())
    assert ids == list(range(len(vocab)))
    tokens = sorted(vocab, key=vocab.get)
    assert tokens[:256] == base
    assert tokens[256:512] == [symbol + "</w>" for symbol in base]
    assert tokens[-2:] == [BOS_TOKEN, EOS_TOKEN]
    assert vocab["a</w>"] == 320  # the same id as in openai/clip-vit-large-patch14
    assert all(left + right in vocab for left, right in merges)


def test_every_corpus_word_is_one_token(ours):
    for caption in CORPUS:
        assert ours.count_tokens(caption) == len(caption.split()) + 2


def test_builder_is_deterministic(built):
    assert build_clip_vocab(CORPUS) == built
    assert build_clip_vocab(list(reversed(CORPUS))) == built


def test_num_merges_limits_the_vocabulary(built):
    vocab, merges = build_clip_vocab(CORPUS, num_merges=10)
    assert merges == built[1][:10]
    assert len(vocab) == 512 + 10 + 2


def test_merges_file_format(folder, built):
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    assert [tuple(line.split(" ")) for line in lines[1:]] == built[1]


# --- our tokenizer on its own -------------------------------------------------------------------


def test_encode_layout(ours):
    ids = ours.encode("a red circle")
    assert len(ids) == MAX_LENGTH
    assert ids[:5] == [ours.bos_id, ours.vocab["a</w>"], ours.vocab["red</w>"], ours.vocab["circle</w>"], ours.eos_id]
    assert ids[5:] == [ours.pad_id] * (MAX_LENGTH - 5)
    assert ours.encode("") == [ours.bos_id] + [ours.eos_id] * (MAX_LENGTH - 1)


def test_too_long_prompt_raises(ours):
    count = ours.count_tokens(LONG_PROMPT)
    assert count > MAX_LENGTH
    with pytest.raises(PromptTooLongError, match=f"^prompt is {count} tokens, the text encoder takes at most 77"):
        ours.encode(LONG_PROMPT)
    truncated = ours.encode(LONG_PROMPT, truncate=True)
    assert len(truncated) == MAX_LENGTH and truncated[-1] == ours.eos_id
    assert ours.encode(" ".join(["red"] * 75)) == ours.encode(" ".join(["red"] * 75), truncate=True)


def test_encode_batch(ours):
    batch = ours.encode_batch(PROMPTS[:3])
    assert batch.shape == (3, MAX_LENGTH) and batch.dtype == np.int32
    assert batch[1].tolist() == ours.encode(PROMPTS[1])
    assert ours.encode_batch([]).shape == (0, MAX_LENGTH)


def test_pad_token_from_argument(folder):
    tokenizer = CLIPTokenizer.from_folder(folder, pad_token="!")
    assert tokenizer.encode("a")[3:] == [0] * (MAX_LENGTH - 3)


def test_decode(ours):
    assert ours.decode(ours.encode("A Café, at NIGHT!"), skip_special_tokens=True) == "a café , at night !"


def test_save_round_trip(ours, built, tmp_path):
    ours.save(tmp_path)
    reloaded = CLIPTokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert (reloaded.vocab, reloaded.merges) == built
    for prompt in PROMPTS:
        assert reloaded.encode(prompt, truncate=True) == ours.encode(prompt, truncate=True)
    from_text = CLIPTokenizer.from_strings(
        (tmp_path / "vocab.json").read_text(encoding="utf-8"), (tmp_path / "merges.txt").read_text(encoding="utf-8")
    )
    assert (from_text.vocab, from_text.merges) == built


def test_pad_token_from_folder_config(ours, tmp_path):
    ours.save(tmp_path)
    config_path = tmp_path / "special_tokens_map.json"
    config = json.loads(config_path.read_text())
    config["pad_token"] = {"content": "!", "lstrip": False}
    config_path.write_text(json.dumps(config))
    assert CLIPTokenizer.from_folder(tmp_path).pad_token == "!"


# --- against transformers -----------------------------------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS)
def test_same_ids_as_transformers(ours, theirs, prompt):
    expected = reference_ids(theirs, prompt, truncation=False)
    assert ours.encode(prompt) == expected
    assert ours.count_tokens(prompt) == len(theirs(prompt)["input_ids"])


def test_same_truncation_as_transformers(ours, theirs):
    assert ours.encode(LONG_PROMPT, truncate=True) == reference_ids(theirs, LONG_PROMPT, truncation=True)


def test_same_decode_as_transformers(ours, theirs):
    for prompt in PROMPTS[:6]:
        ids = ours.encode(prompt)
        assert ours.decode(ids) == theirs.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)


def test_same_ids_as_transformers_with_exclamation_pad(folder, tmp_path):
    """Stable Diffusion 2's tokenizer pads with "!", which then is a special token in prompts too."""
    transformers = pytest.importorskip("transformers")
    theirs = transformers.CLIPTokenizer.from_pretrained(str(folder), pad_token="!")
    ours = CLIPTokenizer.from_folder(folder, pad_token="!")
    for prompt in ["hello! world!!", "a red circle", ""]:
        assert ours.encode(prompt) == reference_ids(theirs, prompt, truncation=False)


def test_transformers_loads_saved_files(ours, tmp_path):
    transformers = pytest.importorskip("transformers")
    ours.save(tmp_path)
    theirs = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
    assert theirs.model_max_length == MAX_LENGTH
    assert (theirs.bos_token, theirs.eos_token, theirs.pad_token) == (BOS_TOKEN, EOS_TOKEN, EOS_TOKEN)
    assert ours.encode(PROMPTS[2]) == reference_ids(theirs, PROMPTS[2], truncation=False)

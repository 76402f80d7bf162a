"""The CLIP BPE vocabulary of Stable Diffusion 1.x and 2.x, shipped as text (no hub needed).

SD 1.x's text encoder (OpenAI CLIP ViT-L/14) and SD 2.x's (OpenCLIP ViT-H/14) share one byte-level
BPE: 48,894 merges, 49,408 tokens. The package ships the merges in ``merges.txt`` form, derived
from the MIT-licensed ``bpe_simple_vocab_16e6.txt.gz`` by ``scripts/derive_clip_bpe.py`` (source
and checksum in ``assets/single_file/README.md``); the vocabulary follows from the merges by CLIP's
own rule (:func:`vocab_from_merges`), so ``vocab.json`` need not be shipped.

The two families differ in padding only: SD 1.x pads prompts with ``<|endoftext|>``, SD 2.x with
``!`` (id 0), as their tokenizer configs say.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ..tokenizer import BOS_TOKEN, END_OF_WORD, EOS_TOKEN, bytes_to_unicode, parse_merges

MERGES_PATH = Path(__file__).resolve().parent.parent / "assets" / "single_file" / "clip" / "merges.txt"
PAD_TOKENS = {"clip": EOS_TOKEN, "openclip": "!"}
"""Padding token of SD 1.x (OpenAI CLIP) and SD 2.x (OpenCLIP) prompts."""


def vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary: the 256 byte symbols, the same with ``</w>``, one token per merge in
    merge order, then ``<|startoftext|>`` and ``<|endoftext|>`` (CLIP's ``simple_tokenizer``)."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}


@lru_cache(maxsize=1)
def clip_tokenizer_texts() -> tuple[str, str]:
    """``(vocab_json, merges_txt)`` texts of the SD 1.x / 2.x tokenizer."""
    merges_text = MERGES_PATH.read_text(encoding="utf-8")
    return json.dumps(vocab_from_merges(parse_merges(merges_text)), ensure_ascii=False), merges_text


def tokenizer_files(text_encoder_kind: str) -> dict:
    """The bundle's ``tokenizer_files`` for a ``clip`` (SD 1.x) or ``openclip`` (SD 2.x) text encoder."""
    vocab, merges = clip_tokenizer_texts()
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN,
               "pad_token": PAD_TOKENS[text_encoder_kind]}
    return {"vocab.json": vocab, "merges.txt": merges, "special_tokens_map.json": json.dumps(special)}

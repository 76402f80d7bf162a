"""CLIP's byte-level BPE tokenizer in pure Python, and a builder for small CLIP-style vocabularies.

The runtime must turn a prompt into the 77 token ids the CLIP text encoder expects without
importing ``transformers`` or ``tokenizers``. :class:`CLIPTokenizer` reads the same
``vocab.json`` / ``merges.txt`` pair as ``transformers.CLIPTokenizer`` and gives the same ids as
``tokenizer(text, padding="max_length", max_length=77)["input_ids"]``. The pipeline it reproduces
is transformers 5's ``CLIPTokenizer`` (transformers 4's ``CLIPTokenizerFast`` differs only on
special tokens typed in another case, like ``<|ENDOFTEXT|>``):

1. special tokens (``<|startoftext|>``, ``<|endoftext|>``, and the unk and pad tokens) written
   literally in the prompt are cut out first and become their own ids;
2. the rest is normalised: Unicode NFC, every run of whitespace becomes one space, lowercase;
3. it is split into words: contractions (``'s``, ``'t``, ...), runs of letters, single digits
   and runs of other non-space characters; whitespace is dropped;
4. each word is written as bytes, each byte as one printable character (GPT-2's
   ``bytes_to_unicode``), ``</w>`` is glued to the last one, and BPE merges are applied.

:func:`build_clip_vocab` trains such a BPE on a caption corpus, so that tests and toy models get
a real CLIP-format tokenizer without downloading one; :func:`write_tokenizer_files` writes it in
a form both this module and ``transformers.CLIPTokenizer.from_pretrained`` load.

Character classes come from Python's ``unicodedata``; characters assigned in Unicode versions
newer than the interpreter's (Python 3.11: Unicode 14) may be split differently than transformers
splits them.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

MAX_LENGTH = 77
"""Context length of the CLIP text encoder, start and end tokens included."""

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
"""Suffix CLIP glues to the last symbol of every word."""

MERGES_HEADER = "#version: 0.2"
"""First line of CLIP's merges.txt."""

PathLike = str | os.PathLike

# Characters with the Unicode White_Space property: what the regex engine behind transformers'
# tokenizer (Oniguruma) means by \s. Python's str.isspace() also counts U+001C..U+001F, so it
# cannot be used.
_WHITE_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WHITE_SPACE_RUN = re.compile("[" + re.escape("".join(sorted(_WHITE_SPACE))) + "]+")

_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


class PromptTooLongError(ValueError):
    """The prompt has more tokens than the text encoder takes (and truncation was not asked for)."""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the others (controls, space, ...) map to
    ``chr(256 + k)``, so that no token contains whitespace or control characters. The dict's
    order is CLIP's vocabulary order for the 256 base symbols.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable}
    mapping.update({b: chr(256 + k) for k, b in enumerate(others)})
    return mapping


def normalize(text: str) -> str:
    """CLIP's text normalisation: NFC, whitespace runs to one space, per-character lowercase.

    Lowercasing is per character (``"Σ"`` is always ``"σ"``), as transformers does; Python's
    ``str.lower`` would use the final-sigma rule instead.
    """
    text = unicodedata.normalize("NFC", text)
    text = _WHITE_SPACE_RUN.sub(" ", text)
    return "".join(char.lower() for char in text)


def _is_letter(char: str) -> bool:
    """``\\p{L}``: ``str.isalpha`` is exactly the general categories Lu, Ll, Lt, Lm, Lo."""
    return char.isalpha()


def _is_number(char: str) -> bool:
    """``\\p{N}``: general categories Nd, Nl, No (``str.isnumeric`` would also take CJK numerals)."""
    return unicodedata.category(char)[0] == "N"


def _is_other(char: str) -> bool:
    """``[^\\s\\p{L}\\p{N}]``: punctuation, symbols, marks, controls."""
    return not (char in _WHITE_SPACE or _is_letter(char) or _is_number(char))


def pre_tokenize(text: str) -> list[str]:
    """Split normalised text into words, as CLIP's pre-tokenizer does.

    CLIP finds all matches of ``<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|
    \\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+`` (the ``regex`` module's syntax; the stdlib ``re`` has no
    ``\\p{...}``), so this is a scanner that tries the same alternatives, in the same order, at
    each position. transformers then re-splits every word with GPT-2's pattern, which only
    changes a literal ``<|endoftext|>``/``<|startoftext|>`` word: it becomes ``<|``, the name, ``|>``.
    """
    words: list[str] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char in _WHITE_SPACE:
            position += 1
            continue
        word = _match_at(text, position)
        if word in (BOS_TOKEN, EOS_TOKEN):
            words += ["<|", word[2:-2], "|>"]
        else:
            words.append(word)
        position += len(word)
    return words


def _match_at(text: str, position: int) -> str:
    """The word CLIP's pattern matches at ``position`` (which holds a non-space character)."""
    for literal in (BOS_TOKEN, EOS_TOKEN, *_CONTRACTIONS):
        if text.startswith(literal, position):
            return literal
    char = text[position]
    if _is_number(char):
        return char
    same_class = _is_letter if _is_letter(char) else _is_other
    end = position + 1
    while end < len(text) and same_class(text[end]):
        end += 1
    return text[position:end]


def _word_symbols(word: str) -> tuple[str, ...]:
    """A word's initial BPE symbols: one per UTF-8 byte, ``</w>`` glued to the last one."""
    byte_chars = bytes_to_unicode()
    symbols = [byte_chars[b] for b in word.encode("utf-8")]
    symbols[-1] += END_OF_WORD
    return tuple(symbols)


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every occurrence of ``pair`` in ``symbols``, left to right, by the joined symbol."""
    merged: list[str] = []
    index = 0
    while index < len(symbols):
        if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
            merged.append(pair[0] + pair[1])
            index += 2
        else:
            merged.append(symbols[index])
            index += 1
    return tuple(merged)


def _apply_merges(symbols: tuple[str, ...], ranks: Mapping[tuple[str, str], int]) -> tuple[str, ...]:
    """BPE: repeatedly merge the adjacent pair that was learned first, until none is mergeable."""
    while len(symbols) > 1:
        pairs = set(zip(symbols, symbols[1:]))
        best = min(pairs, key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            break
        symbols = _merge_pair(symbols, best)
    return symbols


class CLIPTokenizer:
    """CLIP's tokenizer: prompt text to the fixed-length id sequence the text encoder takes.

    Args:
        vocab: token string to id, as in CLIP's ``vocab.json``.
        merges: BPE merges, highest priority first, as in CLIP's ``merges.txt``.
        bos_token, eos_token, unk_token: CLIP's start, end and unknown tokens.
        pad_token: the token that fills a prompt up to 77 ids; ``None`` means ``eos_token``
            (Stable Diffusion 1.x). Stable Diffusion 2.x uses ``"!"``.
    """

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        bos_token: str = BOS_TOKEN,
        eos_token: str = EOS_TOKEN,
        unk_token: str = EOS_TOKEN,
        pad_token: str | None = None,
    ):
        self.vocab = dict(vocab)
        self.merges = [tuple(merge) for merge in merges]
        self.bos_token, self.eos_token, self.unk_token = bos_token, eos_token, unk_token
        self.pad_token = eos_token if pad_token is None else pad_token
        self.special_tokens = tuple(dict.fromkeys((bos_token, eos_token, unk_token, self.pad_token)))
        missing = [token for token in self.special_tokens if token not in self.vocab]
        if missing:
            raise ValueError(f"special tokens missing from the vocabulary: {missing}")
        self._ranks = {merge: rank for rank, merge in enumerate(self.merges)}
        self._id_to_token = {index: token for token, index in self.vocab.items()}
        self._byte_of_char = {char: byte for byte, char in bytes_to_unicode().items()}
        # Longest first, so that the alternation picks the longest special token at a position.
        self._special_pattern = re.compile(
            "|".join(re.escape(token) for token in sorted(self.special_tokens, key=len, reverse=True))
        )
        self._word_ids: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_strings(cls, vocab_json: str, merges_txt: str, *, pad_token: str | None = None) -> "CLIPTokenizer":
        """Build from the texts of CLIP's ``vocab.json`` and ``merges.txt`` (e.g. kept in a bundle)."""
        return cls(json.loads(vocab_json), parse_merges(merges_txt), pad_token=pad_token)

    @classmethod
    def from_files(
        cls, vocab_json_path: PathLike, merges_txt_path: PathLike, *, pad_token: str | None = None
    ) -> "CLIPTokenizer":
        """Load CLIP's ``vocab.json`` and ``merges.txt``."""
        return cls.from_strings(
            Path(vocab_json_path).read_text(encoding="utf-8"),
            Path(merges_txt_path).read_text(encoding="utf-8"),
            pad_token=pad_token,
        )

    @classmethod
    def from_folder(cls, folder: PathLike, *, pad_token: str | None = None) -> "CLIPTokenizer":
        """Load a tokenizer folder as saved by transformers (or :meth:`save`).

        Special tokens come from ``tokenizer_config.json`` / ``special_tokens_map.json`` when the
        folder has them; an explicit ``pad_token`` wins over the files.
        """
        folder = Path(folder)
        special = _read_special_tokens(folder)
        if pad_token is not None:
            special["pad_token"] = pad_token
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        return cls(vocab, parse_merges((folder / "merges.txt").read_text(encoding="utf-8")), **special)

    def save(self, folder: PathLike) -> None:
        """Write vocab.json, merges.txt and the transformers config files into ``folder``."""
        write_tokenizer_files(
            folder,
            self.vocab,
            self.merges,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            unk_token=self.unk_token,
            pad_token=self.pad_token,
        )

    @property
    def bos_id(self) -> int:
        return self.vocab[self.bos_token]

    @property
    def eos_id(self) -> int:
        return self.vocab[self.eos_token]

    @property
    def pad_id(self) -> int:
        return self.vocab[self.pad_token]

    def encode(self, text: str, *, max_length: int = MAX_LENGTH, truncate: bool = False) -> list[int]:
        """``max_length`` ids: start token, the prompt's tokens, end token, then padding.

        Raises :class:`PromptTooLongError` when the prompt does not fit, unless ``truncate``,
        which drops the prompt's last tokens and keeps the end token.
        """
        if max_length < 2:
            raise ValueError(f"max_length must leave room for the start and end tokens, got {max_length}")
        ids = [self.bos_id, *self._text_ids(text), self.eos_id]
        if len(ids) > max_length:
            if not truncate:
                raise PromptTooLongError(
                    f"prompt is {len(ids)} tokens, the text encoder takes at most {max_length} "
                    "(including start and end tokens)"
                )
            ids = ids[: max_length - 1] + [self.eos_id]
        return ids + [self.pad_id] * (max_length - len(ids))

    def encode_batch(
        self, texts: Iterable[str], *, max_length: int = MAX_LENGTH, truncate: bool = False
    ) -> np.ndarray:
        """:meth:`encode` for several prompts: an ``(N, max_length)`` int32 array."""
        rows = [self.encode(text, max_length=max_length, truncate=truncate) for text in texts]
        return np.array(rows, dtype=np.int32).reshape(len(rows), max_length)

    def count_tokens(self, text: str) -> int:
        """Number of ids the prompt takes, start and end tokens included, padding not."""
        return len(self._text_ids(text)) + 2

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids, as transformers decodes it (words separated by spaces)."""
        ids = [int(index) for index in ids]
        if skip_special_tokens:
            special_ids = {self.vocab[token] for token in self.special_tokens}
            ids = [index for index in ids if index not in special_ids]
        chars = "".join(self._id_to_token[index] for index in ids)
        # Special tokens and "</w>" are printable ASCII, which the byte map leaves unchanged.
        raw = bytes(self._byte_of_char[char] for char in chars)
        return raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()

    def _text_ids(self, text: str) -> list[int]:
        """The prompt's ids without start, end and padding tokens."""
        ids: list[int] = []
        position = 0
        for match in self._special_pattern.finditer(text):
            ids += self._plain_text_ids(text[position : match.start()])
            ids.append(self.vocab[match.group()])
            position = match.end()
        ids += self._plain_text_ids(text[position:])
        return ids

    def _plain_text_ids(self, text: str) -> list[int]:
        """Ids of text that holds no special token."""
        ids: list[int] = []
        for word in pre_tokenize(normalize(text)):
            ids += self._word_to_ids(word)
        return ids

    def _word_to_ids(self, word: str) -> tuple[int, ...]:
        """BPE ids of one word, cached: prompts repeat words a lot."""
        cached = self._word_ids.get(word)
        if cached is None:
            unk_id = self.vocab[self.unk_token]
            symbols = _apply_merges(_word_symbols(word), self._ranks)
            cached = tuple(self.vocab.get(symbol, unk_id) for symbol in symbols)
            self._word_ids[word] = cached
        return cached


def parse_merges(merges_txt: str) -> list[tuple[str, str]]:
    """Merges in the text of a CLIP ``merges.txt``: a ``#version`` line, then one ``"left right"``
    pair a line."""
    merges = []
    for line in merges_txt.splitlines():
        if not line or line.startswith("#version"):
            continue
        left, right = line.split(" ")
        merges.append((left, right))
    return merges


def _read_special_tokens(folder: Path) -> dict[str, str]:
    """bos/eos/unk/pad tokens named in a transformers tokenizer folder's config files.

    ``special_tokens_map.json`` is read after ``tokenizer_config.json``, so it wins. Tokens may be
    plain strings or ``{"content": ...}`` objects.
    """
    special: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                special[key] = value
    return special


def build_clip_vocab(
    corpus: Iterable[str], num_merges: int | None = None
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a CLIP-style byte-level BPE vocabulary on a (small) caption corpus.

    The vocabulary has CLIP's layout: the 256 byte symbols, the same with ``</w>``, one token per
    learned merge, then ``<|startoftext|>`` and ``<|endoftext|>``. Merges are learned greedily:
    the most frequent adjacent pair over the corpus's words, ties broken by the smallest pair in
    lexical order, until every word is one token or ``num_merges`` merges are learned. Words are
    split exactly as :class:`CLIPTokenizer` splits prompts, so every corpus word then encodes to
    a single token. The result depends only on the corpus (as a multiset of words).

    Each merge recounts all pairs, which is fine for the few thousand captions this is meant for.
    """
    word_counts = Counter(word for text in corpus for word in pre_tokenize(normalize(text)))
    segmentations = Counter()
    for word, count in word_counts.items():
        segmentations[_word_symbols(word)] += count

    base = list(bytes_to_unicode().values())
    tokens = base + [symbol + END_OF_WORD for symbol in base]
    merges: list[tuple[str, str]] = []
    while num_merges is None or len(merges) < num_merges:
        pair_counts = _count_pairs(segmentations)
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merges.append(best)
        tokens.append(best[0] + best[1])
        merged = Counter()
        for symbols, count in segmentations.items():
            merged[_merge_pair(symbols, best)] += count
        segmentations = merged

    # Two merges can spell the same token ("a"+"bc", "ab"+"c"): keep its first id.
    ordered = list(dict.fromkeys(tokens + [BOS_TOKEN, EOS_TOKEN]))
    return {token: index for index, token in enumerate(ordered)}, merges


def _count_pairs(segmentations: Mapping[tuple[str, ...], int]) -> Counter:
    """Corpus frequency of every adjacent symbol pair."""
    pairs: Counter = Counter()
    for symbols, count in segmentations.items():
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] += count
    return pairs


def write_tokenizer_files(
    folder: PathLike,
    vocab: Mapping[str, int],
    merges: Sequence[tuple[str, str]],
    *,
    bos_token: str = BOS_TOKEN,
    eos_token: str = EOS_TOKEN,
    unk_token: str = EOS_TOKEN,
    pad_token: str = EOS_TOKEN,
) -> None:
    """Write a tokenizer folder that :meth:`CLIPTokenizer.from_folder` and, offline,
    ``transformers.CLIPTokenizer.from_pretrained`` load: vocab.json, merges.txt,
    tokenizer_config.json and special_tokens_map.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(dict(vocab), ensure_ascii=False), encoding="utf-8")
    merge_lines = [MERGES_HEADER] + [f"{left} {right}" for left, right in merges]
    (folder / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    special = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token, "pad_token": pad_token}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, **special}
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")

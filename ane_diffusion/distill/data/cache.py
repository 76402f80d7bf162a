"""Encoding shards (webdataset tars, or Hugging Face ``datasets`` parquet files) into training
tensors, chunk by chunk, with a disk cache (never the whole set in RAM).

:class:`ShardEncoder` turns one webdataset shard into chunks of at most :data:`CHUNK` samples:
``(latents (n, C, h, w), embeddings (n, 77, D))`` float32 on the CPU -- VAE posterior means x the
scaling factor, text-encoder hidden states of the (77-token cut) captions, exactly as the
in-memory path computes them (:func:`~ane_diffusion.distill.data.encode_texts`,
:func:`~ane_diffusion.distill.data.load_image`). Each chunk is written to
``CACHE/stream-KEY/SHARD-HASH/NNNNN.safetensors`` and a ``done.json`` marker once the whole shard
is encoded; the next epoch (or a resumed run) reads the chunks back instead of decoding images.
KEY hashes the encoders' weights, the resolution and the format; SHARD-HASH the shard's path,
size and modification time.

Bad samples -- an image that does not decode, no caption (``.txt``, or ``.json`` with a string
``"caption"``), no image -- raise :class:`~ane_diffusion.distill.data.DataError` naming the shard
and the sample's key (``bad_data="refuse"``, the default), or are skipped with a warning that names
them (``bad_data="skip"``). A tar file that cannot be read is always refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from . import CACHE_FORMAT, ENCODE_BATCH, DataError, cache_key, encode_texts, load_image, module_fingerprint

CHUNK = 256
"""Samples per cache file (about 80 MB at SD 1.5's size)."""
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
BAD_DATA = ("refuse", "skip")
DONE = "done.json"


def sample_caption(sample: dict):
    """The caption of a webdataset sample: ``.txt``, else ``.json``'s ``"caption"``; None if absent."""
    if isinstance(sample.get("txt"), bytes):
        return sample["txt"].decode("utf-8").strip()
    if isinstance(sample.get("json"), bytes):
        try:
            caption = json.loads(sample["json"]).get("caption")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            return None
        return caption.strip() if isinstance(caption, str) else None
    return None


def decode_sample(sample: dict, size: int) -> tuple[np.ndarray, str, str]:
    """``(pixels (3, size, size) float32 in [-1, 1], caption, key)``; raises DataError naming shard
    and key."""
    where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
    caption = sample_caption(sample)
    if caption is None:
        raise DataError(f"{where}: no caption (.txt, or .json with a 'caption' string)")
    data = next((sample[ext] for ext in IMAGE_EXTENSIONS if isinstance(sample.get(ext), bytes)), None)
    if data is None:
        raise DataError(f"{where}: no image ({', '.join('.' + e for e in IMAGE_EXTENSIONS)})")
    try:
        return load_image(io.BytesIO(data), size), caption, str(sample.get("__key__"))
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError... for broken files
        raise DataError(f"{where}: cannot decode the image ({type(exc).__name__}: {exc})") from None


CAPTION_COLUMNS = ("text", "caption")
"""Caption columns of a Hugging Face datasets parquet shard (the first present is used)."""


def _parquet_samples(shard: str) -> Iterator[dict]:
    """Rows of a Hugging Face ``datasets`` parquet shard (an ``image`` column of {bytes, path} and a
    ``text`` or ``caption`` column), read with ``datasets`` (streaming), as webdataset-style samples."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{shard}: parquet shards need the datasets package: pip install datasets") from None

    try:
        rows = datasets.load_dataset("parquet", data_files=[shard], split="train", streaming=True)
        columns = rows.features or {}
        if "image" in columns:
            rows = rows.cast_column("image", datasets.Image(decode=False))
        for index, row in enumerate(rows):
            sample = {"__key__": str(row.get("key", f"{index:09d}")), "__url__": shard}
            image = row.get("image")
            if isinstance(image, dict) and isinstance(image.get("bytes"), bytes):
                sample["jpg"] = image["bytes"]  # PIL reads the format from the bytes
            elif isinstance(image, dict) and image.get("path") and Path(image["path"]).is_file():
                sample["jpg"] = Path(image["path"]).read_bytes()  # rows that point at local files
            caption = next((row[c] for c in CAPTION_COLUMNS if isinstance(row.get(c), str)), None)
            if caption is not None:
                sample["txt"] = caption.encode("utf-8")
            yield sample
    except DataError:
        raise
    except Exception as exc:  # pyarrow / datasets errors for unreadable files
        raise DataError(f"{shard}: not a readable parquet shard ({type(exc).__name__}: {exc})") from None


def _raw_samples(shard: str) -> Iterator[dict]:
    import webdataset as wds

    if shard.endswith(".parquet"):
        return _parquet_samples(shard)

    def refuse(exc):
        raise DataError(f"{shard}: not a readable tar shard ({type(exc).__name__}: {exc})") from None

    pipeline = wds.DataPipeline(wds.SimpleShardList([shard]), wds.tarfile_to_samples(handler=refuse))
    return iter(pipeline)


class ShardEncoder:
    """Encodes shards with a bundle's VAE and text encoder (float32, on ``device``); see the module."""

    def __init__(self, bundle, components, size: int, device, cache_dir: Path, bad_data: str = "refuse",
                 write_cache: bool = True):
        import torch

        if bad_data not in BAD_DATA:
            raise ValueError(f"--bad-data must be one of {BAD_DATA}, got {bad_data!r}")
        self.vae, self.text_encoder = components.vae, components.text_encoder
        self.tokenizer, self.size, self.device = bundle.tokenizer(), size, device
        self.scaling_factor, self.bad_data, self.write_cache = bundle.scaling_factor, bad_data, write_cache
        self.key = cache_key({"kind": "stream", "size": size, "format": CACHE_FORMAT,
                              "weights": module_fingerprint(components.vae, components.text_encoder)})
        self.root = Path(cache_dir) / f"stream-{self.key}"
        self.uncond = encode_texts(self.text_encoder, self.tokenizer, [""], device)[0]
        self.skipped = 0
        self._torch = torch

    def shard_dir(self, shard: str) -> Path:
        stat = Path(shard).stat()
        digest = hashlib.sha256(f"{Path(shard).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
        return self.root / f"{Path(shard).stem}-{digest[:16]}"

    def chunks(self, shard: str) -> Iterator[tuple]:
        """The shard's encoded chunks ``(latents (n, C, h, w), embeddings (n, 77, D), keys (n,))``,
        n <= CHUNK, in the shard's order (bad samples refused or left out)."""
        folder = self.shard_dir(shard)
        done = folder / DONE
        if done.is_file():
            yield from self._cached(folder, json.loads(done.read_text()))
            return
        count, skipped = 0, 0
        pending = []
        for sample in _raw_samples(shard):
            try:
                pending.append(decode_sample(sample, self.size))
            except DataError as exc:
                if self.bad_data == "refuse":
                    raise
                warnings.warn(f"skipping bad sample: {exc}", stacklevel=2)
                skipped += 1
                continue
            if len(pending) == CHUNK:
                yield self._encode(pending, folder, count)
                count, pending = count + 1, []
        if pending:
            yield self._encode(pending, folder, count)
            count += 1
        self.skipped += skipped
        if self.write_cache:
            from ...atomic import atomic_file

            folder.mkdir(parents=True, exist_ok=True)
            with atomic_file(done) as tmp:
                tmp.write_text(json.dumps({"chunks": count, "skipped": skipped, "shard": str(shard)}))

    def _encode(self, pending: list, folder: Path, index: int) -> tuple:
        torch = self._torch
        pixels = np.stack([p for p, _, _ in pending])
        keys = [k for _, _, k in pending]
        latents = []
        for start in range(0, len(pixels), ENCODE_BATCH):
            batch = torch.from_numpy(pixels[start:start + ENCODE_BATCH]).to(self.device)
            with torch.no_grad():
                latents.append((self.vae.encode(batch).latent_dist.mean * self.scaling_factor).float().cpu())
        latents = torch.cat(latents)
        embeddings = encode_texts(self.text_encoder, self.tokenizer, [c for _, c, _ in pending], self.device)
        if self.write_cache:
            from safetensors.torch import save_file

            from ...atomic import atomic_file

            folder.mkdir(parents=True, exist_ok=True)
            with atomic_file(folder / f"{index:05d}.safetensors") as tmp:
                save_file({"latents": latents.contiguous(), "embeddings": embeddings.contiguous()}, str(tmp),
                          metadata={"keys": json.dumps(keys)})
        return latents, embeddings, keys

    def _cached(self, folder: Path, done: dict) -> Iterator[tuple]:
        from safetensors import safe_open

        self.skipped += int(done.get("skipped", 0))
        for index in range(int(done["chunks"])):
            path = folder / f"{index:05d}.safetensors"
            try:
                with safe_open(str(path), framework="pt") as handle:
                    keys = json.loads((handle.metadata() or {})["keys"])
                    latents, embeddings = handle.get_tensor("latents"), handle.get_tensor("embeddings")
            except Exception as exc:  # a damaged cache file: say which, the user deletes the folder
                raise DataError(f"stream cache {path} is unreadable ({type(exc).__name__}); delete {folder}") from None
            yield latents, embeddings, keys

"""webdataset shards as ``img2dataset`` writes them, built by tests and benchmarks themselves."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .factory import TINY_CORPUS


def write_shards(folder: Path, shards: int = 4, per_shard: int = 8, size: int = 16, seed: int = 0,
                 corrupt: tuple = (), no_caption: tuple = (), json_captions: bool = False) -> list[Path]:
    """``shards`` tar files ``NNNNN.tar`` of ``per_shard`` samples each: key ``SSSSSIIII`` (shard,
    index), a random ``.jpg`` of ``size`` x ``size``, the caption in ``.txt`` (or only in ``.json``
    with ``json_captions``) and img2dataset's ``.json``. Keys listed in ``corrupt`` get bytes that
    are no image; keys in ``no_caption`` get neither ``.txt`` nor a caption in ``.json``.
    Returns the shard paths; captions cycle through :data:`TINY_CORPUS`."""
    import webdataset as wds
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(shards):
        path = folder / f"{s:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
                caption = TINY_CORPUS[(s * per_shard + i) % len(TINY_CORPUS)]
                sample = {"__key__": key, "jpg": b"not an image" if key in corrupt else buffer.getvalue()}
                meta = {"key": key, "status": "success", "width": size, "height": size}
                if key not in no_caption:
                    meta["caption"] = caption
                    if not json_captions:
                        sample["txt"] = caption
                sample["json"] = json.dumps(meta)
                sink.write(sample)
        paths.append(path)
    return paths


def write_parquet_shards(folder: Path, shards: int = 2, per_shard: int = 4, size: int = 16, seed: int = 0,
                         no_caption: tuple = ()) -> list[Path]:
    """The same kind of samples as Hugging Face ``datasets`` parquet shards (columns ``key``,
    ``image`` {bytes, path}, ``text``), written with ``datasets``; rows in ``no_caption`` get no text."""
    import datasets
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    features = datasets.Features({"key": datasets.Value("string"), "image": datasets.Image(),
                                  "text": datasets.Value("string")})
    paths = []
    for s in range(shards):
        rows = []
        for i in range(per_shard):
            key = f"{s:05d}{i:04d}"
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
            rows.append({"key": key, "image": {"bytes": buffer.getvalue(), "path": f"{key}.png"},
                         "text": None if key in no_caption else TINY_CORPUS[(s * per_shard + i) % len(TINY_CORPUS)]})
        path = folder / f"train-{s:05d}-of-{shards:05d}.parquet"
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
        paths.append(path)
    return paths

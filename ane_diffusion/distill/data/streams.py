"""Streamed training data: webdataset tar shards (as ``img2dataset`` writes them), never wholly in RAM.

A shard is a tar file of samples ``KEY.jpg|png|webp`` + ``KEY.txt`` (the caption) and/or
``KEY.json`` (its ``"caption"``), read with the ``webdataset`` library -- or a Hugging Face
``datasets`` parquet file (columns ``image`` and ``text`` or ``caption``, as ``push_to_hub`` /
``to_parquet`` write image-text datasets), read with ``datasets``. ``--shards`` names a folder
(every ``*.tar`` in it, else every ``*.parquet``) or a brace pattern (``data/{00000..00099}.tar``).

How the stream runs, epoch after epoch (epoch ``e``, process ``r`` of ``N``):

1. the shard list is permuted with a generator seeded by ``(seed, e)``, and process ``r`` takes
   every ``N``-th shard from position ``r``: the processes' shards are disjoint, so no sample is
   seen twice in an epoch across processes (each process's epoch ends when its shards do);
2. each of its shards is encoded (:class:`~.cache.ShardEncoder`: VAE latents and text-encoder
   embeddings, chunk by chunk, cached on disk), bad samples refused or skipped;
3. encoded samples pass through a shuffle buffer (``webdataset.shuffle``, seeded by
   ``(seed, e, r)``) and are cut into micro-batches.

The position ``(epoch, offset)`` -- encoded samples this process has consumed in the epoch -- is
saved in checkpoints; a resume rebuilds that epoch's stream and skips ``offset`` samples (the
skipped part comes from the disk cache: no image is decoded or encoded twice).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from . import DataError

DEFAULT_SHUFFLE_BUFFER = 1000
"""Samples held by the shuffle buffer (about 300 KB each at SD 1.5's size: ~300 MB)."""


def list_shards(spec: str) -> list[str]:
    """The shard paths of ``spec``: a folder's ``*.tar`` files (else its ``*.parquet`` files), sorted;
    a brace pattern; or one file.

    Raises :class:`DataError` when nothing matches or a named shard does not exist.
    """
    from braceexpand import braceexpand

    path = Path(spec)
    if path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar")) or sorted(str(p) for p in path.glob("*.parquet"))
        if not shards:
            raise DataError(f"--shards {spec}: the folder holds no .tar or .parquet shards")
        return shards
    shards = list(braceexpand(str(spec)))
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise DataError(f"--shards {spec}: {missing[0]} does not exist" + (f" (and {len(missing) - 1} more)"
                                                                           if len(missing) > 1 else ""))
    return shards


def shards_for(shards: list[str], seed: int, epoch: int, rank: int, world: int) -> list[str]:
    """Process ``rank``'s shards in ``epoch``: every ``world``-th of a (seed, epoch) permutation."""
    order = np.random.default_rng([seed, epoch, 0x5348]).permutation(len(shards))
    return [shards[i] for i in order[rank::world]]


@dataclass
class StreamPosition:
    epoch: int = 0
    offset: int = 0
    """Encoded samples consumed in ``epoch`` by this process."""


class StreamSet:
    """Micro-batches ``(x0, cond, uncond)`` streamed from shards for one process (the batch interface
    of :class:`~ane_diffusion.distill.data.TrainingSet`, but sequential: see :meth:`micro_batch`)."""

    def __init__(self, spec: str, encoder, seed: int, rank: int = 0, world: int = 1,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER):
        self.spec, self.encoder, self.seed = spec, encoder, seed
        self.rank, self.world, self.shuffle_buffer = rank, world, shuffle_buffer
        self.shards = list_shards(spec)
        if len(self.shards) < world:
            raise DataError(f"--shards {spec}: {len(self.shards)} shard(s) cannot feed {world} processes "
                            "(each process reads whole shards)")
        if len(self.shards) % world:
            import warnings

            warnings.warn(f"{len(self.shards)} shards over {world} processes: the processes' epochs differ in "
                          "length (every sample is still seen once per epoch)", stacklevel=2)
        self.position = StreamPosition()
        self._iterator: Optional[Iterator] = None
        self.samples_seen = 0

    # -- the stream -------------------------------------------------------------------------
    def _epoch(self, epoch: int) -> Iterator[tuple]:
        import webdataset as wds

        def samples():
            for shard in shards_for(self.shards, self.seed, epoch, self.rank, self.world):
                for latents, embeddings, keys in self.encoder.chunks(shard):
                    yield from zip(latents, embeddings, keys)

        rng = random.Random(f"{self.seed}-{epoch}-{self.rank}")
        return iter(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples()))

    def _open(self) -> None:
        self._iterator = self._epoch(self.position.epoch)
        for _ in range(self.position.offset):
            if next(self._iterator, None) is None:
                raise DataError(f"--shards {self.spec}: the stream is shorter than the checkpoint's position "
                                f"(epoch {self.position.epoch}, sample {self.position.offset}); were shards removed?")

    def next_sample(self) -> tuple:
        """The next encoded sample ``(latent (C, h, w), embedding (77, D), key)``; epochs roll over."""
        if self._iterator is None:
            self._open()
        sample = next(self._iterator, None)
        if sample is None:  # the epoch is over: the next one, with a new shard order and shuffle
            if self.position.offset == 0:
                raise DataError(f"--shards {self.spec}: no usable sample for process {self.rank}")
            self.position = StreamPosition(self.position.epoch + 1, 0)
            self._open()
            sample = next(self._iterator, None)
            if sample is None:
                raise DataError(f"--shards {self.spec}: no usable sample for process {self.rank}")
        self.position.offset += 1
        self.samples_seen += 1
        return sample

    # -- the engine's batch interface -------------------------------------------------------
    def micro_batch(self, position: int, count: int, seed: int):
        """The next ``count`` samples as ``(x0 (B, C, h, w), cond (B, 77, D), uncond (B, 77, D))``.

        A stream is sequential: ``position`` and ``seed`` (what an in-memory set is indexed by) are
        not used; order comes from the stream's own seed and :attr:`position`."""
        import torch

        latents, embeddings, _ = zip(*(self.next_sample() for _ in range(count)))
        cond = torch.stack(embeddings)
        return torch.stack(latents), cond, self.encoder.uncond.expand_as(cond)

    def state(self) -> dict:
        return {"epoch": self.position.epoch, "offset": self.position.offset}

    def load_state(self, state: dict) -> None:
        self.position = StreamPosition(int(state["epoch"]), int(state["offset"]))
        self._iterator = None

    def summary(self) -> dict:
        return {"source": str(self.spec), "kind": "shards", "shards": len(self.shards),
                "shuffle_buffer": self.shuffle_buffer, "cache_key": self.encoder.key,
                "skipped_samples": self.encoder.skipped}

"""Training data: clean latents with their text embeddings, computed once and cached.

Two sources:

* ``--data FOLDER`` holding ``manifest.jsonl`` (one object a line: ``{"file": ..., "caption": ...}``)
  or ``manifest.csv`` (header ``file,caption``); files are relative to the folder. Images are
  resized (shorter side) and centre-cropped to the model's size and encoded once with the VAE
  (posterior mean x scaling factor).
* ``--prompts FILE``, one prompt a line: the latents are the model's own DDIM samples (a guided
  teacher, or a student at w), made once with the runtime's :class:`~ane_diffusion.pipeline.Pipeline`.

Captions are tokenized with the bundle's tokenizer (cut to CLIP's 77 tokens, as SD training
does) and encoded with its text encoder; the empty prompt's embedding is kept for the teacher's
unconditional branch. Everything lands in one safetensors file in the cache folder, named by a
hash of the source (manifest or prompt file, image sizes and dates, resolution, sampling settings)
and of the weights used, so a second run -- or stage 2 on the same data -- skips the VAE, the text
encoder and the sampling. The whole set is held in memory (about 250 KB a caption and 64 KB a
latent at SD 1.5's size).

Batches are a pure function of (seed, position in the example stream): see :func:`batch_indices`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

MANIFESTS = ("manifest.jsonl", "manifest.csv")
CACHE_FORMAT = 1
ENCODE_BATCH = 8


class DataError(ValueError):
    """Unusable training data; the message names the file (and line) at fault."""


@dataclass(frozen=True)
class Example:
    file: Path
    caption: str


# -- sources --------------------------------------------------------------------------------

def find_manifest(folder: Path) -> Path:
    """The folder's manifest.jsonl or manifest.csv (exactly one of them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--data {folder} is not a folder")
    found = [folder / name for name in MANIFESTS if (folder / name).exists()]
    if len(found) != 1:
        which = "both" if found else "neither"
        raise DataError(f"{folder} must hold exactly one of {' or '.join(MANIFESTS)} ({which} found)")
    return found[0]


def _example(manifest: Path, line: int, file, caption) -> Example:
    if not isinstance(file, str) or not file.strip():
        raise DataError(f"{manifest}:{line}: 'file' must be a non-empty string")
    if not isinstance(caption, str):
        raise DataError(f"{manifest}:{line}: 'caption' must be a string")
    from ...names import inside

    path = inside(manifest.parent, file, f"{manifest}:{line}: image", DataError, subfolders=True)
    if not path.is_file():
        raise DataError(f"{manifest}:{line}: image {file} does not exist")
    return Example(path, caption)


def _parse_jsonl(manifest: Path) -> list[Example]:
    examples = []
    for line, text in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{manifest}:{line}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "file" not in row or "caption" not in row:
            raise DataError(f"{manifest}:{line}: expected an object with keys 'file' and 'caption'")
        examples.append(_example(manifest, line, row["file"], row["caption"]))
    return examples


def _parse_csv(manifest: Path) -> list[Example]:
    with manifest.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"file", "caption"} <= set(reader.fieldnames):
            raise DataError(f"{manifest}:1: the header must name the columns file,caption")
        examples = []
        try:
            for row in reader:
                if None in row or any(row[key] is None for key in ("file", "caption")):
                    raise DataError(f"{manifest}:{reader.line_num}: expected {len(reader.fieldnames)} columns")
                examples.append(_example(manifest, reader.line_num, row["file"], row["caption"]))
        except csv.Error as exc:
            raise DataError(f"{manifest}:{reader.line_num}: {exc}") from None
    return examples


def read_manifest(folder: Path) -> tuple[Path, list[Example]]:
    """``(manifest path, examples)``; a malformed row raises :class:`DataError` naming file:line."""
    manifest = find_manifest(folder)
    examples = _parse_jsonl(manifest) if manifest.suffix == ".jsonl" else _parse_csv(manifest)
    if not examples:
        raise DataError(f"{manifest} lists no images")
    return manifest, examples


def read_prompts(path: Path) -> list[str]:
    """Non-blank lines of a prompt file, stripped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--prompts {path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"{path} holds no prompts")
    return prompts


def check_data(cfg) -> int:
    """Validate ``--data`` (manifest rows, each image's presence and header), ``--shards`` (the shard
    files exist; their samples are checked as they stream, see ``--bad-data``) or ``--prompts`` before
    a run creates its folder; returns the number of examples, shards or prompts. Raises :class:`DataError`."""
    from PIL import Image, UnidentifiedImageError

    if getattr(cfg, "shards", None):
        from .streams import list_shards

        return len(list_shards(cfg.shards))
    if cfg.data is None:
        return len(read_prompts(Path(cfg.prompts)))
    manifest, examples = read_manifest(Path(cfg.data))
    for example in examples:
        try:
            with Image.open(example.file):
                pass
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{manifest}: cannot read image {example.file}: {exc}") from None
    return len(examples)


# -- encoding -------------------------------------------------------------------------------

def load_image(path: Path, size: int) -> np.ndarray:
    """(3, size, size) float32 in [-1, 1]: shorter side resized to ``size``, centre crop."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = size / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = (width - size) // 2, (height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        pixels = np.asarray(image, dtype=np.float32)
    return pixels.transpose(2, 0, 1) / 127.5 - 1.0


def encode_images(vae, examples: list[Example], manifest: Path, size: int, scaling_factor: float, device):
    """VAE posterior means x scaling factor: (M, C, size/f, size/f) float32 on the CPU."""
    import torch

    latents = []
    for start in range(0, len(examples), ENCODE_BATCH):
        chunk = examples[start:start + ENCODE_BATCH]
        pixels = []
        for example in chunk:
            try:
                pixels.append(load_image(example.file, size))
            except OSError as exc:
                raise DataError(f"{manifest}: cannot read image {example.file}: {exc}") from None
        batch = torch.from_numpy(np.stack(pixels)).to(device)
        with torch.no_grad():
            latents.append((vae.encode(batch).latent_dist.mean * scaling_factor).float().cpu())
    return torch.cat(latents)


def encode_texts(text_encoder, tokenizer, texts: list[str], device, batch: int = 32):
    """Text-encoder hidden states (N, 77, D) float32 on the CPU; long texts are cut to 77 tokens."""
    import torch

    out = []
    for start in range(0, len(texts), batch):
        ids = tokenizer.encode_batch(texts[start:start + batch], truncate=True)
        with torch.no_grad():
            out.append(text_encoder(torch.from_numpy(ids.astype(np.int64)).to(device))[0].float().cpu())
    return torch.cat(out)


def sample_latents(bundle, components, cond, uncond, w: float, steps: int, seed: int, latent_shape, device):
    """The model's DDIM samples (M, C, h, w) for embeddings ``cond`` (M, 77, D), one per row.

    A teacher is guided at ``w`` (two evaluations a step), a student takes w as its input: exactly
    what ``generate`` would produce, via :meth:`Pipeline.denoiser`.
    """
    import torch

    from ...backends.torch_backend import TorchBackend
    from ...pipeline import Pipeline, Timings
    from ...samplers import sample_ddim
    from ...schedule import trailing_timesteps

    backend = TorchBackend(bundle, device=str(device), dtype=next(components.unet.parameters()).dtype,
                           components=components)
    pipeline = Pipeline(bundle, backend)
    rng = np.random.default_rng([seed, 0x5A4D])
    samples = []
    for start in range(0, cond.shape[0], ENCODE_BATCH):
        chunk = cond[start:start + ENCODE_BATCH].numpy()
        z = rng.standard_normal((chunk.shape[0], *latent_shape)).astype(np.float32)
        denoise = pipeline.denoiser(chunk, np.repeat(uncond.numpy(), chunk.shape[0], axis=0), w, Timings())
        samples.append(sample_ddim(denoise, z, trailing_timesteps(steps), pipeline.schedule))
    return torch.from_numpy(np.concatenate(samples))


# -- cache ----------------------------------------------------------------------------------

def module_fingerprint(*modules) -> str:
    """sha256 of the modules' weights (names, dtypes, shapes, bytes)."""
    import torch

    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cache_key(material: dict) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class TrainingSet:
    """Clean latents and the text embeddings of their captions (all on the CPU)."""

    latents: "object"
    """(M, C, h, w) float32."""
    caption_index: "object"
    """(M,) int64: row of ``embeddings`` for each latent."""
    embeddings: "object"
    """(P, 77, D) float32, one per distinct caption."""
    uncond: "object"
    """(1, 77, D) float32: the empty prompt."""
    key: str
    source: str

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def batch(self, indices):
        """``(x0 (B, C, h, w), cond (B, 77, D), uncond (B, 77, D))`` for example indices (B,)."""
        import torch

        index = torch.as_tensor(indices, dtype=torch.long)
        cond = self.embeddings[self.caption_index[index]]
        return self.latents[index], cond, self.uncond.expand_as(cond)

    def micro_batch(self, position: int, count: int, seed: int):
        """The engine's batch interface: examples ``position .. position+count-1`` of the seeded
        endless stream (:func:`batch_indices`), as :meth:`batch` returns them."""
        return self.batch(batch_indices(len(self), seed, position, count))

    def summary(self) -> dict:
        return {"source": self.source, "examples": len(self), "captions": int(self.embeddings.shape[0]),
                "cache_key": self.key}

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        from ...atomic import atomic_file

        tensors = {"latents": self.latents, "caption_index": self.caption_index,
                   "embeddings": self.embeddings, "uncond": self.uncond}
        with atomic_file(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"key": self.key, "source": self.source, "format": str(CACHE_FORMAT)})

    @classmethod
    def load(cls, path: Path, key: str) -> Optional["TrainingSet"]:
        """The cached set, or None when absent, unreadable or stale (it is then rebuilt)."""
        from safetensors import safe_open

        if not Path(path).exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("key") != key:
                    return None
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            return cls(tensors["latents"], tensors["caption_index"], tensors["embeddings"], tensors["uncond"],
                       key, meta.get("source", ""))
        except Exception as exc:  # a damaged cache is rebuilt, not fatal
            warnings.warn(f"ignoring unreadable data cache {path} ({type(exc).__name__})", stacklevel=2)
            return None


def _index_captions(captions: list[str]) -> tuple[list[str], list[int]]:
    unique = list(dict.fromkeys(captions))
    position = {caption: i for i, caption in enumerate(unique)}
    return unique, [position[c] for c in captions]


def _images_source(cfg, bundle, components, size: int):
    """``(key material, name, captions, build)`` for ``--data``; build(device, cond, uncond) -> latents."""
    manifest, examples = read_manifest(Path(cfg.data))
    stats = [(str(e.file.relative_to(manifest.parent)), e.file.stat().st_size, e.file.stat().st_mtime_ns)
             for e in examples]
    material = {"kind": "images", "manifest": _file_digest(manifest), "images": stats, "size": size,
                "weights": module_fingerprint(components.vae, components.text_encoder)}

    def build(device, cond, uncond):
        return encode_images(components.vae, examples, manifest, size, bundle.scaling_factor, device)

    return material, str(manifest), [e.caption for e in examples], build


def _prompts_source(cfg, bundle, components, size: int):
    """``(key material, name, captions, build)`` for ``--prompts``: the latents are samples."""
    prompts = read_prompts(Path(cfg.prompts))
    w = bundle.card.default_w if cfg.sample_w is None else float(cfg.sample_w)
    material = {"kind": "prompts", "prompts": _file_digest(Path(cfg.prompts)), "size": size, "w": w,
                "steps": cfg.sample_steps, "per_prompt": cfg.samples_per_prompt, "seed": cfg.seed,
                "card": bundle.card.to_dict(),
                "weights": module_fingerprint(components.unet, components.text_encoder)}

    def build(device, cond, uncond):
        factor = bundle.vae_scale_factor
        shape = (bundle.latent_channels, size // factor, size // factor)
        return sample_latents(bundle, components, cond, uncond, w, cfg.sample_steps, cfg.seed, shape, device)

    return material, str(cfg.prompts), [p for p in prompts for _ in range(cfg.samples_per_prompt)], build


def load_training_set(cfg, bundle, components, cache_dir: Path, device, write_cache: bool = True) -> TrainingSet:
    """The run's training set, from the cache when its key matches, else built (and cached).

    ``components`` must still hold float32 weights. Under several processes only the main one
    should write (``write_cache``); the others run after it and find the cache.
    """
    import torch

    size = int(cfg.resolution or bundle.default_size)
    if size % bundle.vae_scale_factor:
        raise DataError(f"--resolution {size} is not a multiple of the VAE factor {bundle.vae_scale_factor}")
    source = _images_source if cfg.data is not None else _prompts_source
    material, name, captions, build = source(cfg, bundle, components, size)
    key = cache_key(material | {"format": CACHE_FORMAT})
    path = Path(cache_dir) / f"{material['kind']}-{key}.safetensors"
    cached = TrainingSet.load(path, key)
    if cached is not None:
        return cached
    unique, index = _index_captions(captions)
    index = torch.tensor(index, dtype=torch.long)
    tokenizer = bundle.tokenizer()
    embeddings = encode_texts(components.text_encoder, tokenizer, unique, device)
    uncond = encode_texts(components.text_encoder, tokenizer, [""], device)
    from ...checks import require_finite

    require_finite(embeddings.float().numpy(), "the text encoder's embeddings of the captions",
                   "the text encoder's weights hold NaN/inf: check the model")
    latents = build(device, embeddings[index], uncond)
    require_finite(latents.float().cpu().numpy(), f"the training latents ({material['kind']})",
                   "the VAE's (images) or the UNet's (prompt samples) weights hold NaN/inf: check the model")
    data = TrainingSet(latents.float(), index, embeddings, uncond, key, name)
    if write_cache:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        data.save(path)
    return data


# -- batches --------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(num_examples: int, seed: int, start: int, count: int) -> np.ndarray:
    """Examples ``start .. start+count-1`` of an endless stream: each epoch is a fresh permutation
    seeded by (seed, epoch). A pure function, so a resumed run draws exactly the same batches."""
    positions = np.arange(start, start + count)
    epochs = positions // num_examples
    out = np.empty(count, dtype=np.int64)
    for epoch in np.unique(epochs):
        mask = epochs == epoch
        out[mask] = _epoch_permutation(num_examples, seed, int(epoch))[positions[mask] % num_examples]
    return out

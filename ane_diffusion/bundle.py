"""Model bundles: where a model's configs, weights, tokenizer and card come from.

A bundle is resolved from one of:

* a diffusers-format folder (``model_index.json``, ``unet/``, ``text_encoder/``, ``tokenizer/``,
  ``vae/``, ``scheduler/``, optionally ``ane_diffusion.json``);
* a Hugging Face hub id such as ``org/name``, through the local hub cache (offline, a clear
  error rather than a traceback);
* a single-file ``.safetensors`` checkpoint: this project's own single-file format (every
  component's weights under a prefix, configs and tokenizer in the header metadata), or an
  original-layout Stable Diffusion 1.x/2.x checkpoint, converted offline from configs and a
  tokenizer the package ships (:mod:`ane_diffusion.loaders.original`).
* the name ``default`` (or nothing): the embedded demo model shipped inside the package, its
  4-step student; ``demo-teacher``, ``demo-stage1``, ``demo-8step``, ``demo-2step`` and
  ``demo-1step`` name the other embedded models (see :data:`EMBEDDED_MODELS`).

Only safetensors weights are ever read: a checkpoint is never unpickled.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .card import CARD_NAME, CardError, ModelCard, infer_card
from .schedule import DiscreteSchedule

COMPONENTS = ("unet", "text_encoder", "vae")
WEIGHT_FILES = {"unet": "diffusion_pytorch_model.safetensors",
                "text_encoder": "model.safetensors",
                "vae": "diffusion_pytorch_model.safetensors",
                "vae_tiny": "diffusion_pytorch_model.safetensors"}
OPTIONAL_COMPONENTS = ("vae_tiny",)
"""Components a bundle may carry: ``vae_tiny``, a distilled tiny autoencoder (see :mod:`ane_diffusion.decoders`)."""
SINGLE_FILE_KEY = "ane_diffusion_bundle"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEFAULT_MODEL = "default"
EMBEDDED_MODELS = {"default": "steps-4", "demo-teacher": "teacher", "demo-stage1": "stage1",
                   "demo-8step": "steps-8", "demo-4step": "steps-4", "demo-2step": "steps-2",
                   "demo-1step": "steps-1"}
"""Embedded demo models: one shared text encoder, VAE and tokenizer under ``assets/demo``, and a
layer per model under ``assets/demo/models/NAME`` (its UNet, scheduler config and card)."""


class ModelLoadError(RuntimeError):
    """A model could not be found or read; the message names the problem in one line."""


@dataclass
class Bundle:
    """Configs, card and weight locations of one model, independent of any backend."""

    source: str
    configs: dict
    """``{"unet": ..., "text_encoder": ..., "vae": ..., "scheduler": ...}`` config dicts."""
    card: ModelCard
    tokenizer_files: dict
    """``{"vocab.json": text, "merges.txt": text}``."""
    root: Optional[Path] = None
    single_file: Optional[Path] = None
    extra: dict = field(default_factory=dict)
    component_dirs: dict = field(default_factory=dict)
    """Folder of each component of a folder bundle (a layered bundle mixes two folders)."""

    def weights_path(self, name: str) -> Path:
        """The safetensors file of component ``name`` of a folder bundle."""
        return self.component_dirs[name] / WEIGHT_FILES[name]

    @property
    def schedule(self) -> DiscreteSchedule:
        return DiscreteSchedule.from_diffusers_config(self.configs["scheduler"])

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.configs["vae"].get("block_out_channels", [0, 0, 0, 0])) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.configs["vae"].get("latent_channels", 4))

    @property
    def default_size(self) -> int:
        return int(self.configs["unet"].get("sample_size", 64)) * self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        return float(self.configs["vae"].get("scaling_factor", 0.18215))

    def tokenizer(self):
        from .tokenizer import CLIPTokenizer

        special = json.loads(self.tokenizer_files.get("special_tokens_map.json") or "{}")
        pad = special.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad  # SD 2.x pads with "!", not <|endoftext|>
        return CLIPTokenizer.from_strings(self.tokenizer_files["vocab.json"], self.tokenizer_files["merges.txt"],
                                          pad_token=pad)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"model folder is missing {path.parent.name}/{path.name}") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None


def _load_card(folder: Path, configs: dict) -> ModelCard:
    if (folder / CARD_NAME).exists():
        try:
            return ModelCard.load(folder)
        except (CardError, TypeError) as exc:
            raise ModelLoadError(f"bad model card {folder / CARD_NAME}: {exc}") from None
    return infer_card(configs["unet"], configs["scheduler"])


def load_folder(folder: Path, source: Optional[str] = None, layer: Optional[Path] = None) -> Bundle:
    """A diffusers-format folder; with ``layer``, a folder whose components, scheduler config and
    card (those it has) take the place of ``folder``'s."""
    folder = Path(folder)
    if not (folder / "model_index.json").exists():
        raise ModelLoadError(f"{folder} is not a diffusers model folder (no model_index.json)")
    _read_json(folder / "model_index.json")

    def where(name: str) -> Path:
        return layer if layer is not None and (layer / name).is_dir() else folder

    dirs = {name: where(name) / name for name in COMPONENTS}
    configs = {name: _read_json(dirs[name] / "config.json") for name in COMPONENTS}
    configs["scheduler"] = _read_json(where("scheduler") / "scheduler" / "scheduler_config.json")
    for name in COMPONENTS:
        if not (dirs[name] / WEIGHT_FILES[name]).exists():
            pickled = list(dirs[name].glob("*.bin")) + list(dirs[name].glob("*.ckpt"))
            why = " (only pickled .bin weights found; they are never loaded)" if pickled else ""
            raise ModelLoadError(f"model folder is missing {name}/{WEIGHT_FILES[name]}{why}")
    for name in OPTIONAL_COMPONENTS:
        if (where(name) / name / "config.json").is_file():
            dirs[name] = where(name) / name
            configs[name] = _read_json(dirs[name] / "config.json")
            if not (dirs[name] / WEIGHT_FILES[name]).exists():
                raise ModelLoadError(f"model folder is missing {name}/{WEIGHT_FILES[name]}")
    tokenizer_files = {}
    for name in ("vocab.json", "merges.txt"):
        path = where("tokenizer") / "tokenizer" / name
        if not path.exists():
            raise ModelLoadError(f"model folder is missing tokenizer/{name}")
        tokenizer_files[name] = path.read_text(encoding="utf-8")
    special = where("tokenizer") / "tokenizer" / "special_tokens_map.json"
    if special.is_file():
        tokenizer_files[special.name] = special.read_text(encoding="utf-8")
    card_folder = layer if layer is not None and (layer / CARD_NAME).exists() else folder
    return Bundle(source=source or str(layer or folder), configs=configs, card=_load_card(card_folder, configs),
                  tokenizer_files=tokenizer_files, root=folder, component_dirs=dirs)


def load_single_file(path: Path) -> Bundle:
    """A ``.safetensors`` file in this project's single-file format (see :func:`save_single_file`)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ModelLoadError(f"{path} is not a readable safetensors file: {exc}") from None
    if SINGLE_FILE_KEY not in metadata:
        from .loaders.original import original_bundle, read_header

        return original_bundle(Path(path), *read_header(path))
    payload = json.loads(metadata[SINGLE_FILE_KEY])
    try:
        card = ModelCard.from_dict(payload["card"])
    except (CardError, TypeError) as exc:
        raise ModelLoadError(f"bad model card in {path}: {exc}") from None
    return Bundle(source=str(path), configs=payload["configs"], card=card,
                  tokenizer_files=payload["tokenizer"], single_file=Path(path))


def hub_snapshot(repo_id: str) -> Path:
    """The local folder of a hub model: the hub cache first, the network only if allowed."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelLoadError(f"{repo_id!r} looks like a hub id, but huggingface_hub is not installed "
                             "(pip install 'ane-diffusion[torch]')") from None
    patterns = ["model_index.json", CARD_NAME, "scheduler/*.json", "tokenizer/*",
                "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                "text_encoder/config.json", "text_encoder/model.safetensors",
                "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise ModelLoadError(f"{repo_id} is not in the hub cache and HF_HUB_OFFLINE is set")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise ModelLoadError(f"cannot fetch {repo_id} from the hub and it is not cached "
                             f"({type(exc).__name__}); pass a local model folder instead") from None


def embedded_root() -> Path:
    return Path(__file__).parent / "assets" / "demo"


def embedded_coreml() -> Path:
    """The embedded 4-step student converted to Core ML (runs with no PyTorch installed)."""
    return embedded_root() / "coreml"


def resolve_bundle(model: Optional[str | os.PathLike] = None) -> Bundle:
    """Resolve ``--model``: a folder, a single file, a hub id, or the embedded default."""
    name = DEFAULT_MODEL if model is None else str(model)
    if name in EMBEDDED_MODELS:
        layer = embedded_root() / "models" / EMBEDDED_MODELS[name]
        if not layer.is_dir():
            raise ModelLoadError(f"the embedded model {name!r} is not installed with this package; pass --model PATH")
        return load_folder(embedded_root(), source=name, layer=layer)
    path = Path(model)
    if path.is_dir():
        if (path / "ane_diffusion_coreml.json").is_file():  # a Core ML export folder
            from .backends.coreml_backend import load_export_bundle

            return load_export_bundle(path)
        return load_folder(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelLoadError(f"{path}: only .safetensors checkpoints are loaded (never pickles)")
        return load_single_file(path)
    if HUB_ID.match(str(model)) and not str(model).startswith((".", "/")):
        return load_folder(hub_snapshot(str(model)), source=str(model))
    raise ModelLoadError(f"model not found: {model} (not a folder, a .safetensors file or a hub id)")

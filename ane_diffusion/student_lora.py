"""LoRA students: low-rank adapters on a UNet's attention projections, trained with peft, saved in
diffusers' LoRA format and fused back into a plain UNet.

A LoRA student is ``base UNet + adapter``. The adapter holds

* peft's LoRA pairs ``(A (r, in), B (out, r))`` on ``to_q``, ``to_k``, ``to_v`` and ``to_out.0``
  of every attention block (the targets of diffusers' ``train_text_to_image_lora.py``), each adding
  ``(alpha / r) B A`` to its frozen weight (Hu et al., "LoRA", ICLR 2022);
* the guidance-embedding projection ``time_embedding.cond_proj`` (the layer that feeds w in,
  :mod:`ane_diffusion.student`), which trains IN FULL. Its change ``dW = W - W_base`` is written as
  an exact LoRA pair of rank ``in_features``: ``A = I``, ``B = dW``, ``alpha = r`` (scale 1).

So the whole adapter is one ordinary LoRA file: keys ``unet.<module>.lora_A.weight`` /
``unet.<module>.lora_B.weight`` in safetensors, peft's ``LoraConfig`` under the metadata key
``lora_adapter_metadata`` (as diffusers' ``save_lora_weights`` writes it) -- diffusers'
``load_lora_weights`` / ``load_lora_adapter`` read it -- plus this project's model card under
``ane_diffusion_card`` (kind, w range, guidance-embedding size, the base it was trained on).

The base is the stage-1 teacher (its UNet gets the zero-initialised guidance input first) or, for
a stage-2 adapter, the stage-1 student. :func:`fuse` merges the pairs into the weights and returns a
plain ``UNet2DConditionModel``, identical (to float rounding) to base + adapter.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""Attention projections that get adapters (diffusers' LoRA training scripts use the same)."""
GUIDANCE_LAYER = "time_embedding.cond_proj"
"""The guidance-embedding projection: trained in full, saved as an exact full-rank LoRA pair."""
ADAPTER_NAME = "student"
CARD_KEY = "ane_diffusion_card"
METADATA_KEY = "lora_adapter_metadata"
PREFIX = "unet."


class StudentLoraError(ValueError):
    """A student adapter file is missing, unreadable, or does not fit the base model (one line)."""


def require_peft():
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise StudentLoraError("LoRA students need peft: pip install 'ane-diffusion[train]'") from exc


def guidance_base(unet, embedding_dim: int):
    """``unet`` with the zero-initialised guidance input (as :func:`ane_diffusion.student.
    add_guidance_input`), built WITHOUT copying: the new module shares ``unet``'s tensors, so a
    LoRA run holds one UNet. A UNet that already has the input is returned as it is."""
    import torch
    from diffusers import UNet2DConditionModel

    if unet.config.get("time_cond_proj_dim"):
        return unet
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    config["time_cond_proj_dim"] = int(embedding_dim)
    with torch.device("meta"):
        student = UNet2DConditionModel.from_config(config)
    missing, unexpected = student.load_state_dict(unet.state_dict(), strict=False, assign=True)
    if unexpected or any(GUIDANCE_LAYER not in k for k in missing):
        raise RuntimeError(f"the UNet does not fit its own config plus a guidance input: {missing} {unexpected}")
    reference = next(unet.parameters())
    holder_name, _, leaf = GUIDANCE_LAYER.rpartition(".")
    meta = student.get_submodule(GUIDANCE_LAYER)
    setattr(student.get_submodule(holder_name), leaf,
            torch.nn.Linear(meta.in_features, meta.out_features, bias=False,
                            device=reference.device, dtype=reference.dtype))
    with torch.no_grad():
        student.get_submodule(GUIDANCE_LAYER).weight.zero_()
    return student


def add_lora(unet, rank: int, alpha: Optional[float] = None, targets=LORA_TARGETS, seed: int = 0):
    """Inject trainable LoRA adapters (rank ``rank``, scale ``alpha / rank``, default 1) into
    ``unet`` in place; every other weight is frozen except the guidance projection, which trains
    in full. ``unet`` must have the guidance input (``time_cond_proj_dim`` set). The adapters'
    random initialisation is drawn from ``seed`` (not the global generator), so runs repeat exactly.
    Returns ``unet``.

    Raises ValueError for rank < 1 or a UNet without a guidance input.
    """
    require_peft()
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"--lora-rank must be >= 1, got {rank}")
    if not unet.config.get("time_cond_proj_dim"):
        raise ValueError("a LoRA student needs a UNet with a guidance input (time_cond_proj_dim)")
    import torch

    unet.requires_grad_(False)
    # A = Kaiming-uniform, B = 0 (peft's default): the student starts exactly at the base.
    kind = unet.device.type  # fork (and restore) the generator of the device the weights are drawn on
    accelerator = kind in ("cuda", "mps")
    with torch.random.fork_rng(devices=[unet.device] if accelerator else [],
                               device_type=kind if accelerator else "cuda"):
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets),
                                    init_lora_weights=True), adapter_name=ADAPTER_NAME)
    guidance = unet.get_submodule(GUIDANCE_LAYER)
    guidance.requires_grad_(True)
    unet._student_lora_base = {GUIDANCE_LAYER: guidance.weight.detach().float().cpu().clone()}
    return unet


def is_lora(unet) -> bool:
    """Whether ``unet`` carries student adapters (from :func:`add_lora`)."""
    return hasattr(unet, "_student_lora_base")


@contextlib.contextmanager
def as_base(unet):
    """Within the block, ``unet`` computes its BASE model: adapters off and the guidance projection
    at its base weight. A LoRA run's frozen teacher is therefore the student's own weights -- one
    UNet in memory instead of two. Use under ``torch.no_grad()``."""
    import torch

    holder_name, _, leaf = GUIDANCE_LAYER.rpartition(".")
    holder = unet.get_submodule(holder_name)
    trained = getattr(holder, leaf)
    frozen = torch.nn.Linear(trained.in_features, trained.out_features, bias=False,
                             device=trained.weight.device, dtype=trained.weight.dtype)
    frozen.weight.data.copy_(unet._student_lora_base[GUIDANCE_LAYER])
    unet.disable_adapters()
    setattr(holder, leaf, frozen.requires_grad_(False))
    try:
        yield unet
    finally:
        setattr(holder, leaf, trained)
        unet.enable_adapters()


class BaseView:
    """A callable standing for the base model of a LoRA student (see :func:`as_base`): the frozen
    teacher of a LoRA run, sharing the student's weights."""

    def __init__(self, unet):
        self.unet = unet

    def __call__(self, *args, **kwargs):
        with as_base(self.unet):
            return self.unet(*args, **kwargs)


def trainable_state(unet) -> dict:
    """The parameters that train (LoRA pairs + guidance projection), by name, detached on the CPU."""
    return {name: p.detach().to("cpu").contiguous() for name, p in unet.named_parameters() if p.requires_grad}


def adapter_state(unet) -> tuple[dict, dict]:
    """``(state, lora_config)`` of a LoRA student in diffusers' format: ``unet.``-prefixed
    ``lora_A``/``lora_B`` float32 tensors, and the peft ``LoraConfig`` as a JSON-able dict with the
    guidance projection's full-rank pair in ``rank_pattern``/``alpha_pattern``."""
    import torch
    from peft.utils import get_peft_model_state_dict

    config = unet.peft_config[ADAPTER_NAME]
    state = {f"{PREFIX}{k}": v.detach().float().cpu().contiguous()
             for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME).items()}
    weight = unet.get_submodule(GUIDANCE_LAYER).weight.detach().float().cpu()
    delta = weight - unet._student_lora_base[GUIDANCE_LAYER]
    width = int(weight.shape[1])
    state[f"{PREFIX}{GUIDANCE_LAYER}.lora_A.weight"] = torch.eye(width)
    state[f"{PREFIX}{GUIDANCE_LAYER}.lora_B.weight"] = delta.contiguous()
    targets = sorted(set(config.target_modules) | {GUIDANCE_LAYER})
    lora_config = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": targets,
                   "rank_pattern": {GUIDANCE_LAYER: width}, "alpha_pattern": {GUIDANCE_LAYER: width},
                   "init_lora_weights": True, "use_dora": False, "lora_bias": False}
    return state, lora_config


def save_adapter(path: Path, unet, card) -> Path:
    """Write the adapter of LoRA student ``unet`` as one safetensors file (atomically), with its
    peft config and ``card`` (a :class:`~ane_diffusion.card.ModelCard`) in the metadata."""
    from safetensors.torch import save_file

    from .atomic import atomic_file

    state, lora_config = adapter_state(unet)
    metadata = {"format": "pt", METADATA_KEY: json.dumps({f"{PREFIX}{k}": v for k, v in lora_config.items()}),
                CARD_KEY: json.dumps(card.validate().to_dict())}
    with atomic_file(Path(path)) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def read_adapter(path: Path) -> tuple[dict, dict, "object"]:
    """``(state, lora_config, card)`` of an adapter file written by :func:`save_adapter`; the
    config keeps diffusers' ``unet.`` key prefix, as stored.

    Raises :class:`StudentLoraError` naming the file when it is absent, not safetensors, or lacks
    the card or LoRA config.
    """
    from safetensors import safe_open

    from .card import ModelCard

    path = Path(path)
    if not path.is_file():
        raise StudentLoraError(f"--student-lora {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise StudentLoraError(f"--student-lora {path} is not a readable safetensors file ({exc})") from None
    if CARD_KEY not in meta or METADATA_KEY not in meta:
        raise StudentLoraError(f"--student-lora {path} is not a student adapter (no {CARD_KEY} / "
                               f"{METADATA_KEY} metadata)")
    config = json.loads(meta[METADATA_KEY])
    card = ModelCard.from_dict(json.loads(meta[CARD_KEY]))
    return state, config, card


def apply_adapter(base_unet, path: Path):
    """Base UNet + the adapter at ``path``, fused: a plain float32 UNet2DConditionModel (a new
    module; ``base_unet`` is left as it was). A base without a guidance input gets one first
    (stage-1 adapters are trained on the teacher). Loading goes through diffusers'
    ``load_lora_adapter``. Returns ``(unet, card)``; raises :class:`StudentLoraError` when the
    adapter does not fit the base."""
    import copy

    require_peft()
    from .student import add_guidance_input

    state, config, card = read_adapter(path)
    dim = card.guidance_embedding_dim
    have = base_unet.config.get("time_cond_proj_dim")
    if have and have != dim:
        raise StudentLoraError(f"{path}: the adapter's guidance embedding has {dim} dims, the base's {have}")
    unet = copy.deepcopy(base_unet).float() if have else add_guidance_input(base_unet.float(), dim)
    try:
        unet.load_lora_adapter(state, prefix="unet", adapter_name=ADAPTER_NAME, metadata=config)
    except Exception as exc:  # peft / diffusers raise ValueError, RuntimeError or KeyError on a mismatch
        raise StudentLoraError(f"{path} does not fit the base model ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]})") from None
    return fuse(unet), card


def fuse(unet):
    """Merge every LoRA pair into its base weight and drop the adapters: a plain UNet (in place)."""
    unet.fuse_lora(lora_scale=1.0)
    unet.unload_lora()
    if hasattr(unet, "_student_lora_base"):
        del unet._student_lora_base
    for module in unet.modules():  # peft leaves the wrapped layers' flags as training set them
        module.requires_grad_(False)
    return unet


def student_bundle(base, path: Path, device=None, dtype=None):
    """``(bundle, components)`` of base bundle ``base`` + the student adapter at ``path``, fused:
    the adapter's card, the student's scheduler (DDIM, trailing, its parameterisation) and UNet
    config; text encoder and VAE are the base's. ``device``/``dtype`` as
    :func:`~ane_diffusion.torch_models.load_components`. Raises :class:`StudentLoraError`."""
    import dataclasses

    from .distill.models import student_scheduler_config
    from .torch_models import load_components

    components = load_components(base)
    unet, card = apply_adapter(components.unet, path)
    components.unet = unet.eval()
    for module in components.modules().values():
        module.to(device or "cpu")
        if dtype is not None:
            module.to(dtype=dtype)
    configs = {**base.configs, "unet": {k: v for k, v in unet.config.items()},
               "scheduler": student_scheduler_config(base.configs["scheduler"], card.prediction_type)}
    bundle = dataclasses.replace(base, source=f"{base.source} + {Path(path).name}", configs=configs, card=card)
    return bundle, components


def save_student_bundle(base, path: Path, folder: Path, overwrite: bool = False) -> Path:
    """Write base bundle ``base`` + the student adapter at ``path``, fused, as a complete bundle
    folder (atomically): what ``convert --student-lora`` converts. Returns ``folder``."""
    from .torch_models import save_bundle

    bundle, components = student_bundle(base, path)
    return save_bundle(folder, components, bundle.configs["scheduler"], bundle.tokenizer_files, bundle.card,
                       overwrite=overwrite)

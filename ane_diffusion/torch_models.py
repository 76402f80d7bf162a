"""PyTorch components of a bundle: build them from configs, load safetensors weights, save.

Needs the ``torch`` extra. Every load goes through safetensors; nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from .atomic import atomic_directory, atomic_file
from .bundle import SINGLE_FILE_KEY, WEIGHT_FILES, Bundle, ModelLoadError
from .card import ModelCard


def import_torch():
    """torch alone (the lean inference path needs nothing else); a one-line error without it."""
    try:
        import torch
    except ImportError as exc:
        raise ModelLoadError("the PyTorch backend needs the torch extra: "
                             "pip install 'ane-diffusion[torch]'") from exc
    return torch


def require_torch():
    try:
        import diffusers  # noqa: F401
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError("the PyTorch backend needs the torch extra: "
                             "pip install 'ane-diffusion[torch]'") from exc
    return torch


@dataclass
class TorchComponents:
    text_encoder: "object"
    unet: "object"
    vae: "object"
    vae_tiny: "object" = None
    """Optional distilled ``AutoencoderTiny`` (see :mod:`ane_diffusion.decoders`): diffusers' or,
    on the lean path, :class:`ane_diffusion.backends.lean.tiny.AutoencoderTiny`."""

    def modules(self):
        extra = {"vae_tiny": self.vae_tiny} if self.vae_tiny is not None else {}
        return {"text_encoder": self.text_encoder, "unet": self.unet, "vae": self.vae, **extra}


def build_from_configs(configs: dict) -> TorchComponents:
    """Randomly initialised modules from config dicts (the shape of any bundle)."""
    require_torch()
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = {k: v for k, v in configs["text_encoder"].items() if not k.startswith("_")}
    text_config.pop("architectures", None)
    return TorchComponents(
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_config)),
        unet=UNet2DConditionModel.from_config(configs["unet"]),
        vae=AutoencoderKL.from_config(configs["vae"]),
        vae_tiny=_build_tiny(configs),
    )


def _build_tiny(configs: dict):
    from .decoders import TINY, build_tiny

    return build_tiny(configs[TINY]) if TINY in configs else None


def _load_original_single_file(bundle: Bundle) -> TorchComponents:
    from .loaders.original import load_components as load_original

    return load_original(bundle)


def uses_lean_modules(bundle: Bundle) -> bool:
    """Whether :func:`load_components` with ``lean=True`` builds plain-torch modules for ``bundle``
    (:mod:`ane_diffusion.backends.lean`): not for original-layout files or LoRAs (diffusers
    converts and fuses those), nor for configurations the lean modules do not implement."""
    from .backends.lean import why_not

    return not bundle.extra.get("original_sd") and not bundle.extra.get("loras") and why_not(bundle.configs) is None


def load_components(bundle: Bundle, device=None, dtype=None, lean: bool = False) -> TorchComponents:
    """The bundle's text encoder, UNet and VAE as eval-mode torch modules.

    ``lean=True`` (inference): plain-torch modules when :func:`uses_lean_modules` allows, so that
    neither diffusers nor transformers is imported; diffusers/transformers modules otherwise.
    """
    use_lean = lean and uses_lean_modules(bundle)
    torch = import_torch() if use_lean else require_torch()

    if use_lean:
        from .backends.lean import adapt_state, build as build_lean
    if bundle.extra.get("original_sd"):
        components = _load_original_single_file(bundle)
    else:
        if use_lean:
            components = build_lean(bundle.configs)  # vae_tiny too, when the bundle has one
        else:
            components = build_from_configs(bundle.configs)
        adapt = adapt_state if use_lean else (lambda name, state: state)
        if bundle.single_file is not None:
            state = read_weights(bundle.single_file)
            for name, module in components.modules().items():
                prefix = f"{name}."
                _load_state(module, adapt(name, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}),
                            f"{bundle.single_file}:{name}")
        else:
            for name, module in components.modules().items():
                path = bundle.weights_path(name)
                _load_state(module, adapt(name, read_weights(path)), str(path))
    if bundle.extra.get("loras"):  # --lora: fused into the weights (ane_diffusion.loaders.lora)
        from .loaders.lora import fuse_loras

        fuse_loras(components, bundle.extra["loras"])
    for module in components.modules().values():
        module.eval().requires_grad_(False)
        module.to(device or "cpu")
        if dtype is not None and dtype != torch.float32:
            module.to(dtype=dtype)
    return components


def read_weights(path) -> dict:
    """A safetensors file's tensors (torch); a truncated or otherwise unreadable file is a one-line
    :class:`ModelLoadError` naming it, not a library traceback."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ModelLoadError(f"{path} does not exist") from None
    except Exception as exc:  # safetensors raises its own error types for damaged files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path} is not a readable safetensors file ({reason}); is it truncated?") from None


def _load_state(module, state: dict, where: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    # CLIP's position_ids buffer is optional in saved checkpoints.
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelLoadError(f"weights in {where} do not fit the config: {detail}")


def _config_of(name: str, module) -> dict:
    if name == "text_encoder":
        config = module.config.to_dict()
        config["architectures"] = ["CLIPTextModel"]
        return config
    return dict(module.config)


def save_bundle(folder: Path, components: TorchComponents, scheduler_config: dict,
                tokenizer_files: dict, card: ModelCard, overwrite: bool = False,
                half_precision: bool = False) -> Path:
    """Write a diffusers-format folder (safetensors weights) with its card, atomically."""
    require_torch()
    from safetensors.torch import save_file

    card.validate()
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": _diffusers_version(),
                 "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                 "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
                 "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None],
                 "feature_extractor": [None, None], "requires_safety_checker": False}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        for name, module in components.modules().items():
            (tmp / name).mkdir()
            (tmp / name / "config.json").write_text(json.dumps(_config_of(name, module), indent=2, default=str))
            state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
            if half_precision:
                state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
            save_file(state, str(tmp / name / WEIGHT_FILES[name]))
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))
        (tmp / "tokenizer").mkdir()
        for fname, text in tokenizer_files.items():
            (tmp / "tokenizer" / fname).write_text(text, encoding="utf-8")
        card.save(tmp)
    return Path(folder)


def save_single_file(bundle: Bundle, components: TorchComponents, path: Path) -> Path:
    """Every component under its prefix in one safetensors file; configs, card, tokenizer in the header."""
    require_torch()
    from safetensors.torch import save_file

    tensors = {}
    for name, module in components.modules().items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous()
    payload = {"configs": {name: _config_of(name, m) for name, m in components.modules().items()}
               | {"scheduler": bundle.configs["scheduler"]},
               "card": bundle.card.to_dict(), "tokenizer": bundle.tokenizer_files}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={SINGLE_FILE_KEY: json.dumps(payload, default=str)})
    return Path(path)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def state_dict_equal(a, b) -> bool:
    """True when two modules hold identical parameters (used by tests and resume checks)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(bool((sa[k] == sb[k]).all()) for k in sa)


__all__ = ["TorchComponents", "build_from_configs", "import_torch", "load_components", "save_bundle",
           "save_single_file", "require_torch", "state_dict_equal", "uses_lean_modules"]

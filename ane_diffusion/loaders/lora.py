"""LoRA files on top of any bundle: ``--lora FILE[:SCALE]``, fused into the weights before use.

A LoRA adds ``scale * (alpha / r) * B @ A`` to chosen weights of the UNet and the text encoder.
Files come in two common layouts, both read by diffusers' own loader
(``StableDiffusionLoraLoaderMixin.load_lora_weights``, with peft underneath):

* kohya / web-UI files: ``lora_unet_<module>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``
  and ``lora_te_<module>...`` for the text encoder;
* diffusers / peft files: ``unet.<module>.lora_A.weight`` / ``.lora_B.weight`` (and
  ``text_encoder.``...), as ``save_lora_weights`` writes them.

Several LoRAs combine as a weighted sum (diffusers' ``set_adapters``); the sum is fused into the
base weights (``fuse_lora``) and the adapter layers are removed, so generation, editing and
Core ML conversion see plain modules with no runtime cost. Each LoRA used is recorded by name,
scale and SHA-256 in the bundle's card (``lineage``, entries of kind ``lora``), hence in an export's contract, and in every
generated image's metadata.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from ..bundle import Bundle, ModelLoadError


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    scale: float = 1.0

    @property
    def name(self) -> str:
        return self.path.name


def parse_lora(text: str) -> LoraSpec:
    """``FILE`` or ``FILE:SCALE`` (scale 1 by default); the file must be a ``.safetensors`` LoRA."""
    head, sep, tail = str(text).rpartition(":")
    path, scale = Path(text), 1.0
    if sep and head:
        try:
            path, scale = Path(head), float(tail)
        except ValueError:
            pass
    if not path.is_file():
        raise ModelLoadError(f"--lora {text}: file {path} not found")
    if path.suffix != ".safetensors":
        raise ModelLoadError(f"--lora {text}: only .safetensors LoRA files are loaded (never pickles)")
    return LoraSpec(path, scale)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def with_loras(bundle: Bundle, loras) -> Bundle:
    """A copy of ``bundle`` that fuses ``loras`` (specs or ``FILE[:SCALE]`` strings) when loaded.

    Checks each file's header (a one-line :class:`ModelLoadError` for a file that is not a LoRA)
    and records the LoRAs in the card's ``lineage`` and ``bundle.extra["loras"]``.
    """
    from .original import not_a_checkpoint, read_header

    specs = [lora if isinstance(lora, LoraSpec) else parse_lora(lora) for lora in loras or []]
    if not specs:
        return bundle
    if "coreml_contract" in bundle.extra:
        raise ModelLoadError("--lora: a Core ML export's weights are fixed; fuse the LoRA when converting "
                             "(convert --lora FILE[:SCALE])")
    records = []
    for spec in specs:
        shapes, _ = read_header(spec.path)
        what = not_a_checkpoint(shapes)
        if not (what or "").startswith("a LoRA"):
            raise ModelLoadError(f"--lora {spec.path} is not a LoRA (it is {what or 'a whole checkpoint'})")
        records.append({"source": str(spec.path), "kind": "lora", "lora": spec.name, "scale": spec.scale,
                        "sha256": _sha256(spec.path)})
    card = replace(bundle.card, lineage=list(bundle.card.lineage) + records,
                   description=(bundle.card.description + " + " if bundle.card.description else "")
                   + " + ".join(f"LoRA {r['lora']} x{r['scale']:g}" for r in records))
    extra = dict(bundle.extra)
    extra["loras"] = list(extra.get("loras", [])) + records
    return replace(bundle, card=card, extra=extra)


def load_adapters(components, loras: list) -> list:
    """Inject ``loras`` into the UNet and text encoder as peft adapters ``lora0, lora1, ...``
    weighted by their scales (not fused); returns the adapter names.

    Files are read and converted (kohya or diffusers/peft layout) by diffusers'
    ``lora_state_dict``; the UNet part goes through diffusers' ``load_lora_adapter``. The text
    encoder part follows diffusers' own steps (``convert_state_dict_to_peft``, its LoRA config)
    but injects with peft directly: transformers 5's ``load_adapter`` asks for a peft release newer
    than any published. Raises :class:`ModelLoadError` (one line) when a file does not fit.
    """
    from diffusers import StableDiffusionPipeline

    names = []
    for i, lora in enumerate(loras):
        name = f"lora{i}"
        try:
            state, alphas = StableDiffusionPipeline.lora_state_dict(lora["source"])
            unet_part = {k: v for k, v in state.items() if k.startswith("unet.")}
            touched = 0
            if unet_part:
                components.unet.load_lora_adapter(unet_part, network_alphas=alphas, prefix="unet", adapter_name=name)
                touched += 1
            touched += _load_text_encoder_adapter(components.text_encoder, state, alphas, name)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"--lora {lora['source']} does not fit this model "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
        if not touched:
            raise ModelLoadError(f"--lora {lora['source']} matches no layer of this model")
        names.append(name)
    scales = [float(lora["scale"]) for lora in loras]
    if getattr(components.unet, "peft_config", None):
        unet_names = [n for n in names if n in components.unet.peft_config]
        components.unet.set_adapters(unet_names, weights=[s for n, s in zip(names, scales) if n in unet_names])
    _scale_text_encoder_adapters(components.text_encoder, dict(zip(names, scales)))
    return names


def _load_text_encoder_adapter(text_encoder, state: dict, alphas, name: str) -> int:
    from diffusers.loaders.lora_base import _create_lora_config
    from diffusers.utils import convert_state_dict_to_peft
    from diffusers.utils.state_dict_utils import StateDictType
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    part = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    if not part:
        return 0
    if not any(".lora_A." in k for k in part):  # kohya files arrive in diffusers' old naming
        part = convert_state_dict_to_peft(part, original_type=StateDictType.DIFFUSERS_OLD)
    if not hasattr(text_encoder, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        part = {k.removeprefix("text_model."): v for k, v in part.items()}
    rank = {f"{n}.lora_B.weight": part[f"{n}.lora_B.weight"].shape[1] for n, _ in text_encoder.named_modules()
            if f"{n}.lora_B.weight" in part}
    if not rank:
        return 0
    te_alphas = {k.removeprefix("text_encoder."): v for k, v in (alphas or {}).items()
                 if k.split(".")[0] == "text_encoder"} or None
    config = _create_lora_config(part, te_alphas, None, rank, is_unet=False)
    inject_adapter_in_model(config, text_encoder, adapter_name=name)
    result = set_peft_model_state_dict(text_encoder, part, adapter_name=name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if name in k]
    if unexpected:
        raise ModelLoadError(f"LoRA weights {unexpected[:2]} do not fit the text encoder")
    return 1


def _lora_layers(module):
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer)]


def _scale_text_encoder_adapters(text_encoder, scales: dict) -> None:
    for layer in _lora_layers(text_encoder):
        active = [n for n in scales if n in layer.lora_A]
        layer.set_adapter(active)
        for adapter in active:
            layer.set_scale(adapter, scales[adapter])


def fuse_loras(components, loras: list) -> None:
    """Apply ``loras`` (records from :func:`with_loras`) to ``components`` in place, fused into the
    base weights, adapter layers removed (:func:`load_adapters`, then peft's merge)."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    names = load_adapters(components, loras)
    if getattr(components.unet, "peft_config", None):
        components.unet.fuse_lora(lora_scale=1.0, adapter_names=[n for n in names if n in components.unet.peft_config])
        components.unet.unload_lora()
    layers = _lora_layers(components.text_encoder)
    for layer in layers:
        layer.merge(adapter_names=[n for n in names if n in layer.lora_A])
    if layers:
        recurse_remove_peft_layers(components.text_encoder)
        components.text_encoder.__dict__.pop("peft_config", None)


__all__ = ["LoraSpec", "fuse_loras", "load_adapters", "parse_lora", "with_loras"]

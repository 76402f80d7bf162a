"""Original-layout Stable Diffusion checkpoints (one ``.safetensors`` file), loaded offline.

Most shared Stable Diffusion models come as one file in the layout of the original (CompVis /
Stability) code: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and
``cond_stage_model.*`` (text encoder). diffusers converts such a file, but needs the diffusers
configs of the model it holds, which it normally fetches from the hub. Here:

1. the file's header is read (key names and shapes; no tensor is loaded) and the family is
   detected: SD 1.x (OpenAI CLIP text encoder) or SD 2.x (OpenCLIP), an inpainting UNet (9 input
   channels), an LCM-style student (a ``time_embedding.cond_proj`` guidance input); anything that
   is not a whole checkpoint (a LoRA, a VAE, an embedding, SDXL, ...) is named in one line;
2. the configs are the family's templates shipped in ``assets/single_file/`` (JSON only) with every
   size read from the shapes (channels, levels, layers, vocabulary), so a fine-tune, a pruned file
   or a tiny test model gets its own exact config;
3. :func:`load_components` writes them to a temporary diffusers folder and calls diffusers' own
   ``StableDiffusionPipeline.from_single_file(path, config=FOLDER, local_files_only=True)``; the
   tokenizer is the shipped CLIP BPE (:mod:`.clip_bpe`). Nothing is fetched.

What the weights cannot say is the prediction type (and native size) of SD 2.x: 2.x-base is
epsilon at 512, 2.x-768 is v-prediction at 768. It is read, in this order, from a sidecar
``NAME.yaml`` beside the file (the web UIs' habit: the original config, ``parameterization: "v"``),
the file's ``modelspec.*`` metadata, a ``v_pred`` key; else SD 2.x is taken as 768 v-prediction
(the common 2.1) with a warning that says how to change it.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from ..bundle import Bundle, ModelLoadError
from ..card import infer_card
from .clip_bpe import tokenizer_files

TEMPLATES = Path(__file__).resolve().parent.parent / "assets" / "single_file"
UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer.text_model."
OPENCLIP = "cond_stage_model.model."
CLIP_VOCAB_SIZE = 49408
HEAD_DIM = 64
"""SD 2.x attention (UNet and OpenCLIP) and both CLIP text encoders use 64-wide heads."""


@dataclass
class Family:
    """What an original-layout checkpoint holds, as far as its header tells."""

    base: str
    """``sd1`` or ``sd2``."""
    text_encoder: str
    """``clip`` (OpenAI CLIP ViT-L/14, SD 1.x) or ``openclip`` (OpenCLIP ViT-H/14, SD 2.x)."""
    inpainting: bool
    prediction_type: str
    sample_size: int
    """Latent size; the image size is 8x."""
    guidance_dim: Optional[int]
    """Width of the LCM-style guidance input, or None for a plain (guided) model."""
    prediction_source: str
    """Where ``prediction_type`` came from: sidecar, metadata, key, default."""

    @property
    def name(self) -> str:
        words = ["SD 1.x" if self.base == "sd1" else "SD 2.x", f"{self.sample_size * 8}px",
                 "v-prediction" if self.prediction_type == "v_prediction" else "epsilon"]
        if self.inpainting:
            words.append("inpainting")
        if self.guidance_dim:
            words.append("LCM-style student")
        return " ".join(words)


def read_header(path: Path) -> tuple[dict, dict]:
    """``({key: shape}, metadata)`` of a safetensors file, without loading a tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
            return shapes, handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ModelLoadError(f"{path} is not a readable safetensors file: {exc}") from None


def not_a_checkpoint(shapes: dict) -> Optional[str]:
    """What a file that is not a whole SD 1.x/2.x checkpoint is, in words; None when it is one."""
    keys = list(shapes)
    if not keys:
        return "an empty safetensors file"
    if any("lora_" in k or ".lora." in k or k.endswith(".alpha") for k in keys):
        return "a LoRA (pass it with --lora FILE[:SCALE] on top of a model)"
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "an SDXL checkpoint (this project loads SD 1.x and 2.x)"
    if any(k.startswith("control_model.") for k in keys) or any(k.startswith("input_hint_block") for k in keys):
        return "a ControlNet (not a text-to-image model)"
    if len(keys) <= 4 and all(len(s) in (1, 2) for s in shapes.values()) and not any(
            k.startswith(("model.", "first_stage_model.", "cond_stage_model.")) for k in keys):
        return "a textual-inversion embedding (token vectors, not a model)"
    has_unet = any(k.startswith(UNET) for k in keys)
    has_vae = any(k.startswith(VAE) for k in keys)
    has_text = any(k.startswith((CLIP, OPENCLIP)) for k in keys)
    if not has_unet and (has_vae or any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys)):
        return "a VAE alone (no UNet or text encoder)"
    if not has_unet and any(k.startswith(("down_blocks.", "encoder.down_blocks.", "text_model.")) for k in keys):
        return "one diffusers component's weights (pass the whole model folder instead)"
    if has_unet and not (has_vae and has_text):
        missing = [name for name, ok in (("VAE", has_vae), ("text encoder", has_text)) if not ok]
        return f"a UNet without its {' and '.join(missing)} (not a whole checkpoint)"
    if not has_unet:
        return "not a Stable Diffusion checkpoint (no model.diffusion_model.* weights)"
    return None


def _prediction_hint(path: Path, shapes: dict, metadata: dict) -> tuple[Optional[str], str]:
    for sidecar in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if sidecar.is_file():
            match = re.search(r"parameterization:\s*['\"]?(\w+)", sidecar.read_text(errors="replace"))
            return ("v_prediction" if match and match.group(1) == "v" else "epsilon"), f"sidecar {sidecar.name}"
    declared = str(metadata.get("modelspec.prediction_type", "")).lower()
    if declared in ("v", "v_prediction", "epsilon", "eps"):
        return ("v_prediction" if declared.startswith("v") else "epsilon"), "modelspec metadata"
    architecture = str(metadata.get("modelspec.architecture", "")).lower()
    if architecture.endswith("-v") or "768-v" in architecture:
        return "v_prediction", "modelspec metadata"
    if "v_pred" in shapes:
        return "v_prediction", "v_pred key"
    return None, "default"


def detect_family(path: Path, shapes: dict, metadata: dict) -> Family:
    """The family of an original-layout checkpoint; a one-line :class:`ModelLoadError` when the
    file is something else (see :func:`not_a_checkpoint`)."""
    what = not_a_checkpoint(shapes)
    if what:
        raise ModelLoadError(f"{path} is {what}")
    openclip = any(k.startswith(OPENCLIP) for k in shapes)
    base = "sd2" if openclip else "sd1"
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise ModelLoadError(f"{path}: no UNet input convolution (model.diffusion_model.input_blocks.0.0.weight)")
    inpainting = conv_in[1] == 9
    if conv_in[1] not in (4, 9):
        raise ModelLoadError(f"{path}: a UNet with {conv_in[1]} input channels (4 or 9 are supported)")
    cond_proj = shapes.get(UNET + "time_embedding.cond_proj.weight")
    prediction, source = _prediction_hint(path, shapes, metadata)
    if prediction is None:
        prediction = "v_prediction" if base == "sd2" and not inpainting else "epsilon"
        if base == "sd2" and not inpainting:
            warnings.warn(f"{path.name}: SD 2.x file without a prediction-type hint, taken as 768px v-prediction "
                          f"(SD 2.1); for 2.x-base (epsilon, 512px) put a {path.stem}.yaml beside it without "
                          "'parameterization: \"v\"'", stacklevel=2)
    size = 96 if base == "sd2" and prediction == "v_prediction" and not inpainting else 64
    return Family(base=base, text_encoder="openclip" if openclip else "clip", inpainting=inpainting,
                  prediction_type=prediction, sample_size=size,
                  guidance_dim=int(cond_proj[1]) if cond_proj else None, prediction_source=source)


def _template(base: str, name: str) -> dict:
    return json.loads((TEMPLATES / base / f"{name}.json").read_text())


def _count(shapes: dict, prefix: str) -> int:
    """1 + the largest integer right after ``prefix`` in any key (0 when none)."""
    found = [int(m.group(1)) for k in shapes for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m]
    return 1 + max(found) if found else 0


def unet_config(family: Family, shapes: dict) -> dict:
    """The UNet's diffusers config: the family template, sizes read from the shapes."""
    u = {k[len(UNET):]: s for k, s in shapes.items() if k.startswith(UNET)}
    config = _template(family.base, "unet")
    levels, channels, attention = [], [], False
    for i in range(1, _count(u, "input_blocks.")):
        if f"input_blocks.{i}.0.op.weight" in u:
            levels.append((channels, attention))
            channels, attention = [], False
            continue
        channels.append(u[f"input_blocks.{i}.0.out_layers.3.weight"][0])
        attention = attention or f"input_blocks.{i}.1.proj_in.weight" in u
    levels.append((channels, attention))
    per_block = len(levels[0][0])
    if any(len(c) != per_block for c, _ in levels) or _count(u, "input_blocks.1.1.transformer_blocks.") > 1:
        raise ModelLoadError("the UNet's block structure is not Stable Diffusion 1.x/2.x's")
    block_out = [c[-1] for c, _ in levels]
    up_attention = [any(f"output_blocks.{(per_block + 1) * i + j}.1.proj_in.weight" in u
                        for j in range(per_block + 1)) for i in range(len(levels))]
    to_k = next(s for k, s in sorted(u.items()) if k.endswith("attn2.to_k.weight"))
    proj_in = next(s for k, s in sorted(u.items()) if k.endswith("proj_in.weight"))
    config.update(
        in_channels=u["input_blocks.0.0.weight"][1], out_channels=u["out.2.weight"][0],
        block_out_channels=block_out, layers_per_block=per_block, cross_attention_dim=to_k[1],
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for _, a in levels],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attention],
        use_linear_projection=len(proj_in) == 2, sample_size=family.sample_size)
    if family.base == "sd2":
        config["attention_head_dim"] = [max(1, c // HEAD_DIM) for c in block_out]
    if family.guidance_dim:
        config["time_cond_proj_dim"] = family.guidance_dim
    return config


def vae_config(family: Family, shapes: dict) -> dict:
    v = {k[len(VAE):]: s for k, s in shapes.items() if k.startswith(VAE)}
    config = _template(family.base, "vae")
    levels = _count(v, "encoder.down.")
    config.update(block_out_channels=[v[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in range(levels)],
                  layers_per_block=_count(v, "encoder.down.0.block."), latent_channels=v["decoder.conv_in.weight"][1],
                  down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
                  sample_size=family.sample_size * 2 ** (levels - 1))
    return config


def text_encoder_config(family: Family, shapes: dict, path: Path) -> dict:
    config = _template(family.base, "text_encoder")
    if family.text_encoder == "clip":
        tokens, positions = shapes[CLIP + "embeddings.token_embedding.weight"], shapes[
            CLIP + "embeddings.position_embedding.weight"]
        layers = _count(shapes, CLIP + "encoder.layers.")
        intermediate = shapes[CLIP + "encoder.layers.0.mlp.fc1.weight"][0]
        projection = tokens[1]
    else:
        tokens, positions = shapes[OPENCLIP + "token_embedding.weight"], shapes[OPENCLIP + "positional_embedding"]
        layers = _count(shapes, OPENCLIP + "transformer.resblocks.") - 1  # SD 2.x uses the penultimate layer
        intermediate = shapes[OPENCLIP + "transformer.resblocks.0.mlp.c_fc.weight"][0]
        projection = shapes.get(OPENCLIP + "text_projection", (0, config["projection_dim"]))[1]
    if tokens[0] != CLIP_VOCAB_SIZE:
        raise ModelLoadError(f"{path}: the text encoder has {tokens[0]} tokens, not CLIP's {CLIP_VOCAB_SIZE}; "
                             "no tokenizer ships for it")
    hidden = tokens[1]
    config.update(hidden_size=hidden, vocab_size=tokens[0], max_position_embeddings=positions[0],
                  num_hidden_layers=layers, intermediate_size=intermediate, projection_dim=projection,
                  num_attention_heads=max(1, hidden // HEAD_DIM))
    return config


def original_bundle(path: Path, shapes: dict, metadata: dict) -> Bundle:
    """A :class:`Bundle` for an original-layout checkpoint: configs, inferred card, shipped tokenizer."""
    path = Path(path)
    family = detect_family(path, shapes, metadata)
    configs = {"unet": unet_config(family, shapes), "vae": vae_config(family, shapes),
               "text_encoder": text_encoder_config(family, shapes, path),
               "scheduler": _template(family.base, "scheduler") | {"prediction_type": family.prediction_type}}
    card = infer_card(configs["unet"], configs["scheduler"])
    card.description = f"{family.name} single-file checkpoint {path.name} (prediction type from {family.prediction_source})"
    return Bundle(source=str(path), configs=configs, card=card, tokenizer_files=tokenizer_files(family.text_encoder),
                  single_file=path, extra={"original_sd": asdict(family)})


def _diffusers_folder(folder: Path, configs: dict) -> None:
    index = {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": [None, None],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "safety_checker": [None, None], "feature_extractor": [None, None], "image_encoder": [None, None],
             "requires_safety_checker": False}
    (folder / "model_index.json").write_text(json.dumps(index))
    for name in ("unet", "vae", "text_encoder", "scheduler"):
        (folder / name).mkdir()
        filename = "scheduler_config.json" if name == "scheduler" else "config.json"
        (folder / name / filename).write_text(json.dumps(configs[name]))


def load_components(bundle: Bundle):
    """The checkpoint's text encoder, UNet and VAE, converted by diffusers' single-file loader from
    configs written to a temporary folder (``local_files_only=True``: nothing is fetched).

    The LCM-style guidance input (``time_embedding.cond_proj``), which diffusers' converter does not
    map, is copied over under its own name. Raises :class:`ModelLoadError` when a weight stays unset.
    """
    import tempfile

    import torch
    from diffusers import StableDiffusionPipeline

    from ..torch_models import TorchComponents

    path = bundle.single_file
    guided = bool(bundle.configs["unet"].get("time_cond_proj_dim"))
    # An unmapped weight stays on the meta device (caught below), except for the guidance input,
    # which is unmapped by design: then initialise for real and overwrite it.
    options = {"low_cpu_mem_usage": False} if guided else {}
    with tempfile.TemporaryDirectory(prefix="ane-diffusion-sd-") as tmp:
        _diffusers_folder(Path(tmp), bundle.configs)
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), config=tmp, local_files_only=True, tokenizer=None, safety_checker=None,
                feature_extractor=None, image_encoder=None, requires_safety_checker=False,
                torch_dtype=torch.float32, **options)  # shared files are often float16; the backend casts
        except Exception as exc:
            raise ModelLoadError(f"{path}: diffusers could not convert this checkpoint "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    components = TorchComponents(pipe.text_encoder, pipe.unet, pipe.vae)
    if guided:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            weight = handle.get_tensor(UNET + "time_embedding.cond_proj.weight")
        components.unet.time_embedding.cond_proj.load_state_dict({"weight": weight.float()}, assign=True)
    for name, module in components.modules().items():
        unset = [k for k, v in list(module.named_parameters()) + list(module.named_buffers()) if v.is_meta]
        if unset:
            raise ModelLoadError(f"{path}: the {name} weights {unset[:2]} are missing from the checkpoint")
    return components


__all__ = ["Family", "detect_family", "load_components", "not_a_checkpoint", "original_bundle", "read_header"]

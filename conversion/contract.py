"""The export folder's contract ``ane_diffusion_coreml.json``: what each package takes and returns.

An app (the Swift package in ``swift_bridge/``, the Python Core ML backend) reads this one file to
know the model card, the w convention, image and latent geometry, the noise schedule, the tokenizer
files and every component's file, inputs and outputs (names, shapes, dtypes as fed to and returned
by the package). Shape (``format_version`` 1)::

    {"format_version": 1, "model": {ModelCard.to_dict()}, "w_convention": "paper: guidance_scale = 1 + w",
     "image": {"height", "width"}, "latent": {"channels", "height", "width", "scaling_factor"},
     "schedule": {the bundle's scheduler config}, "tokenizer": {"vocab", "merges", "max_length"},
     "components": {"TextEncoder" | "Unet" | "VAEDecoder" | "VAEEncoder":
                    {"file", ["chunks"], ["batch"], "inputs": [...], "outputs": [...]}},
     "recommended": {"sampler", "steps", "w"}, "compression": {per component},
     "attention": ..., "minimum_deployment_target": ..., "converter": {versions, per-component options}}

The options each component was converted with live under ``converter.components`` so a re-run
can tell a finished component (skip) from one asked for differently (an error without --force).

Torch- and coremltools-free (the runtime backend imports it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from ane_diffusion.guidance import W_SCALE

from .options import ALL_COMPONENTS, CONTRACT_NAMES, TARGETS, ConversionError

CONTRACT_NAME = "ane_diffusion_coreml.json"
FORMAT_VERSION = 1
W_CONVENTION = "paper: guidance_scale = 1 + w"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
MAX_LENGTH = 77
SOURCE_MODULE = {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae", "vae_encoder": "vae",
                 "vae_decoder_full": "vae"}
TINY_MODULE = "vae_tiny"
TINY_LOG_VARIANCE = -30.0
"""The tiny encoder is deterministic; its package still returns Apple's (mean, log-variance) layout,
with the log-variance at -30 (the floor diffusers and Apple's Swift clamp to), so that sampling the
posterior returns the mean (std 3e-7)."""


def source_module(key: str, options: Optional[dict] = None) -> str:
    """The bundle module component ``key`` is made from, given its recorded ``options``:
    ``vae_tiny`` for a tiny ``VAEDecoder`` / ``VAEEncoder``, else :data:`SOURCE_MODULE`."""
    if key in ("vae_decoder", "vae_encoder") and (options or {}).get("decoder") == "tiny":
        return TINY_MODULE
    return SOURCE_MODULE[key]
UNET_CHUNKS = ("UnetChunk1.mlpackage", "UnetChunk2.mlpackage")
FP16_EXACT_INTEGERS = 2048
"""Every integer up to 2048 is exact in float16: timesteps of schedules up to that length can be float16."""


def package_name(key: str) -> str:
    return f"{CONTRACT_NAMES[key]}.mlpackage"


def package_files(key: str, chunked: bool = False) -> list[str]:
    """The package files a component occupies in the export folder."""
    return list(UNET_CHUNKS) if key == "unet" and chunked else [package_name(key)]


# --------------------------------------------------------------------------------------------- #
# Geometry and tensor specs
# --------------------------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Geometry:
    """Static shapes of one export, derived from a bundle and the requested image size."""

    height: int
    width: int
    vae_factor: int
    unet_factor: int
    latent_channels: int
    scaling_factor: float
    text_hidden: int
    max_length: int
    guidance_dim: Optional[int]
    """The student's guidance embedding size; None for a teacher (no ``guidance_weight`` input)."""
    unet_batch: int
    num_train_timesteps: int
    prediction_type: str
    target: str = "ane-diffusion"
    """Who runs the packages: ``ane-diffusion`` or ``apple-pipeline`` (:mod:`.targets`)."""
    fixed_w: Optional[float] = None
    """The guidance weight baked into an ``apple-pipeline`` UNet."""
    sizes: tuple = ()
    """((height, width), ...) when one export takes several image sizes (enumerated shapes); the
    first is (height, width), the default shape."""
    guidance_scale: float = 1000.0
    """The card's ``guidance_embedding_scale`` (students only)."""

    @property
    def guidance(self):
        """The student's :class:`~ane_diffusion.guidance.GuidanceEmbedding`; None for a teacher."""
        from ane_diffusion.guidance import GuidanceEmbedding

        return GuidanceEmbedding(self.guidance_dim, self.guidance_scale) if self.guidance_dim else None

    @property
    def latent_height(self) -> int:
        return self.height // self.vae_factor

    @property
    def latent_width(self) -> int:
        return self.width // self.vae_factor

    @property
    def student(self) -> bool:
        return self.guidance_dim is not None


def geometry_from_bundle(bundle, height: Optional[int] = None, width: Optional[int] = None,
                         target: str = "ane-diffusion", guidance_weight: Optional[float] = None,
                         sizes: tuple = ()) -> Geometry:
    """Check that the bundle has what a conversion needs and that the size(s) fit; one-line errors."""
    from dataclasses import replace

    if sizes:
        first = geometry_from_bundle(bundle, *sizes[0], target=target, guidance_weight=guidance_weight)
        for h, w in sizes[1:]:
            geometry_from_bundle(bundle, h, w)  # each size must fit
        return replace(first, sizes=tuple(tuple(size) for size in sizes))
    if target == "apple-pipeline":
        from .targets import apple_pipeline

        fixed = apple_pipeline.check(bundle, guidance_weight)
        return replace(geometry_from_bundle(bundle, height, width), target=target, fixed_w=fixed, unet_batch=1)
    configs = bundle.configs or {}
    for name in ("unet", "vae", "text_encoder", "scheduler"):
        if not isinstance(configs.get(name), dict):
            raise ConversionError(f"model {bundle.source} has no {name} config: cannot convert it "
                                  "(convert an original single-file checkpoint to a diffusers folder first)")
    unet, vae, text = configs["unet"], configs["vae"], configs["text_encoder"]
    card = bundle.card
    vae_factor = int(bundle.vae_scale_factor)
    unet_factor = 2 ** (len(unet.get("block_out_channels", [0])) - 1)
    factor = vae_factor * unet_factor
    default = int(bundle.default_size)
    height = default if height is None else int(height)
    width = default if width is None else int(width)
    from ane_diffusion.checks import MAX_IMAGE_SIDE

    for name, value in (("height", height), ("width", width)):
        if value > MAX_IMAGE_SIDE:
            raise ConversionError(f"{name} {value} is larger than the {MAX_IMAGE_SIDE}-pixel limit a side")
        if value <= 0 or value % factor:
            raise ConversionError(f"{name} {value} cannot be taken by this model: image sizes must be multiples "
                                  f"of {factor} (VAE factor {vae_factor} x UNet downsampling {unet_factor})")
    latent_channels = int(unet.get("in_channels", 4))
    if int(vae.get("latent_channels", latent_channels)) != latent_channels:
        raise ConversionError(f"the VAE has {vae.get('latent_channels')} latent channels but the UNet takes "
                              f"{latent_channels}")
    hidden = int(text.get("hidden_size", 0))
    cross = unet.get("cross_attention_dim")
    if hidden <= 0:
        raise ConversionError("the text encoder config has no hidden_size")
    if isinstance(cross, int) and cross != hidden:
        raise ConversionError(f"the UNet's cross_attention_dim {cross} differs from the text encoder's "
                              f"hidden_size {hidden}")
    positions = int(text.get("max_position_embeddings", MAX_LENGTH))
    if positions < MAX_LENGTH:
        raise ConversionError(f"the text encoder takes {positions} tokens; Stable Diffusion prompts are {MAX_LENGTH}")
    guidance_dim = None
    if card.is_student:
        guidance_dim = int(card.guidance_embedding_dim or 0)
        proj = unet.get("time_cond_proj_dim")
        if not proj:
            raise ConversionError(f"the card says {card.kind} student, but the UNet has no guidance input "
                                  "(time_cond_proj_dim is not set)")
        if int(proj) != guidance_dim:
            raise ConversionError(f"the card's guidance_embedding_dim {guidance_dim} differs from the UNet's "
                                  f"time_cond_proj_dim {proj}")
    return Geometry(height=height, width=width, vae_factor=vae_factor, unet_factor=unet_factor,
                    latent_channels=latent_channels, scaling_factor=float(bundle.scaling_factor),
                    text_hidden=hidden, max_length=MAX_LENGTH, guidance_dim=guidance_dim,
                    guidance_scale=float(card.guidance_embedding_scale),
                    unet_batch=1 if card.is_student else 2,
                    num_train_timesteps=int(configs["scheduler"].get("num_train_timesteps", 1000)),
                    prediction_type=card.prediction_type)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    dtype: str
    """``float16``, ``float32`` or ``int32``: what the package takes or returns."""
    description: str

    shapes: tuple = ()
    """Every shape the package takes (enumerated shapes, one per image size); empty when static."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape)
        if self.shapes:
            out["shapes"] = [list(shape) for shape in self.shapes]
        else:
            out.pop("shapes")
        return out


def io_specs(key: str, geo: Geometry, precision: str,
             variant: str = "full") -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of component ``key`` for an export of geometry ``geo`` (``variant``: the
    VAE halves' ``tiny`` or ``full`` source; same tensors, the tiny encoder's log-variance is fixed);
    a multi-size export's tensors that change with the size list every shape (``shapes``)."""
    from dataclasses import replace

    if geo.target == "apple-pipeline":
        from .targets import apple_pipeline

        inputs, outputs = apple_pipeline.io_specs(key, geo)
    else:
        inputs, outputs = _io_specs(key, geo, precision, variant)
    if len(geo.sizes) < 2 or key == "text_encoder":
        return inputs, outputs
    per_size = [_io_specs(key, replace(geo, height=h, width=w, sizes=()), precision, variant) for h, w in geo.sizes]

    def flexible(specs, index):
        out = []
        for i, spec in enumerate(specs):
            all_shapes = tuple(tuple(group[index][i].shape) for group in per_size)
            out.append(replace(spec, shapes=all_shapes) if len(set(all_shapes)) > 1 else spec)
        return out

    return flexible(inputs, 0), flexible(outputs, 1)


def _io_specs(key: str, geo: Geometry, precision: str, variant: str = "full") -> tuple[list[TensorSpec], list[TensorSpec]]:
    f = "float16" if precision == "float16" else "float32"
    c, h, w = geo.latent_channels, geo.latent_height, geo.latent_width
    length, hidden = geo.max_length, geo.text_hidden
    if key == "text_encoder":
        return ([TensorSpec("input_ids", (1, length), "int32",
                            f"CLIP token ids of one prompt: start token, tokens, end token, padded with the end "
                            f"token to {length}")],
                [TensorSpec("last_hidden_state", (1, length, hidden), f,
                            "final-layer-norm hidden states, the UNet's text conditioning (transpose to "
                            f"(1, {hidden}, 1, {length}) for the Unet)"),
                 TensorSpec("pooled_outputs", (1, hidden), f, "hidden state at the first end token")])
    if key == "unet":
        b = geo.unet_batch
        t_dtype = f if geo.num_train_timesteps <= FP16_EXACT_INTEGERS else "float32"
        inputs = [TensorSpec("sample", (b, c, h, w), f, "noisy latents z_t (the VAE mean times scaling_factor, "
                             "noised)"),
                  TensorSpec("timestep", (b,), t_dtype, f"training timestep in [0, {geo.num_train_timesteps}) "
                             "(integer values); its sinusoidal embedding is computed in float32 inside"),
                  TensorSpec("encoder_hidden_states", (b, hidden, 1, length), f,
                             f"TextEncoder last_hidden_state, (B, {length}, {hidden}) transposed to "
                             f"(B, {hidden}, 1, {length})")]
        if geo.student:
            inputs.append(TensorSpec("guidance_weight", (b,), "float32",
                                     "the paper's guidance weight w (guidance_scale = 1 + w); its sinusoidal "
                                     f"embedding of w*{geo.guidance_scale:g} is computed in float32 inside the "
                                     "model"))
        desc = (f"the UNet's raw output in the card's prediction_type ({geo.prediction_type}); named "
                "noise_pred as in Apple's contract")
        if not geo.student:
            desc += ". A teacher is guided by the caller: rows of unconditional and conditional text states"
        return inputs, [TensorSpec("noise_pred", (b, c, h, w), f, desc)]
    if key in ("vae_decoder", "vae_decoder_full"):
        return ([TensorSpec("z", (1, c, h, w), f, f"latents already divided by scaling_factor "
                            f"({geo.scaling_factor:g})")],
                [TensorSpec("image", (1, 3, geo.height, geo.width), f, "RGB image in [-1, 1]")])
    if key == "vae_encoder":
        fixed = (f" (tiny encoder: deterministic, log-variance fixed at {TINY_LOG_VARIANCE:g})"
                 if variant == "tiny" else "")
        return ([TensorSpec("x", (1, 3, geo.height, geo.width), f, "RGB image in [-1, 1]")],
                [TensorSpec("latent", (1, 2 * c, h, w), f,
                            f"posterior mean (channels 0-{c - 1}) and log-variance (channels {c}-{2 * c - 1}) "
                            f"stacked, unscaled: multiply the mean by scaling_factor for UNet latents{fixed}")])
    raise KeyError(key)


def short_description(key: str, geo: Geometry, card, options: dict) -> str:
    tiny = "tiny " if options.get("decoder") == "tiny" else ""
    what = {"text_encoder": "CLIP text encoder", "vae_decoder": f"{tiny}VAE decoder",
            "vae_encoder": f"{tiny}VAE encoder", "vae_decoder_full": "full VAE decoder (beside a tiny one)",
            "unet": ("guidance-distilled student UNet (takes w; one call per step)" if geo.student
                     else "teacher UNet (batch 2: classifier-free guidance by the caller)")}[key]
    if geo.fixed_w is not None and key == "unet":
        what = f"guidance-distilled student UNet for Apple's StableDiffusionPipeline (w = {geo.fixed_w:g} fixed, epsilon out)"
    comp = options.get("compression", "none")
    comp = "" if comp == "none" else f", weights compressed {comp}"
    size = f"{geo.height}x{geo.width}" if not geo.sizes else ", ".join(f"{h}x{w}" for h, w in geo.sizes)
    return (f"ane-diffusion {what} for {size} images ({card.kind}, {card.prediction_type}); "
            f"{options.get('attention')} attention, {options.get('precision')} compute{comp}")


# --------------------------------------------------------------------------------------------- #
# Source fingerprints
# --------------------------------------------------------------------------------------------- #


def _file_signature(path: Path, digest) -> None:
    """Size plus the first and last MiB: cheap for multi-GB weights, changes whenever they are retrained."""
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(-(1 << 20), 2)
            digest.update(handle.read())


def source_fingerprint(bundle, key: str, module: Optional[str] = None) -> str:
    """A short hash of what a component's package is made from: its module's config and weights
    (and for the UNet, whether it takes w). Same bundle content -> same fingerprint, wherever it lies.
    ``module``: the source module when it is not :data:`SOURCE_MODULE`'s (see :func:`source_module`)."""
    module = module or SOURCE_MODULE[key]
    digest = hashlib.sha256()
    payload = {"config": bundle.configs.get(module)}
    if key == "unet":
        payload["student"] = bool(bundle.card.is_student)
        payload["guidance_embedding_dim"] = bundle.card.guidance_embedding_dim
        if bundle.card.guidance_embedding_scale != W_SCALE:  # absent = 1000: older exports keep their hash
            payload["guidance_embedding_scale"] = bundle.card.guidance_embedding_scale
    loras = (getattr(bundle, "extra", None) or {}).get("loras")
    if loras and module in ("unet", "text_encoder"):  # fused LoRAs change these weights
        payload["loras"] = [[lora["sha256"], lora["scale"]] for lora in loras]
    digest.update(json.dumps(payload, sort_keys=True, default=str).encode())

    if getattr(bundle, "single_file", None) is not None:
        _file_signature(Path(bundle.single_file), digest)
    elif getattr(bundle, "component_dirs", None) and bundle.weights_path(module).exists():
        _file_signature(bundle.weights_path(module), digest)
    else:  # an in-memory bundle (benchmarks): whatever identifies its weights
        digest.update(str(bundle.extra.get("weights", "")).encode())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- #
# The contract document
# --------------------------------------------------------------------------------------------- #


def source_configs(bundle) -> dict[str, dict]:
    """The few config fields an export's reader needs (kept under ``converter.source_configs``)."""
    unet, vae, text = bundle.configs["unet"], bundle.configs["vae"], bundle.configs["text_encoder"]
    pick = (lambda config, keys: {k: config[k] for k in keys if k in config})
    tiny = bundle.configs.get(TINY_MODULE)
    extra = {TINY_MODULE: {k: v for k, v in tiny.items() if not k.startswith("_")}} if isinstance(tiny, dict) else {}
    return extra | {"unet": pick(unet, ("in_channels", "out_channels", "sample_size", "block_out_channels",
                                "cross_attention_dim", "time_cond_proj_dim", "attention_head_dim")),
            "vae": pick(vae, ("block_out_channels", "latent_channels", "scaling_factor", "sample_size")),
            "text_encoder": pick(text, ("hidden_size", "num_hidden_layers", "max_position_embeddings",
                                        "vocab_size", "bos_token_id", "eos_token_id"))}


def newest_target(names) -> str:
    names = list(names)
    return max(names, key=lambda name: (TARGETS[name], name.startswith("iOS"))) if names else "iOS16"


def build_contract(bundle, geo: Geometry, records: dict[str, dict], converter: dict) -> dict[str, Any]:
    """The contract for the components in ``records`` ({key: record}); see the module docstring.

    A record is ``{"options": {...}, "files": [...], "bytes": n, "uncompressed_bytes": n, ...}`` as
    written by the converter; its options say how the package was made (precision, compression...).
    """
    card = bundle.card
    components, compression = {}, {}
    variants = {}
    for key in ALL_COMPONENTS:
        if key not in records:
            continue
        record = records[key]
        options = record["options"]
        variant = "tiny" if options.get("decoder") == "tiny" else "full"
        inputs, outputs = io_specs(key, geo, options["precision"], variant)
        entry: dict[str, Any] = {"file": package_name(key)}
        if key.startswith("vae_"):
            variants[CONTRACT_NAMES[key]] = variant
            if variant == "tiny" or key == "vae_decoder_full":
                entry["variant"] = variant
        if key == "unet":
            if options.get("chunked"):
                entry["chunks"] = list(UNET_CHUNKS)
            entry["batch"] = geo.unet_batch
        entry["inputs"] = [spec.to_dict() for spec in inputs]
        entry["outputs"] = [spec.to_dict() for spec in outputs]
        components[CONTRACT_NAMES[key]] = entry
        info = dict(record.get("compression") or {"spec": "none"})
        info["bytes"] = record.get("bytes")
        if record.get("uncompressed_bytes") is not None:
            info["uncompressed_bytes"] = record["uncompressed_bytes"]
        compression[CONTRACT_NAMES[key]] = info
    attentions = {records[key]["options"]["attention"] for key in records}
    tiny_parts = {}
    if "tiny" in variants.values():  # optional fields: exports without a tiny decoder do not have them
        tiny_parts["decoders"] = {variants[n]: n for n in ("VAEDecoderFull", "VAEDecoder") if n in variants}
        if "VAEEncoder" in variants:
            tiny_parts["encoders"] = {variants["VAEEncoder"]: "VAEEncoder"}
    extra: dict[str, Any] = {}
    if geo.sizes:  # optional, additive: readers of format 1 without it see the default size
        extra["sizes"] = [{"height": h, "width": w, "latent_height": h // geo.vae_factor,
                           "latent_width": w // geo.vae_factor} for h, w in geo.sizes]
    if geo.target != "ane-diffusion":
        extra["target"] = geo.target
    if geo.target == "apple-pipeline":
        from .targets import apple_pipeline

        extra["apple_pipeline"] = apple_pipeline.contract_section(geo, card)
    contract = {
        "format_version": FORMAT_VERSION,
        "model": card.to_dict(),
        "w_convention": W_CONVENTION,
        "image": {"height": geo.height, "width": geo.width},
        "latent": {"channels": geo.latent_channels, "height": geo.latent_height, "width": geo.latent_width,
                   "scaling_factor": geo.scaling_factor},
        "schedule": dict(bundle.configs["scheduler"]),
        "tokenizer": {"vocab": TOKENIZER_FILES[0], "merges": TOKENIZER_FILES[1], "max_length": geo.max_length},
        "components": components,
        **tiny_parts,
        "recommended": {"sampler": card.recommended_sampler, "steps": card.steps or card.recommended_steps,
                        "w": card.default_w},
        "compression": compression,
        "attention": attentions.pop() if len(attentions) == 1 else "mixed",
        "minimum_deployment_target": newest_target(records[key]["options"]["minimum_deployment_target"]
                                                   for key in records),
        "converter": {**converter, "source_model": str(bundle.source), "source_configs": source_configs(bundle),
                      "components": {CONTRACT_NAMES[key]: records[key] for key in ALL_COMPONENTS if key in records}},
    }
    contract.update(extra)
    return contract


def records_of(contract: dict) -> dict[str, dict]:
    """``{component key: record}`` of an existing contract."""
    stored = (contract.get("converter") or {}).get("components") or {}
    names = {v: k for k, v in CONTRACT_NAMES.items()}
    return {names[name]: record for name, record in stored.items() if name in names}


def read_contract(folder, error=ConversionError) -> dict:
    """Read and minimally check ``folder/ane_diffusion_coreml.json``; ``error`` is raised with one line."""
    path = Path(folder) / CONTRACT_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{folder} has no {CONTRACT_NAME}: not an ane-diffusion Core ML export folder") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        found = data.get("format_version") if isinstance(data, dict) else None
        raise error(f"{path}: unsupported contract format_version {found!r} (this version reads {FORMAT_VERSION})")
    if not isinstance(data.get("components"), dict):
        raise error(f"{path} lists no components")
    check_file_names(data, folder, error)
    return data


def contract_file_names(contract: dict) -> list[tuple[str, object]]:
    """``(where, name)`` of every file name a contract holds: tokenizer files, each component's
    package(s), each converter record's files and content entries."""
    names = []
    tokenizer = contract.get("tokenizer") or {}
    if isinstance(tokenizer, dict):
        names += [(f"tokenizer {key}", tokenizer[key]) for key in ("vocab", "merges") if key in tokenizer]
    for name, entry in contract["components"].items():
        if not isinstance(entry, dict):
            names.append((f"component {name}", entry))
            continue
        names += [(f"{name} file", entry.get("file"))] + [(f"{name} chunk", c) for c in entry.get("chunks") or []]
    for name, record in ((contract.get("converter") or {}).get("components") or {}).items():
        if isinstance(record, dict):
            names += [(f"{name} record file", f) for f in record.get("files") or []]
    return names


def check_file_names(contract: dict, folder, error=ConversionError) -> None:
    """Every file name in ``contract`` must be a plain name inside ``folder`` (see :mod:`ane_diffusion.names`);
    content entries (``converter.components.*.content``) may name files inside the packages."""
    from ane_diffusion.names import inside

    path = Path(folder) / CONTRACT_NAME
    for where, name in contract_file_names(contract):
        inside(folder, name, f"{path}: {where}", error)
    for name, record in ((contract.get("converter") or {}).get("components") or {}).items():
        for entry in (record.get("content") or {}) if isinstance(record, dict) else ():
            inside(folder, entry, f"{path}: {name} content entry", error, subfolders=True)


__all__ = ["CONTRACT_NAME", "FORMAT_VERSION", "Geometry", "TensorSpec", "W_CONVENTION", "build_contract",
           "geometry_from_bundle", "io_specs", "package_files", "package_name", "read_contract", "records_of",
           "source_fingerprint", "source_module"]

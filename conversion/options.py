"""What a conversion is asked to do, parsed and checked before anything is loaded or written.

Torch- and coremltools-free: the CLI validates its arguments with this module alone, so a bad
option fails in a fraction of a second with one line and no output folder touched.

- components: ``text_encoder``, ``unet``, ``vae_decoder``, ``vae_encoder`` (contract names
  ``TextEncoder``, ``Unet``, ``VAEDecoder``, ``VAEEncoder`` are accepted too);
- attention: ``split_einsum`` (default, ANE), ``split_einsum_v2`` (query chunks, large latents) or
  ``original`` (GPU);
- precision: ``float16`` (default; the guidance and timestep sinusoids stay float32 inside) or
  ``float32`` (debugging);
- compression per component (:class:`CompressionSpec`): ``8``, ``6``, ``4`` (k-means palettization,
  one lookup table per tensor), ``8g32`` / ``6g16`` / ``4g16`` ... (one table per group of output
  channels, iOS18+), ``int8`` (linear, per channel), ``int4`` (linear, blocks of 32, iOS18+);
- minimum deployment target: ``iOS16`` .. ``iOS26``, ``macOS13`` .. ``macOS26``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
"""Conversion order: the text encoder first (smallest), the UNet, then the VAE halves."""
OPTIONAL_COMPONENTS = ("vae_decoder_full",)
"""Converted only when named: ``vae_decoder_full`` keeps the full VAE decoder beside a tiny
``VAEDecoder`` (see :mod:`ane_diffusion.decoders`)."""
ALL_COMPONENTS = COMPONENTS + OPTIONAL_COMPONENTS
DECODER_CHOICES = ("tiny", "full")

CONTRACT_NAMES = {"text_encoder": "TextEncoder", "unet": "Unet", "vae_decoder": "VAEDecoder",
                  "vae_encoder": "VAEEncoder", "vae_decoder_full": "VAEDecoderFull"}
ATTENTION_KINDS = ("split_einsum", "split_einsum_v2", "original")  # == ane.attention.ATTENTION_KINDS
PRECISIONS = ("float16", "float32")

# Deployment targets: name -> the iOS generation it equals (coremltools' ``ct.target.iOS<N>``).
TARGETS = {"iOS16": 16, "iOS17": 17, "iOS18": 18, "iOS26": 26,
           "macOS13": 16, "macOS14": 17, "macOS15": 18, "macOS26": 26}
TOO_OLD_TARGETS = {"iOS13": 13, "iOS14": 14, "iOS15": 15, "macOS10.15": 13, "macOS11": 14, "macOS12": 15}
DEFAULT_TARGET = "iOS16"
PALETTE_BITS = (8, 6, 4)


class ConversionError(ValueError):
    """A conversion request that cannot be done; the message names the problem in one line."""


def component_key(name: str) -> str:
    """``unet`` / ``Unet`` / ``UNET`` / ``vae-decoder`` -> the canonical key (``unet``, ...)."""
    wanted = str(name).strip().lower().replace("-", "_")
    for key, contract in CONTRACT_NAMES.items():
        if wanted in (key, contract.lower(), key.replace("_", "")):
            return key
    raise ConversionError(f"unknown component {name!r}; choose from {', '.join(ALL_COMPONENTS)}")


def parse_components(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"unet,vae_decoder"`` or a list -> canonical keys in conversion order (all when empty)."""
    if value is None or value == "" or value == "all":
        return COMPONENTS
    items = value.split(",") if isinstance(value, str) else list(value)
    keys = {component_key(item) for item in items if str(item).strip()}
    if not keys:
        raise ConversionError("--components names no component")
    return tuple(key for key in ALL_COMPONENTS if key in keys)


def parse_target(value: str | None) -> str:
    """``ios16`` / ``macOS14`` -> the canonical target name; too-old or unknown targets are errors."""
    text = (value or DEFAULT_TARGET).strip()
    for name in TARGETS:
        if text.lower() == name.lower():
            return name
    for name in TOO_OLD_TARGETS:
        if text.lower() == name.lower():
            raise ConversionError(f"minimum deployment target {name} is too old: ML programs with float16 "
                                  "inputs and outputs need iOS16 / macOS13 or newer")
    raise ConversionError(f"unknown minimum deployment target {value!r}; choose from {', '.join(TARGETS)}")


def parse_sizes(value) -> tuple:
    """``"512x512,512x768"`` (height x width) or [(h, w), ...] -> ((h, w), ...) in order, no repeats."""
    if value is None or value == "" or value == ():
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    sizes = []
    for item in items:
        if isinstance(item, str):
            match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", item)
            if not match:
                raise ConversionError(f"bad size {item.strip()!r} in --sizes: write HEIGHTxWIDTH, e.g. 512x768")
            pair = (int(match.group(1)), int(match.group(2)))
        else:
            pair = tuple(int(v) for v in item)
        if len(pair) != 2 or min(pair) <= 0:
            raise ConversionError(f"bad size {item!r} in --sizes: two positive integers, height x width")
        if pair not in sizes:
            sizes.append(pair)
    return tuple(sizes)


def target_generation(name: str) -> int:
    """The iOS generation a target name stands for (macOS14 -> 17)."""
    return TARGETS[parse_target(name)]


def ios_name(generation: int) -> str:
    return f"iOS{generation}"


# --------------------------------------------------------------------------------------------- #
# Compression
# --------------------------------------------------------------------------------------------- #


@dataclass(frozen=True)
class CompressionSpec:
    """One component's weight compression.

    ``mode`` is ``palettize`` (k-means lookup tables, ``nbits`` 8/6/4, one table per tensor or,
    with ``group_size``, per group of output channels) or ``linear`` (``int8`` per output channel,
    ``int4`` per block of ``block_size`` input channels).
    """

    mode: str
    nbits: int
    group_size: Optional[int] = None
    block_size: Optional[int] = None
    target_psnr: Optional[float] = None
    """``mixed`` (``auto:35``): per-layer 4/6/8-bit tables chosen to keep the UNet at this PSNR
    (:mod:`.mixed_bit`)."""

    @property
    def name(self) -> str:
        """The canonical spelling, as accepted by :func:`parse_compression`."""
        if self.mode == "linear":
            return f"int{self.nbits}"
        if self.mode == "mixed":
            return f"auto:{self.target_psnr:g}"
        return f"{self.nbits}g{self.group_size}" if self.group_size else str(self.nbits)

    @property
    def granularity(self) -> str:
        if self.mode == "linear":
            return "per_block" if self.block_size else "per_channel"
        return "per_grouped_channel" if self.group_size else "per_tensor"

    @property
    def min_generation(self) -> int:
        """Oldest iOS generation that runs this compression (per-group / per-block need iOS18)."""
        return 18 if self.group_size or self.block_size else 16

    def describe(self) -> str:
        if self.mode == "mixed":
            return f"mixed-bit k-means palettization (4/6/8 bits per tensor, >= {self.target_psnr:g} dB on the w, t grid)"
        if self.mode == "linear":
            how = f"blocks of {self.block_size}" if self.block_size else "per channel"
            return f"int{self.nbits} linear quantization ({how})"
        how = f"one table per {self.group_size} output channels" if self.group_size else "one table per tensor"
        return f"{self.nbits}-bit k-means palettization ({how})"

    def to_dict(self) -> dict[str, Any]:
        out = {"spec": self.name, "mode": self.mode, "nbits": self.nbits, "granularity": self.granularity}
        if self.group_size:
            out["group_size"] = self.group_size
        if self.block_size:
            out["block_size"] = self.block_size
        return out


_PALETTE = re.compile(r"^(\d+)(?:-?bits?)?(?:g(\d+))?$")


def parse_compression(value: str | None, component: str = "") -> Optional[CompressionSpec]:
    """``"6"`` / ``"6-bit"`` / ``"4g16"`` / ``"int8"`` / ``"int4"`` / ``"none"`` -> a spec (None: no compression)."""
    text = ("" if value is None else str(value)).strip().lower()
    where = f" for {component}" if component else ""
    if text in ("", "none", "fp16", "float16", "no"):
        return None
    if text == "auto" or text.startswith("auto:"):
        try:
            target = float(text.split(":", 1)[1]) if ":" in text else 35.0
        except ValueError:
            target = float("nan")
        if not (10.0 <= target <= 80.0):
            raise ConversionError(f"bad compression {value!r}{where}: auto:PSNR takes a target between 10 and 80 dB, "
                                  "e.g. auto:35")
        return CompressionSpec("mixed", 0, target_psnr=target)
    if text == "int8":
        return CompressionSpec("linear", 8)
    if text == "int4":
        return CompressionSpec("linear", 4, block_size=32)
    match = _PALETTE.match(text)
    if match is None:
        raise ConversionError(f"unknown compression {value!r}{where}; use 8, 6 or 4 (k-means palettization, "
                              "e.g. 4g16 for per-channel-group tables), int8 or int4 (linear quantization)")
    bits = int(match.group(1))
    if bits not in PALETTE_BITS:
        raise ConversionError(f"unsupported bit width {bits}{where}: palettization takes 8, 6 or 4 bits "
                              "(or int8 / int4 linear quantization)")
    group = int(match.group(2)) if match.group(2) else None
    if group is not None and (group < 1 or group & (group - 1)):
        raise ConversionError(f"palettization group size {group}{where} must be a power of two")
    return CompressionSpec("palettize", bits, group_size=group)


def parse_compress_map(value: str | Mapping[str, Any] | None) -> dict[str, CompressionSpec]:
    """``"unet=6,text_encoder=8"`` (or a dict) -> ``{component key: spec}``; ``all=6`` sets every component."""
    if not value:
        return {}
    if isinstance(value, str):
        pairs = []
        for item in value.split(","):
            if not item.strip():
                continue
            if "=" not in item and item.strip().lower().startswith("auto"):
                item = f"unet={item}"  # the mixed-bit recipe is measured on the UNet's output
            if "=" not in item:
                raise ConversionError(f"--compress expects COMPONENT=BITS pairs (e.g. unet=6,text_encoder=8), "
                                      f"got {item.strip()!r}")
            name, spec = item.split("=", 1)
            pairs.append((name.strip(), spec.strip()))
    else:
        pairs = [(name, spec) for name, spec in value.items()]
    out: dict[str, CompressionSpec] = {}
    for name, spec in pairs:
        keys = COMPONENTS if str(name).strip().lower() == "all" else (
            ("vae_decoder", "vae_encoder") if str(name).strip().lower() == "vae" else (component_key(name),))
        for key in keys:
            parsed = spec if isinstance(spec, CompressionSpec) else parse_compression(spec, key)
            if parsed is None:
                out.pop(key, None)
            else:
                out[key] = parsed
    return out


# --------------------------------------------------------------------------------------------- #
# Options
# --------------------------------------------------------------------------------------------- #


@dataclass
class ConvertOptions:
    """Everything ``convert`` is asked to do. Strings are accepted where the CLI would pass them;
    :meth:`validated` returns a copy with every field parsed and checked.

    Attributes:
        model: model folder / ``.safetensors`` file / hub id, or an already resolved ``Bundle``.
        output: the export folder (created if missing; its parent must exist).
        components: subset of :data:`COMPONENTS` (a list or ``"unet,vae_decoder"``); default all four.
        attention: one of :data:`ATTENTION_KINDS`.
        precision: ``float16`` (default) or ``float32``.
        compress: ``{component: spec}`` or ``"unet=6,text_encoder=8"``; see :func:`parse_compression`.
        chunk_unet: split the UNet into ``UnetChunk1`` / ``UnetChunk2`` (compressed after the split).
        height, width: image size in pixels (default: the model's); static in the packages.
        min_target: minimum deployment target (``iOS16`` default).
        force: reconvert components the folder already holds (and replace different ones).
        compile: on macOS, also compile each package to ``.mlmodelc`` with ``xcrun coremlcompiler``.
        attention_chunk_size: query chunk of ``split_einsum_v2``.
        vae_decoder_precision: ``float16`` / ``float32`` for the VAEDecoder alone (default: ``precision``).
            ``float32`` is the remedy for float16 decoders whose activations overflow (NaN/inf, black images).
        decoder: ``tiny`` (the bundle's distilled tiny autoencoder becomes ``VAEDecoder`` and
            ``VAEEncoder``), ``full`` (its VAE), or None: tiny when the bundle has one.
        target: ``ane-diffusion`` (default; this project's runtimes, w an input) or ``apple-pipeline``
            (Apple's Swift StableDiffusionPipeline: w fixed, epsilon output, float32 tensors; see
            :mod:`.targets.apple_pipeline`).
        guidance_weight: the w baked into an ``apple-pipeline`` UNet (default: the card's default w).
        sizes: image sizes ``"512x512,512x768"`` (height x width) or [(h, w), ...]: one package
            takes all of them (Core ML enumerated shapes; the first is the default shape).
    """

    model: Any = None
    output: Any = None
    components: Any = COMPONENTS
    attention: str = "split_einsum"
    precision: str = "float16"
    compress: Any = field(default_factory=dict)
    chunk_unet: bool = False
    height: Optional[int] = None
    width: Optional[int] = None
    min_target: str = DEFAULT_TARGET
    force: bool = False
    compile: bool = True
    attention_chunk_size: int = 512
    vae_decoder_precision: Optional[str] = None
    decoder: Optional[str] = None
    target: str = "ane-diffusion"
    guidance_weight: Optional[float] = None
    sizes: Any = None

    def validated(self) -> "ConvertOptions":
        """A parsed copy; raises :class:`ConversionError` naming the first problem."""
        if self.model is None or self.model == "":
            raise ConversionError("no model given (--model)")
        if self.output is None or str(self.output) == "":
            raise ConversionError("no output folder given (--output)")
        components = parse_components(self.components)
        if self.attention not in ATTENTION_KINDS:
            raise ConversionError(f"unsupported attention {self.attention!r}; choose from {', '.join(ATTENTION_KINDS)}")
        precision = {"fp16": "float16", "fp32": "float32"}.get(str(self.precision).lower(), str(self.precision).lower())
        if precision not in PRECISIONS:
            raise ConversionError(f"unsupported precision {self.precision!r}; choose float16 or float32")
        decoder_precision = None
        if self.vae_decoder_precision is not None:
            decoder_precision = {"fp16": "float16", "fp32": "float32"}.get(
                str(self.vae_decoder_precision).lower(), str(self.vae_decoder_precision).lower())
            if decoder_precision not in PRECISIONS:
                raise ConversionError(f"unsupported VAE decoder precision {self.vae_decoder_precision!r}; "
                                      "choose float16 or float32")
            if "vae_decoder" not in components:
                raise ConversionError("--vae-decoder-precision needs vae_decoder among --components")
        target = parse_target(self.min_target)
        compress = parse_compress_map(self.compress)
        missing = [key for key in compress if key not in components]
        if missing:
            raise ConversionError(f"--compress names {', '.join(missing)}, which is not being converted "
                                  f"(--components {','.join(components)})")
        for key, spec in compress.items():
            if spec.min_generation > TARGETS[target]:
                raise ConversionError(f"{spec.describe()} for {key} needs iOS{spec.min_generation} / "
                                      f"macOS{spec.min_generation - 3} or newer; --min-target is {target}")
        for key, spec in compress.items():
            if spec.mode == "mixed" and key != "unet":
                raise ConversionError(f"auto:PSNR picks bit widths from the UNet's output over w and t; it "
                                      f"cannot be used for {key} (give it 8, 6 or 4)")
            if spec.mode == "mixed" and self.chunk_unet:
                raise ConversionError("auto:PSNR compression does not support --chunk-unet yet")
        if self.chunk_unet and "unet" not in components:
            raise ConversionError("--chunk-unet needs the unet among --components")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConversionError(f"{name} must be a positive integer, got {value!r}")
        if self.decoder is not None and self.decoder not in DECODER_CHOICES:
            raise ConversionError(f"unknown decoder {self.decoder!r}; choose tiny or full")
        if int(self.attention_chunk_size) < 1:
            raise ConversionError("attention_chunk_size must be >= 1")
        output = self.output if isinstance(self.output, Path) else Path(os.fspath(self.output))
        from .targets import TARGETS as KINDS

        kind = str(self.target).strip().lower()
        if kind not in KINDS:
            raise ConversionError(f"unknown target {self.target!r}; choose from {', '.join(KINDS)}")
        if self.guidance_weight is not None and kind != "apple-pipeline":
            raise ConversionError("--guidance-weight fixes w for --target apple-pipeline; the default target "
                                  "takes w at run time")
        sizes = parse_sizes(self.sizes)
        if sizes and (self.height is not None or self.width is not None):
            raise ConversionError("give either --sizes or --height/--width, not both")
        if len(sizes) > 1 and kind == "apple-pipeline":
            raise ConversionError("Apple's pipeline takes the image size from the Unet's default shape, so an "
                                  "apple-pipeline export holds one size: convert one folder per size")
        height, width = (sizes[0] if sizes else (self.height, self.width))
        return replace(self, output=output, components=components, precision=precision, min_target=target,
                       compress=compress, chunk_unet=bool(self.chunk_unet), attention_chunk_size=int(self.attention_chunk_size),
                       vae_decoder_precision=decoder_precision,
                       target=kind, sizes=sizes if len(sizes) > 1 else (), height=height, width=width)

    def component_options(self, key: str) -> dict[str, Any]:
        """The options that shape one component's package (recorded in the contract; a re-run
        with different ones is refused without ``force``). Call on a validated copy."""
        spec = self.compress.get(key)
        precision = self.precision
        if key == "vae_decoder" and self.vae_decoder_precision:
            precision = self.vae_decoder_precision
        record = {"attention": self.attention, "precision": precision,
                  "compression": spec.name if spec else "none", "minimum_deployment_target": self.min_target}
        if self.attention == "split_einsum_v2":
            record["attention_chunk_size"] = self.attention_chunk_size
        if key == "unet":
            record["chunked"] = bool(self.chunk_unet)
        if key in ("vae_decoder", "vae_encoder") and self.decoder == "tiny":
            record["decoder"] = "tiny"  # absent: the full VAE (what exports made before tiny decoders hold)
        if self.target != "ane-diffusion":
            record["target"] = self.target
        if self.sizes and key != "text_encoder":
            record["sizes"] = [f"{h}x{w}" for h, w in self.sizes]
        return record


__all__ = ["ALL_COMPONENTS", "ATTENTION_KINDS", "COMPONENTS", "DECODER_CHOICES", "OPTIONAL_COMPONENTS",
           "CONTRACT_NAMES", "CompressionSpec", "ConversionError",
           "ConvertOptions", "PRECISIONS", "TARGETS", "component_key", "parse_components",
           "parse_compress_map", "parse_compression", "parse_sizes", "parse_target", "target_generation"]

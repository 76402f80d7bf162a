"""The Core ML backend: the packages of a Core ML export folder, on the same sampler code.

    python -m ane_diffusion generate "a red circle" --backend coreml --model EXPORT_DIR

An export folder (written by ``python -m ane_diffusion convert``) holds ``TextEncoder``, ``Unet``
(or ``UnetChunk1`` + ``UnetChunk2``), ``VAEDecoder`` and ``VAEEncoder`` packages, the tokenizer
files and the contract ``ane_diffusion_coreml.json``. :func:`load_export_bundle` turns the contract
into a :class:`~ane_diffusion.bundle.Bundle` (card, schedule, tokenizer, geometry) so
:class:`~ane_diffusion.pipeline.Pipeline` runs unchanged; :class:`CoreMLBackend` implements the
backend interface (see :mod:`ane_diffusion.backends`).

On macOS the packages run through Core ML (coremltools ``MLModel``, or ``CompiledMLModel`` when a
compiled ``.mlmodelc`` sits next to a package) on the chosen compute units. Elsewhere they run
through the numpy MIL executor of ``ane_diffusion_conversion`` (slow; a one-line notice says so):
the same graph maths, not Core ML's kernels.

The packages have static shapes: images must be the size the export was converted for, and batches
are fed in groups of the UNet's batch (1 for a student, 2 for a teacher; padded when needed).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np

from ..bundle import Bundle, ModelLoadError

CONTRACT_NAME = "ane_diffusion_coreml.json"
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
REQUIRED = ("TextEncoder", "Unet", "VAEDecoder")
EXECUTOR_NOTICE = ("notice: Core ML runs only on macOS; running the packages through the numpy MIL executor "
                   "instead (slow, for checking the converted graphs)")


def is_export_dir(path) -> bool:
    """True for a folder holding a Core ML export contract."""
    return Path(path).is_dir() and (Path(path) / CONTRACT_NAME).is_file()


def read_export_contract(folder) -> dict:
    from ane_diffusion_conversion.contract import read_contract

    return read_contract(folder, error=ModelLoadError)


def load_export_bundle(folder) -> Bundle:
    """A Bundle built from an export folder's contract: card, scheduler config, tokenizer files and
    minimal configs carrying what the pipeline reads (latent channels, the export's image size as
    the default size, the VAE factor, the UNet's downsampling, the scaling factor)."""
    from ..card import CardError, ModelCard

    folder = Path(folder)
    contract = read_export_contract(folder)
    if contract.get("target", "ane-diffusion") != "ane-diffusion":
        raise ModelLoadError(f"{folder} is a Core ML export for {contract['target']} (Apple's Swift "
                             "StableDiffusionPipeline, w fixed); run it there, or check it with `verify`")
    try:
        card = ModelCard.from_dict(contract["model"])
    except (CardError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"bad model card in {folder / CONTRACT_NAME}: {exc}") from None
    tokenizer = contract.get("tokenizer", {})
    files = {}
    for key, default in (("vocab", "vocab.json"), ("merges", "merges.txt")):
        path = folder / tokenizer.get(key, default)
        if not path.is_file():
            raise ModelLoadError(f"Core ML export {folder} is missing its tokenizer file {path.name}")
        files[default] = path.read_text(encoding="utf-8")
    image, latent = contract["image"], contract["latent"]
    vae_factor = int(image["height"]) // int(latent["height"])
    source = (contract.get("converter") or {}).get("source_configs") or {}
    unet_source, vae_source = dict(source.get("unet") or {}), dict(source.get("vae") or {})
    vae_blocks = vae_source.get("block_out_channels")
    if not vae_blocks or 2 ** (len(vae_blocks) - 1) != vae_factor:
        vae_blocks = [0] * (vae_factor.bit_length())  # length log2(factor) + 1: what vae_scale_factor reads
    configs = {
        "unet": {**unet_source, "in_channels": int(latent["channels"]), "sample_size": int(latent["height"]),
                 "block_out_channels": unet_source.get("block_out_channels") or [0]},
        "vae": {**vae_source, "block_out_channels": vae_blocks, "latent_channels": int(latent["channels"]),
                "scaling_factor": float(latent["scaling_factor"])},
        "text_encoder": dict(source.get("text_encoder") or {}),
        "scheduler": dict(contract["schedule"]),
    }
    extra = {"coreml_contract": contract}
    if "decoders" in contract:  # an export with a tiny decoder (optional contract fields)
        extra["decoders"] = tuple(d for d in ("tiny", "full") if d in contract["decoders"])
        if source.get("vae_tiny"):
            configs["vae_tiny"] = dict(source["vae_tiny"])
    return Bundle(source=str(folder), configs=configs, card=card, tokenizer_files=files, root=folder, extra=extra)


def vae_component(contract: dict, part: str, variant: str = "full") -> str:
    """The contract name of the ``decoder`` or ``encoder`` of ``variant`` (``tiny`` / ``full``).

    Exports made before tiny decoders have no ``decoders`` / ``encoders`` map: their VAEDecoder and
    VAEEncoder are the full VAE's."""
    table = contract.get("decoders" if part == "decoder" else "encoders")
    default = "VAEDecoder" if part == "decoder" else "VAEEncoder"
    if table is None:
        if variant != "full":
            raise ModelLoadError(f"this Core ML export has no tiny {part}; use --decoder full")
        return default
    if variant not in table:
        raise ModelLoadError(f"this Core ML export has no {variant} {part}; use --decoder "
                             f"{'full' if variant == 'tiny' else 'tiny'}")
    return table[variant]


class CoreMLBackend:
    """Backend interface (encode_text, predict, decode, encode_image) over an export's packages."""

    name = "coreml"

    def __init__(self, bundle_or_export_dir, compute_units: str = "ALL", engine: str = "auto"):
        if isinstance(bundle_or_export_dir, Bundle):
            bundle = bundle_or_export_dir
            if "coreml_contract" not in bundle.extra:
                raise ModelLoadError(f"--backend coreml needs a Core ML export folder (make one with "
                                     f"`python -m ane_diffusion convert`); {bundle.source} is not one")
        else:
            if not is_export_dir(bundle_or_export_dir):
                raise ModelLoadError(f"{bundle_or_export_dir} is not a Core ML export folder (no {CONTRACT_NAME})")
            bundle = load_export_bundle(bundle_or_export_dir)
        units = str(compute_units).upper()
        if units not in COMPUTE_UNITS:
            raise ValueError(f"unknown compute units {compute_units!r}; choose from {', '.join(COMPUTE_UNITS)}")
        from ane_diffusion_conversion.runtime import resolve_engine

        self.bundle = bundle
        self.folder = Path(bundle.root)
        self.contract = bundle.extra["coreml_contract"]
        self.compute_units = units
        self.engine = resolve_engine(engine)
        missing = [name for name in REQUIRED if name not in self.contract["components"]]
        if missing:
            raise ModelLoadError(f"Core ML export {self.folder} lacks {', '.join(missing)} (convert them with "
                                 "`python -m ane_diffusion convert --components ...`)")
        self._runners: dict = {}
        if self.engine == "executor":
            print(EXECUTOR_NOTICE, file=sys.stderr)

    def precision(self, component: str) -> Optional[str]:
        """The compute precision the export's package of ``component`` (``unet``, ``vae_decoder``, ...)
        was converted with, as its contract records it (None when not recorded)."""
        from ane_diffusion_conversion.options import CONTRACT_NAMES

        record = ((self.contract.get("converter") or {}).get("components") or {}).get(CONTRACT_NAMES.get(component))
        return ((record or {}).get("options") or {}).get("precision")

    def internal_overflow(self, component: str) -> Optional[str]:
        """Where float16 arithmetic overflowed inside ``component``'s package during its last call
        (the numpy executor sees every intermediate; Core ML does not expose them: None there)."""
        from ane_diffusion_conversion.options import CONTRACT_NAMES

        runner = self._runners.get(CONTRACT_NAMES.get(component))
        return getattr(runner, "overflow", None)

    def runner(self, name: str):
        if name not in self._runners:
            from ane_diffusion_conversion.runtime import ComponentRunner

            if name not in self.contract["components"]:
                raise ModelLoadError(f"Core ML export {self.folder} has no {name}")
            try:
                self._runners[name] = ComponentRunner(self.folder, self.contract, name, self.engine,
                                                      self.compute_units)
            except FileNotFoundError as exc:
                raise ModelLoadError(str(exc)) from None
        return self._runners[name]

    # -- backend interface --------------------------------------------------------------------
    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        runner = self.runner("TextEncoder")
        rows = [runner.predict({"input_ids": np.asarray(input_ids[i:i + 1], dtype=np.int32)})["last_hidden_state"]
                for i in range(input_ids.shape[0])]
        return np.concatenate(rows).astype(np.float32)

    def _check_latents(self, shape) -> None:
        latent, image = self.contract["latent"], self.contract["image"]
        want = (int(latent["channels"]), int(latent["height"]), int(latent["width"]))
        sizes = self.contract.get("sizes") or []
        if sizes and tuple(shape[1:]) not in {(want[0], s["latent_height"], s["latent_width"]) for s in sizes}:
            from ..pipeline import GenerationError

            listed = ", ".join(f"{s['height']}x{s['width']}" for s in sizes)
            raise GenerationError(f"this Core ML export takes {listed} images (height x width); pass "
                                  "--height/--width of one of them or convert again with --sizes")
        if not sizes and tuple(shape[1:]) != want:
            from ..pipeline import GenerationError

            raise GenerationError(
                f"this Core ML export was converted for {image['height']}x{image['width']} images (latents "
                f"{want[1]}x{want[2]}); pass --height {image['height']} --width {image['width']} or convert "
                "again with --height/--width")

    def predict(self, sample, timestep: int, hidden, w=None) -> np.ndarray:
        self._check_latents(sample.shape)
        runner = self.runner("Unet")
        batch, size = sample.shape[0], runner.batch
        ehs = np.ascontiguousarray(np.asarray(hidden, np.float32).transpose(0, 2, 1)[:, :, None, :])  # (B, C, 1, S)
        student = "guidance_weight" in runner.inputs
        if student:
            w = np.zeros(batch, np.float32) if w is None else np.broadcast_to(np.asarray(w, np.float32), (batch,))
        outputs = []
        for start in range(0, batch, size):
            rows = np.arange(start, min(start + size, batch))
            take = np.concatenate([rows, np.full(size - len(rows), rows[-1])])  # pad a short last group
            feeds = {"sample": sample[take], "timestep": np.full(size, timestep, np.float32),
                     "encoder_hidden_states": ehs[take]}
            if student:
                feeds["guidance_weight"] = w[take]
            outputs.append(runner.predict(feeds)["noise_pred"][: len(rows)])
        return np.concatenate(outputs).astype(np.float32)

    def decode(self, latents, decoder: str = "full") -> np.ndarray:
        self._check_latents(latents.shape)
        runner = self.runner(vae_component(self.contract, "decoder", decoder))
        return np.concatenate([runner.predict({"z": latents[i:i + 1]})["image"]
                               for i in range(latents.shape[0])]).astype(np.float32)

    def encode_image(self, images, encoder: str = "full") -> np.ndarray:
        runner = self.runner(vae_component(self.contract, "encoder", encoder))
        channels = int(self.contract["latent"]["channels"])
        return np.concatenate([runner.predict({"x": images[i:i + 1]})["latent"][:, :channels]
                               for i in range(images.shape[0])]).astype(np.float32)


def resolve_model(model: Optional[str]) -> Bundle:
    """``resolve_bundle`` that also takes an export folder (what ``api.load_pipeline`` needs)."""
    if model is not None and is_export_dir(model):
        return load_export_bundle(model)
    from ..bundle import resolve_bundle

    return resolve_bundle(model)


__all__ = ["CoreMLBackend", "EXECUTOR_NOTICE", "is_export_dir", "load_export_bundle", "resolve_model"]

"""Convert a bundle's text encoder, UNet and VAE halves into Core ML packages plus the contract.

    from ane_diffusion_conversion import ConvertOptions, convert_bundle
    result = convert_bundle(ConvertOptions(model="runs/student", output="export", compress="unet=6"))

Per component: load (its module only) -> ANE rewrite + trace -> ``ct.convert`` (ML Program, static
shapes, float16 compute with the sinusoid embeddings in float32) -> [bisect into two chunks] ->
[compress] -> metadata + save -> [macOS: ``xcrun coremlcompiler compile``]. One progress line per
stage.

Writing: every option is checked and the model resolved before anything is written. Each
component is built in a hidden ``.<Name>.*.ane-partial`` folder inside the export folder and moved
into place when complete; the contract is rewritten (atomically) after each finished component, so
it always lists exactly the finished packages. An interrupted or failed run leaves no partial
package; a re-run skips finished components whose recorded options match, reconverts those asked
for with ``force``, and refuses (one line) components recorded with different options, folders
holding something other than an export, and exports of different weights or image size.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from .contract import (CONTRACT_NAME, SOURCE_MODULE, TOKENIZER_FILES, Geometry, build_contract,
                       geometry_from_bundle, io_specs, package_files, read_contract, records_of,
                       short_description, source_fingerprint, source_module)
from .integrity import package_content, problems, summary
from .options import COMPONENTS, CONTRACT_NAMES, TARGETS, ConversionError, ConvertOptions
from .progress import Progress, human_bytes

PARTIAL_SUFFIX = ".ane-partial"
SHARED_OPTIONS = ("height", "width")
"""Options every component of one folder must share (the packages are used together)."""


@dataclass
class ConvertResult:
    output: Path
    contract: dict
    converted: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    events: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------- #
# Files
# --------------------------------------------------------------------------------------------- #


def package_bytes(path) -> int:
    """Size on disk of a package folder (or file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _is_partial(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX)


def inspect_output(out: Path) -> Optional[dict]:
    """The contract of an existing export in ``out``; None for a missing or empty folder.

    A folder holding anything else (no contract) is refused: we never write into someone's files.
    """
    from ane_diffusion.atomic import OutputError

    if not out.exists():
        return None
    if not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder")
    if (out / CONTRACT_NAME).exists():
        return read_contract(out, error=lambda message: ConversionError(
            f"{message}; remove the folder or choose another --output"))
    others = [p.name for p in out.iterdir() if not _is_partial(p)]
    if others:
        shown = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
        raise OutputError(f"{out} already holds files that are not an ane-diffusion Core ML export ({shown}); "
                          "choose a new or empty folder")
    return None


def _check_parent(out: Path) -> None:
    from ane_diffusion.atomic import OutputError

    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {out}: folder {parent} is not writable")


def _write_text_atomic(path: Path, text: str) -> None:
    from ane_diffusion.atomic import atomic_file

    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_contract(out: Path, contract: dict) -> None:
    import json

    _write_text_atomic(out / CONTRACT_NAME, json.dumps(contract, indent=2) + "\n")


# --------------------------------------------------------------------------------------------- #
# Planning
# --------------------------------------------------------------------------------------------- #


def _diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    parts = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(parts)


def _record_options(opts: ConvertOptions, key: str, geo: Geometry, bundle) -> dict:
    options = opts.component_options(key)
    options.update(height=geo.height, width=geo.width,
                   source=source_fingerprint(bundle, key, source_module(key, options)))
    if key == "unet":
        options["batch"] = geo.unet_batch
        if geo.fixed_w is not None:
            options["guidance_weight"] = geo.fixed_w
    return options


def _plan(opts: ConvertOptions, out: Path, records: dict, wanted: dict, shared: dict, sources: dict):
    """(to convert, to skip) among the requested components; errors for conflicting existing ones.

    ``wanted``: {key: options of this run}; ``shared``: the options every component of a folder must
    share; ``sources``: {key: fingerprint of this bundle's module} for the components already there.
    """
    todo, skip, notes = [], [], []
    for key in opts.components:
        name = CONTRACT_NAMES[key]
        record = records.get(key)
        if record is None:
            todo.append(key)
            continue
        same = record.get("options") == wanted[key]
        damage = summary(problems(out, record)) if same and not opts.force else None
        if same and damage is None and not opts.force:
            skip.append(key)
        elif same and damage is not None:
            notes.append((name, f"{damage}: converting it again"))
            todo.append(key)
        elif not same and not opts.force:
            raise ConversionError(f"{out} already holds {name} converted differently "
                                  f"({_diff(record.get('options', {}), wanted[key])}); pass --force to replace it")
        else:
            todo.append(key)
    for key, record in records.items():
        if key in opts.components:
            continue
        old = record.get("options", {})
        clash = [f"{k} {old.get(k)} (new {shared[k]})" for k in SHARED_OPTIONS if old.get(k) != shared[k]]
        if clash:
            raise ConversionError(f"{out} holds {CONTRACT_NAMES[key]} converted for {', '.join(clash)}: convert "
                                  f"it too (--components ...,{key} --force) or use another --output")
        if old.get("source") != sources[key]:
            raise ConversionError(f"{out} holds {CONTRACT_NAMES[key]} converted from different {SOURCE_MODULE[key]} "
                                  f"weights or config: convert it too (--components ...,{key} --force) or use "
                                  "another --output")
    return todo, skip, notes


def requested_components(records: dict, components) -> list[str]:
    """Contract names of every component the folder should hold once this run finishes: the ones it
    holds and the ones asked for. Recorded as ``converter.requested`` so that ``verify`` can name the
    components an interrupted run never wrote."""
    keys = set(records) | set(components)
    return [CONTRACT_NAMES[key] for key in COMPONENTS if key in keys]


def _converter_info() -> dict:
    from importlib import metadata

    info = {}
    for dist in ("coremltools", "torch", "diffusers", "transformers", "ane-diffusion"):
        try:
            info[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist.replace("-", "_")] = None
    return info


# --------------------------------------------------------------------------------------------- #
# One component
# --------------------------------------------------------------------------------------------- #


def _np_dtype(dtype: str):
    import numpy as np

    return {"float16": np.float16, "float32": np.float32, "int32": np.int32}[dtype]


def _shape(ct, spec):
    """A static shape, or Core ML enumerated shapes (default first) for a multi-size export."""
    if not spec.shapes:
        return spec.shape
    return ct.EnumeratedShapes(shapes=[tuple(shape) for shape in spec.shapes], default=tuple(spec.shape))


def _set_metadata(mlmodel, key: str, geo: Geometry, bundle, options: dict, chunk: Optional[int]) -> None:
    from ane_diffusion import __version__

    card = bundle.card
    inputs, outputs = io_specs(key, geo, options["precision"])
    described = {spec.name: spec.description for spec in inputs + outputs}
    spec = mlmodel.get_spec()
    text = short_description(key, geo, card, options)
    if chunk is not None:
        text = f"chunk {chunk} of 2 of the " + text.replace("ane-diffusion ", "", 1)
    mlmodel.short_description = text
    mlmodel.author = f"ane-diffusion {__version__} (converted from {Path(str(bundle.source)).name})"
    mlmodel.version = f"{__version__}"
    mlmodel.license = "see the source model's license"
    for var in spec.description.input:
        mlmodel.input_description[var.name] = described.get(
            var.name, "intermediate activation: an output of UnetChunk1 of the same name")
    for var in spec.description.output:
        mlmodel.output_description[var.name] = described.get(
            var.name, "intermediate activation: feed it to UnetChunk2 under the same name")
    meta = {
        "ane_diffusion.format_version": "1",
        "ane_diffusion.component": CONTRACT_NAMES[key] + (f"Chunk{chunk}" if chunk else ""),
        "ane_diffusion.model_kind": card.kind,
        "ane_diffusion.prediction_type": card.prediction_type,
        "ane_diffusion.w_convention": "paper: guidance_scale = 1 + w",
        "ane_diffusion.guidance_embedding_dim": str(geo.guidance_dim or ""),
        "ane_diffusion.guidance_embedding_scale": str(geo.guidance_scale if geo.guidance_dim else ""),
        "ane_diffusion.image_size": f"{geo.height}x{geo.width}",
        "ane_diffusion.latent_shape": f"{geo.latent_channels}x{geo.latent_height}x{geo.latent_width}",
        "ane_diffusion.scaling_factor": f"{geo.scaling_factor:g}",
        "ane_diffusion.attention": options["attention"],
        "ane_diffusion.precision": options["precision"],
        "ane_diffusion.compression": options["compression"],
        "ane_diffusion.minimum_deployment_target": options["minimum_deployment_target"],
    }
    if geo.sizes and key != "text_encoder":
        meta["ane_diffusion.image_sizes"] = ",".join(f"{h}x{w}" for h, w in geo.sizes)
    if geo.target != "ane-diffusion":
        meta["ane_diffusion.target"] = geo.target
    if geo.fixed_w is not None and key == "unet":
        meta["ane_diffusion.guidance_weight"] = f"{geo.fixed_w:g}"
        meta["ane_diffusion.prediction_type"] = "epsilon"
        meta["ane_diffusion.source_prediction_type"] = card.prediction_type
    if geo.target == "apple-pipeline" and key in ("vae_decoder", "vae_encoder"):
        meta["ane_diffusion.scaling_factor"] = "0.18215 (the VAE's own factor is folded in)"
    if key == "unet":
        meta["ane_diffusion.batch"] = str(geo.unet_batch)
        meta["ane_diffusion.timestep_range"] = f"0-{geo.num_train_timesteps - 1}"
    for k, v in meta.items():
        mlmodel.user_defined_metadata[k] = v


def _compile(path: Path, progress: Progress, name: str) -> None:
    """macOS only: ``xcrun coremlcompiler compile X.mlpackage DIR`` -> ``DIR/X.mlmodelc``."""
    with progress.stage(name, "compile") as info:
        proc = subprocess.run(["xcrun", "coremlcompiler", "compile", str(path), str(path.parent)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ConversionError(f"xcrun coremlcompiler failed on {path.name}: {last[0]}")
        info["detail"] = path.with_suffix(".mlmodelc").name


class _Modules:
    """Source modules loaded once, rewritten once, dropped after the last component that needs them."""

    def __init__(self, bundle, opts: ConvertOptions, todo: list, loader: Callable, progress: Progress,
                 wanted: Optional[dict] = None):
        self.bundle, self.opts, self.loader, self.progress = bundle, opts, loader, progress
        self.module_of = {k: source_module(k, (wanted or {}).get(k)) for k in todo}
        self.remaining = {name: [k for k in todo if self.module_of[k] == name] for name in set(self.module_of.values())}
        self.cache: dict = {}

    def get(self, key: str):
        from .components import rewrite

        name = self.module_of[key]
        if name not in self.cache:
            with self.progress.stage(CONTRACT_NAMES[key], "load") as info:
                module = self.loader(self.bundle, name)
                self.cache[name] = rewrite(name, module, self.opts.attention, self.opts.attention_chunk_size)
                count = sum(p.numel() for p in module.parameters())
                info["detail"] = (f"{count / 1e6:.1f} M" if count >= 1e5 else f"{count / 1e3:.0f} k") + " parameters"
        return self.cache[name]

    def done(self, key: str) -> None:
        import gc

        name = self.module_of[key]
        if key in self.remaining[name]:
            self.remaining[name].remove(key)
        if not self.remaining[name]:
            self.cache.pop(name, None)
            gc.collect()


def _convert_one(key: str, opts: ConvertOptions, bundle, geo: Geometry, options: dict, modules: _Modules,
                 work: Path, progress: Progress) -> dict:
    """Build component ``key``'s package(s) inside ``work``; returns its contract record."""
    import gc

    from .components import example_inputs, import_coremltools, quiet_libraries, trace, traceable
    from .compression import compress_model
    from .precision import compute_precision

    ct = import_coremltools()
    name = CONTRACT_NAMES[key]
    spec = opts.compress.get(key)
    chunked = key == "unet" and opts.chunk_unet
    files = package_files(key, chunked)
    variant = "tiny" if options.get("decoder") == "tiny" else "full"
    inputs_spec, outputs_spec = io_specs(key, geo, options["precision"], variant)

    rewritten = modules.get(key)
    with progress.stage(name, "trace") as info:
        if geo.target == "apple-pipeline":
            from .targets import apple_pipeline

            wrapper = apple_pipeline.traceable(key, rewritten, geo, bundle)
            traced = trace(wrapper, apple_pipeline.example_inputs(key, geo, bundle))
        else:
            wrapper = traceable(key, rewritten, geo)
            traced = trace(wrapper, example_inputs(key, geo, bundle))
        info["detail"] = ("tiny autoencoder (convolutions only)" if variant == "tiny"
                          else f"{opts.attention} attention")
    del wrapper, rewritten  # the traced module shares the weights; the cache drops its reference next
    modules.done(key)
    with progress.stage(name, "convert") as info:
        with quiet_libraries(progress.library_bars):
            mlmodel = ct.convert(
                traced,
                inputs=[ct.TensorType(name=s.name, shape=_shape(ct, s), dtype=_np_dtype(s.dtype)) for s in inputs_spec],
                outputs=[ct.TensorType(name=s.name, dtype=_np_dtype(s.dtype)) for s in outputs_spec],
                convert_to="mlprogram",
                compute_precision=compute_precision(options["precision"]),
                minimum_deployment_target=getattr(ct.target, f"iOS{TARGETS[opts.min_target]}"),
                skip_model_load=True,
            )
        uncompressed = package_bytes(mlmodel.package_path)
        info["detail"] = (f"{options['precision']}" + (" (sin/cos embeddings float32)"
                                                       if options["precision"] == "float16" and key == "unet" else "")
                          + f", {opts.min_target}, {human_bytes(uncompressed)}")
    del traced
    gc.collect()

    models = [mlmodel]
    if chunked:
        from coremltools.models.utils import bisect_model

        with progress.stage(name, "chunk") as info:
            split_dir = work / "bisect"
            with quiet_libraries(progress.library_bars):
                bisect_model(mlmodel, str(split_dir), check_output_correctness=False)
            models = [ct.models.MLModel(str(split_dir / f"chunk{i}.mlpackage"), skip_model_load=True)
                      for i in (1, 2)]
            sizes = [package_bytes(split_dir / f"chunk{i}.mlpackage") for i in (1, 2)]
            info["detail"] = f"{files[0]} {human_bytes(sizes[0])} + {files[1]} {human_bytes(sizes[1])}"
        del mlmodel
    compression_record = spec.to_dict() if spec is not None else {"spec": "none"}
    if spec is not None and spec.mode == "mixed":
        from .mixed_bit import compress_auto

        with progress.stage(name, "compress") as info:
            module = modules.loader(bundle, SOURCE_MODULE[key])  # the float32 original: the reference
            with quiet_libraries(progress.library_bars):
                model, compression_record = compress_auto(models[0], spec.target_psnr, module, bundle, geo, work,
                                                          note=lambda text: progress.note(name, text))
            models = [model]
            del module
            info["detail"] = (f"{spec.describe()}: {compression_record['average_bits']:.2f} bits on average, "
                              f"worst {compression_record['measured_worst_psnr']:.1f} dB")
    elif spec is not None:
        with progress.stage(name, "compress") as info:
            with quiet_libraries(progress.library_bars):
                models = [compress_model(m, spec) for m in models]
            info["detail"] = spec.describe()
        gc.collect()
    total = 0
    with progress.stage(name, "save") as info:
        for index, (fname, model) in enumerate(zip(files, models)):
            _set_metadata(model, key, geo, bundle, options, chunk=index + 1 if chunked else None)
            model.save(str(work / fname))
            total += package_bytes(work / fname)
        info["detail"] = " + ".join(files) + f" {human_bytes(total)}" + (
            f" (uncompressed {human_bytes(uncompressed)})" if spec is not None else "")
    del models
    shutil.rmtree(work / "bisect", ignore_errors=True)
    if opts.compile and sys.platform == "darwin":
        for fname in files:
            _compile(work / fname, progress, name)
    return {"options": options, "files": files, "bytes": total,
            "uncompressed_bytes": uncompressed if spec is not None else None,
            "compression": compression_record,
            "content": package_content(work, files)}


def _install(out: Path, work: Path, new_files: list, old_files: list) -> None:
    """Move the finished packages from ``work`` into ``out``, the previous ones (and their compiled
    ``.mlmodelc``) out of the way first (into ``work``, deleted with it)."""
    names = set(new_files) | set(old_files)
    names |= {Path(n).with_suffix(".mlmodelc").name for n in list(names)}
    trash = work / "replaced"
    trash.mkdir(exist_ok=True)
    for fname in sorted(names):
        if (out / fname).exists():
            os.replace(out / fname, trash / fname)
    for fname in new_files:
        os.replace(work / fname, out / fname)
        compiled = Path(fname).with_suffix(".mlmodelc").name
        if (work / compiled).exists():
            os.replace(work / compiled, out / compiled)


# --------------------------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------------------------- #


def _resolve_decoder(opts: ConvertOptions, bundle) -> str:
    """``tiny`` or ``full`` for the VAE halves: ``opts.decoder``, else tiny when the bundle has one."""
    from ane_diffusion.decoders import has_tiny

    decoder = opts.decoder or ("tiny" if has_tiny(bundle) else "full")
    if decoder == "tiny" and not has_tiny(bundle):
        raise ConversionError(f"model {bundle.source} has no tiny decoder (train one with `python -m "
                              "ane_diffusion distill decoder`); use --decoder full")
    if "vae_decoder_full" in opts.components and decoder != "tiny":
        raise ConversionError("vae_decoder_full (VAEDecoderFull) is the full decoder kept beside a tiny VAEDecoder; "
                              "with --decoder full, VAEDecoder already is the full decoder")
    return decoder
def _whole_model_loader() -> Callable:
    """``loader(bundle, name)`` that loads all three modules once, through
    :func:`ane_diffusion.torch_models.load_components` (single-file conversion, LoRA fusing)."""
    loaded = {}

    def load(bundle, name):
        if not loaded:
            from ane_diffusion.torch_models import load_components

            loaded.update(load_components(bundle).modules())
        return copy.deepcopy(loaded[name])  # each package gets its own copy, as load_module gives

    return load


def convert_bundle(options: ConvertOptions, progress: Optional[Progress] = None,
                   module_loader: Optional[Callable] = None) -> ConvertResult:
    """Convert what ``options`` asks for; see the module docstring. ``module_loader(bundle, name)``
    replaces :func:`.components.load_module` (benchmarks build random full-size modules with it)."""
    from ane_diffusion.bundle import Bundle, resolve_bundle

    opts = options.validated()
    progress = progress or Progress()
    out = opts.output
    existing = inspect_output(out)
    if existing is None and not out.exists():
        _check_parent(out)
    bundle = opts.model if isinstance(opts.model, Bundle) else resolve_bundle(opts.model)
    geo = geometry_from_bundle(bundle, opts.height, opts.width, target=opts.target,
                               guidance_weight=opts.guidance_weight, sizes=opts.sizes)
    missing = [f for f in TOKENIZER_FILES if f not in (bundle.tokenizer_files or {})]
    if missing:
        raise ConversionError(f"model {bundle.source} has no tokenizer ({', '.join(missing)} missing)")
    records = records_of(existing) if existing else {}
    opts = replace(opts, decoder=_resolve_decoder(opts, bundle))
    wanted = {key: _record_options(opts, key, geo, bundle) for key in opts.components}
    todo, skip, notes = _plan(opts, out, records, wanted, shared={"height": geo.height, "width": geo.width},
                              sources={key: source_fingerprint(bundle, key, source_module(key, records[key].get("options")))
                                       for key in records})
    for name, note in notes:
        progress.note(name, note)
    for key in skip:
        progress.note(CONTRACT_NAMES[key], "already converted with these options: skipped (--force to redo)")
    if existing is not None and existing.get("model") != bundle.card.to_dict() and not todo:
        progress.note("contract", "model card changed: contract updated")
    converter = _converter_info()
    converter["requested"] = requested_components(records, opts.components)

    created = not out.exists()
    if created:
        out.mkdir()
    for stale in (p for p in out.iterdir() if _is_partial(p)):
        shutil.rmtree(stale, ignore_errors=True)
    loader = module_loader
    if loader is None and (bundle.extra.get("original_sd") or bundle.extra.get("loras")):
        loader = _whole_model_loader()  # an original-layout file, or LoRAs to fuse first
    if loader is None:
        from .components import load_module as loader
    modules = _Modules(bundle, opts, todo, loader, progress, wanted)
    converted = []
    try:
        for key in todo:
            work = Path(tempfile.mkdtemp(prefix=f".{CONTRACT_NAMES[key]}.", suffix=PARTIAL_SUFFIX, dir=out))
            try:
                record = _convert_one(key, opts, bundle, geo, wanted[key], modules, work, progress)
                old = records.pop(key, None)
                if old is not None:  # the contract stops listing it before its files change
                    _write_contract(out, build_contract(bundle, geo, records, converter))
                _install(out, work, record["files"], (old or {}).get("files", []))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            records[key] = record
            for fname in TOKENIZER_FILES:
                _write_text_atomic(out / fname, bundle.tokenizer_files[fname])
            _write_contract(out, build_contract(bundle, geo, records, converter))
            converted.append(key)
        contract = {}
        if records:  # refresh: the card (w range, recommendations) may have changed
            if not converted and existing is not None:  # keep the versions that made the packages
                converter = {k: existing.get("converter", {}).get(k, v) if k != "requested" else v
                             for k, v in converter.items()}
            for fname in TOKENIZER_FILES:
                _write_text_atomic(out / fname, bundle.tokenizer_files[fname])
            contract = build_contract(bundle, geo, records, converter)
            _write_contract(out, contract)
    except BaseException:
        if created and out.exists() and not any(p for p in out.iterdir() if not _is_partial(p)):
            shutil.rmtree(out, ignore_errors=True)
        raise
    return ConvertResult(output=out, contract=contract, converted=converted, skipped=skip,
                         events=list(progress.events))


__all__ = ["ConvertResult", "convert_bundle", "inspect_output", "package_bytes"]

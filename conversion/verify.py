"""Parity of an export with its PyTorch source: PSNR per component on the same seeded random inputs.

Each converted component (Core ML on macOS, the numpy MIL executor elsewhere) and the ORIGINAL
PyTorch module it came from (float32, not the ANE rewrite) run on the same inputs; PSNR uses
Apple's definition from ml-stable-diffusion, ``20 log10(max|reference| / RMSE)``, so the float16
bar is Apple's 35 dB. A student UNet is checked at w_min, the card's default w and w_max (and
several timesteps): the float32 sinusoid embeddings matter most at large w.

Thresholds (:data:`MIN_PSNR`, documented with the measurements behind them in docs/coreml.md):
float16 35 dB, float32 60 dB, palettized / quantized ones by bit width. A component below its
threshold fails the check (the ``verify`` command exits 1).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .contract import TINY_LOG_VARIANCE, read_contract, records_of, source_fingerprint, source_module
from .integrity import problems, summary
from .options import CONTRACT_NAMES, ConversionError, parse_compression

FLOAT16_MIN_PSNR = 35.0
"""Apple's ABSOLUTE_MIN_PSNR for its float16 Stable Diffusion conversions."""
FLOAT32_MIN_PSNR = 60.0
MIN_PSNR = {
    # k-means palettization, one table per tensor, by bits; per-group tables are at least as good.
    8: 30.0, 6: 25.0, 4: 18.0,
    # linear quantization
    "int8": 30.0, "int4": 18.0,
}
"""Lowest acceptable PSNR of a compressed component against its float32 PyTorch source."""

REQUIRED_COMPONENTS = ("TextEncoder", "Unet", "VAEDecoder")
"""What generating needs; ``verify`` reports an export that records no ``converter.requested`` (written
before it was recorded) and lacks one of them as incomplete."""

PROMPT = "a photo of an astronaut riding a horse on the moon"


def psnr(out: np.ndarray, ref: np.ndarray) -> float:
    """Apple's PSNR (ml-stable-diffusion ``compute_psnr``): 20 log10(max|ref| / RMSE), in dB."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch: {out.shape} vs {ref.shape}")
    rmse = float(np.sqrt(np.mean((out - ref) ** 2)))
    return float(20 * np.log10((np.abs(ref).max() + 1e-5) / (rmse + 1e-10)))


def threshold(precision: str, compression: str) -> float:
    """The minimum PSNR a component of this precision and compression must reach."""
    spec = parse_compression(compression)
    if spec is None:
        return FLOAT32_MIN_PSNR if precision == "float32" else FLOAT16_MIN_PSNR
    if spec.mode == "mixed":
        return float(spec.target_psnr)
    if spec.mode == "linear":
        return MIN_PSNR[f"int{spec.nbits}"]
    return MIN_PSNR[spec.nbits]


@dataclass
class Row:
    component: str
    case: str
    precision: str
    compression: str
    psnr: float
    threshold: float
    seconds: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.psnr) and self.psnr >= self.threshold)


@dataclass
class VerifyReport:
    export_dir: Path
    engine: str
    compute_units: str
    rows: list = field(default_factory=list)

    missing: list = field(default_factory=list)
    """Components the export should hold (the contract's ``converter.requested``; for older exports,
    what generating needs) but does not: an interrupted conversion."""
    damaged: dict = field(default_factory=dict)
    """``{component: what no longer matches}`` for packages whose files differ from what was written."""

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows) and not self.missing and not self.damaged

    def failures(self) -> str:
        """One line naming every failure (empty when ok)."""
        low = sorted({row.component for row in self.rows if not row.ok})
        parts = [f"{', '.join(low)} below the PSNR threshold"] if low else []
        if self.missing:
            parts.append(f"missing {', '.join(self.missing)} (an interrupted convert? run it again to finish)")
        parts += [f"{name} damaged: {why}" for name, why in self.damaged.items()]
        return "; ".join(parts)

    def min_psnr(self, component: str) -> float:
        return min(row.psnr for row in self.rows if row.component == component)

    def table(self) -> str:
        head = ("component", "case", "precision", "compression", "PSNR dB", "min dB", "run s", "result")
        body = [(r.component, r.case, r.precision, r.compression, f"{r.psnr:.1f}", f"{r.threshold:.0f}",
                 f"{r.seconds:.2f}", "ok" if r.ok else "FAIL") for r in self.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        extra = [f"{name}: missing from the export" for name in self.missing]
        extra += [f"{name}: damaged: {why}" for name, why in self.damaged.items()]
        return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body] + extra)

    def to_dict(self) -> dict:
        return {"export_dir": str(self.export_dir), "engine": self.engine, "compute_units": self.compute_units,
                "ok": self.ok, "rows": [{**r.__dict__, "ok": r.ok} for r in self.rows],
                "missing": list(self.missing), "damaged": dict(self.damaged)}


# --------------------------------------------------------------------------------------------- #
# Cases: (label, package feeds, reference fn)
# --------------------------------------------------------------------------------------------- #


def _text_cases(bundle, contract, rng):
    spec = contract["components"]["TextEncoder"]["inputs"][0]
    length = spec["shape"][1]
    text = bundle.configs["text_encoder"]
    eos = int(text.get("eos_token_id", 1))
    prompt = np.asarray([bundle.tokenizer().encode(PROMPT)], dtype=np.int32)
    random_ids = np.full((1, length), eos, dtype=np.int32)
    random_ids[0, 0] = int(text.get("bos_token_id", 0))
    n = int(rng.integers(5, length - 10))
    random_ids[0, 1:n] = rng.integers(0, max(int(text.get("vocab_size", 1000)) - 2, 1), n - 1)
    return [("prompt", {"input_ids": prompt}), ("random ids", {"input_ids": random_ids})]


def _unet_cases(bundle, contract, rng, ws):
    spec = {item["name"]: item for item in contract["components"]["Unet"]["inputs"]}
    shapes = spec["sample"].get("shapes") or [spec["sample"]["shape"]]
    if len(shapes) > 1:  # a multi-size export: every size, each labelled
        cases = []
        for shape in shapes:
            one = {**contract["components"]["Unet"], "inputs": [
                {**item, "shape": shape, "shapes": None} if item["name"] == "sample" else item
                for item in contract["components"]["Unet"]["inputs"]]}
            sub = {**contract, "components": {**contract["components"], "Unet": one}}
            cases += [(f"{label} {shape[2]}x{shape[3]}", feeds) for label, feeds in _unet_cases(bundle, sub, rng, ws)]
        return cases
    b, c, h, w = spec["sample"]["shape"]
    hidden = spec["encoder_hidden_states"]["shape"]
    n = int(contract["schedule"].get("num_train_timesteps", 1000))
    card = bundle.card
    cases = []
    if "guidance_weight" in spec:
        wanted = ws if ws is not None else sorted({card.w_min, card.default_w, card.w_max})
        times = [n - 1] + [int(t) for t in rng.integers(1, n, len(wanted))]
        for i, weight in enumerate(wanted):
            t = times[i]
            feeds = {"sample": rng.standard_normal((b, c, h, w)).astype(np.float32),
                     "timestep": np.full((b,), t, np.float32),
                     "encoder_hidden_states": rng.standard_normal(hidden).astype(np.float32),
                     "guidance_weight": np.full((b,), weight, np.float32)}
            cases.append((f"w={weight:g} t={t}", feeds))
    else:
        apple = contract.get("target") == "apple-pipeline"  # Apple's 4-step linspace grid and one more
        for t in ((n - 1, 749, 500, 250, int(rng.integers(1, n))) if apple else (n - 1, int(rng.integers(1, n)))):
            feeds = {"sample": rng.standard_normal((b, c, h, w)).astype(np.float32),
                     "timestep": np.full((b,), t, np.float32),
                     "encoder_hidden_states": rng.standard_normal(hidden).astype(np.float32)}
            cases.append((f"t={t}", feeds))
    return cases


def _decoder_cases(bundle, contract, rng, name: str = "VAEDecoder"):
    item = contract["components"][name]["inputs"][0]
    scale = float((contract.get("apple_pipeline") or {}).get("decoder_scale_factor")
                  or contract["latent"]["scaling_factor"])
    # what the pipeline feeds: latents of unit scale divided by the scaling factor
    shapes = item.get("shapes") or [item["shape"]]
    return [("latents/scale" + (f" {shape[2]}x{shape[3]}" if len(shapes) > 1 else ""),
             {"z": (rng.standard_normal(shape) / scale).astype(np.float32)}) for shape in shapes]


def _encoder_cases(bundle, contract, rng):
    item = contract["components"]["VAEEncoder"]["inputs"][0]
    shapes = item.get("shapes") or [item["shape"]]
    return [("image" + (f" {shape[2]}x{shape[3]}" if len(shapes) > 1 else ""),
             {"x": rng.uniform(-1, 1, shape).astype(np.float32)}) for shape in shapes]


def _reference(name: str, module, feeds: dict, bundle, contract: Optional[dict] = None) -> dict:
    """The original PyTorch module's outputs, named like the package's."""
    import torch

    if contract is not None and contract.get("target") == "apple-pipeline" and name != "TextEncoder":
        from .targets import apple_pipeline

        return apple_pipeline.reference(name, module, feeds, bundle, contract)

    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
    with torch.no_grad():
        if name == "TextEncoder":
            out = module(t["input_ids"].long())
            return {"last_hidden_state": out.last_hidden_state.numpy(), "pooled_outputs": out.pooler_output.numpy()}
        if name == "Unet":
            ehs = t["encoder_hidden_states"].squeeze(2).transpose(1, 2)  # (B, C, 1, S) -> (B, S, C)
            cond = None
            if "guidance_weight" in t:
                cond = bundle.card.guidance_embedding.torch(t["guidance_weight"])
            return {"noise_pred": module(t["sample"], t["timestep"], ehs, timestep_cond=cond).sample.numpy()}
        tiny = type(module).__name__ == "AutoencoderTiny"
        if name in ("VAEDecoder", "VAEDecoderFull"):
            if tiny:
                from ane_diffusion.decoders import tiny_decoder

                return {"image": tiny_decoder(module, bundle.scaling_factor)(t["z"]).numpy()}
            return {"image": module.decode(t["z"]).sample.numpy()}
        if tiny:
            from ane_diffusion.decoders import tiny_encoder

            z = tiny_encoder(module, bundle.scaling_factor)(t["x"])
            return {"latent": torch.cat([z, torch.full_like(z, TINY_LOG_VARIANCE)], dim=1).numpy()}
        moments = module.encoder(t["x"])
        if module.quant_conv is not None:
            moments = module.quant_conv(moments)
        return {"latent": moments.numpy()}


def verify_export(model, export_dir, compute_units: str = "ALL", engine: str = "auto",
                  components: Optional[Sequence[str]] = None, seed: int = 0,
                  ws: Optional[Sequence[float]] = None, progress=None) -> VerifyReport:
    """Run every component of ``export_dir`` (or ``components``) and its PyTorch source from ``model``."""
    from ane_diffusion.bundle import Bundle, resolve_bundle

    from .components import load_module
    from .runtime import ComponentRunner, check_compute_units, resolve_engine

    engine = resolve_engine(engine)
    compute_units = check_compute_units(compute_units)
    contract = read_contract(export_dir)
    bundle = model if isinstance(model, Bundle) else resolve_bundle(model)
    records = records_of(contract)
    names = [CONTRACT_NAMES[k] for k in CONTRACT_NAMES if CONTRACT_NAMES[k] in contract["components"]]
    if components:
        from .options import component_key

        wanted = {CONTRACT_NAMES[component_key(c)] for c in components}
        absent = sorted(wanted - set(names))
        if absent:
            raise ConversionError(f"{export_dir} holds no {', '.join(absent)}")
        names = [n for n in names if n in wanted]
        missing = []
    else:
        # what convert was asked for (a folder of a UNet alone is fine); exports written before that was
        # recorded must at least hold what generating needs
        expected = set((contract.get("converter") or {}).get("requested") or REQUIRED_COMPONENTS)
        missing = [CONTRACT_NAMES[k] for k in CONTRACT_NAMES if CONTRACT_NAMES[k] in expected - set(names)]
    if contract["model"].get("kind") != bundle.card.kind:
        raise ConversionError(f"{export_dir} is an export of a {contract['model'].get('kind')} model, "
                              f"{bundle.source} is a {bundle.card.kind}")
    rng = np.random.default_rng(seed)
    report = VerifyReport(Path(export_dir), engine, compute_units, missing=missing)
    key_of = {v: k for k, v in CONTRACT_NAMES.items()}
    source_of = {name: source_module(key_of[name], records.get(key_of[name], {}).get("options")) for name in names}
    modules: dict = {}
    for name in names:
        key = key_of[name]
        record = records.get(key, {})
        options = record.get("options", {})
        if options.get("source") and options["source"] != source_fingerprint(bundle, key, source_of[name]):
            warnings.warn(f"{name} was converted from different {source_of[name]} weights or config than "
                          f"{bundle.source}; its PSNR compares unrelated models", stacklevel=2)
        precision = options.get("precision", "float16")
        compression = options.get("compression", "none")
        limit = threshold(precision, compression)
        damage = summary(problems(export_dir, record))
        if damage:
            report.damaged[name] = f"{damage}; convert it again (convert --components {key} --force)"
            continue
        try:
            runner = ComponentRunner(export_dir, contract, name, engine, compute_units)
        except FileNotFoundError as exc:  # a package that is gone or cannot be loaded
            report.damaged[name] = str(exc)
            continue
        module_name = source_of[name]
        if module_name not in modules:
            modules[module_name] = load_module(bundle, module_name)
        module = modules[module_name]
        if name == "TextEncoder":
            cases = _text_cases(bundle, contract, rng)
        elif name == "Unet":
            cases = _unet_cases(bundle, contract, rng, ws)
        elif name in ("VAEDecoder", "VAEDecoderFull"):
            cases = _decoder_cases(bundle, contract, rng, name)
        else:
            cases = _encoder_cases(bundle, contract, rng)
        for label, feeds in cases:
            start = time.perf_counter()
            got = runner.predict(feeds)
            seconds = time.perf_counter() - start
            ref = _reference(name, module, feeds, bundle, contract)
            if name == "VAEEncoder" and source_of[name] == "vae_tiny":  # the constant log-variance half would
                c = int(contract["latent"]["channels"])                # inflate the PSNR: score the mean
                got, ref = {"latent": got["latent"][:, :c]}, {"latent": ref["latent"][:, :c]}
            scores = {out: psnr(got[out], ref[out]) for out in ref}
            worst = min(scores, key=scores.get)
            detail = ", ".join(f"{k} {v:.1f}" for k, v in scores.items()) if len(scores) > 1 else ""
            row = Row(name, label, precision, compression, scores[worst], limit, seconds, detail)
            report.rows.append(row)
            if progress is not None:
                progress(row)
        if name == "Unet" or (name == "VAEEncoder"):
            modules.pop(module_name, None)  # VAEDecoderFull, if any, comes later and reloads the VAE
    return report


__all__ = ["FLOAT16_MIN_PSNR", "FLOAT32_MIN_PSNR", "MIN_PSNR", "Row", "VerifyReport", "psnr", "threshold",
           "verify_export"]

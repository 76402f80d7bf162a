"""Mixed-bit palettization of a UNet: per-layer bit widths from each layer's measured sensitivity.

``--compress unet=auto:35`` (or ``auto``, 35 dB by default): the smallest palettized UNet whose
output stays at or above the target PSNR (Apple's definition, against the float32 PyTorch UNet)
everywhere on the w and t grid. In the spirit of Apple's mixed-bit recipes (ml-stable-diffusion's
``mixed_bit_compression_pre_analysis``: palettize one layer at a time, measure the output PSNR,
give more bits to the layers that hurt most):

1. sensitivity: for every weight tensor the converter palettizes (>= 2048 elements) and every bit
   width in :data:`BITS`, palettize only that tensor (1-D k-means, one table per tensor, in
   PyTorch) and record the worst PSNR of the UNet output over the grid;
2. allocation: noise powers add (``10^(-PSNR/10)`` per layer), so a recipe's PSNR is predicted
   from the per-layer ones; starting from 4 bits everywhere, the upgrade with the most noise
   removed per added byte is taken until the prediction reaches the target plus a margin;
3. check: the recipe is applied with coremltools (``op_name_configs``, k-means per tensor,
   iOS16) and the compressed package itself is run (numpy MIL executor, or Core ML on macOS) on
   the grid; below the target, the margin grows and the recipe is rebuilt (at most
   :data:`MAX_TRIES` times), and if it never gets there the conversion fails with one line.

The grid: w in {w_min, default w, w_max} of the card (a teacher: no w), t on the trailing grid of
the card's step count (999 first), random latents and text states of the export's shape (seeded).

Sizes count what the weights cost: ``numel * bits / 8`` bytes plus a 2**bits float16 table per
tensor; tensors under the threshold and unmatched ones stay float16 (counted in the report).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

BITS = (4, 6, 8)
WEIGHT_THRESHOLD = 2048
"""coremltools' default: smaller tensors are not palettized."""
DEFAULT_TARGET = 35.0
MARGINS = (0.5, 2.0, 4.0, 7.0)
MAX_TRIES = len(MARGINS)


@dataclass
class Layer:
    """One palettizable weight: its torch parameter, MIL const name, size and sensitivity."""

    param: str
    const: str
    numel: int
    psnr: dict = field(default_factory=dict)
    """{bits: worst output PSNR over the grid with only this tensor palettized} (dB)."""

    def bytes(self, bits: int) -> float:
        return self.numel * bits / 8 + (2 ** bits) * 2

    def noise(self, bits: int) -> float:
        return 10 ** (-self.psnr[bits] / 10)


# --------------------------------------------------------------------------------------------- #
# k-means in one dimension (sensitivity only; the package uses coremltools' own k-means)
# --------------------------------------------------------------------------------------------- #


def kmeans_1d(values: np.ndarray, bits: int, iterations: int = 30) -> np.ndarray:
    """``values`` with each element replaced by the nearest of 2**bits k-means centroids (float32)."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    k = min(2 ** bits, np.unique(flat).size)
    # evenly spaced start: Lloyd iterations never raise the error, so the table beats an even grid
    centroids = np.linspace(flat.min(), flat.max(), k, dtype=np.float32)
    for _ in range(iterations):
        centroids = np.unique(centroids)
        edges = (centroids[1:] + centroids[:-1]) / 2
        index = np.searchsorted(edges, flat)
        sums = np.bincount(index, weights=flat, minlength=centroids.size)
        counts = np.bincount(index, minlength=centroids.size)
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids).astype(np.float32)
        if np.allclose(moved, centroids):
            break
        centroids = moved
    edges = (centroids[1:] + centroids[:-1]) / 2
    return centroids[np.searchsorted(edges, flat)].reshape(np.shape(values))


# --------------------------------------------------------------------------------------------- #
# The grid and the reference outputs
# --------------------------------------------------------------------------------------------- #


def grid_ws(card) -> list:
    return sorted({float(card.w_min), float(card.default_w), float(card.w_max)}) if card.is_student else [None]


def grid_cases(bundle, geo, seed: int = 0) -> list[tuple[str, dict]]:
    """[(label, package feeds)] over w and t, in the package's input names (float32 numpy)."""
    from ane_diffusion.schedule import trailing_timesteps

    card = bundle.card
    rng = np.random.default_rng(seed)
    steps = int(card.steps or card.recommended_steps or 4)
    times = [int(t) for t in trailing_timesteps(max(steps, 2), geo.num_train_timesteps)]
    b = geo.unet_batch
    cases = []
    for w in grid_ws(card) if geo.fixed_w is None else [None]:
        for t in times:
            feeds = {"sample": rng.standard_normal((b, geo.latent_channels, geo.latent_height, geo.latent_width)),
                     "timestep": np.full((b,), t),
                     "encoder_hidden_states": rng.standard_normal((b, geo.text_hidden, 1, geo.max_length))}
            if w is not None:
                feeds["guidance_weight"] = np.full((b,), w)
            label = (f"w={w:g} " if w is not None else "") + f"t={t}"
            cases.append((label, {k: v.astype(np.float32) for k, v in feeds.items()}))
    return cases


def _stack(cases) -> dict:
    return {k: np.concatenate([feeds[k] for _, feeds in cases]) for k in cases[0][1]}


def torch_outputs(module, cases, bundle, geo) -> np.ndarray:
    """The PyTorch UNet's raw outputs on every case at once: (cases * B, C, h, w) float32."""
    import torch

    feeds = {k: torch.from_numpy(v) for k, v in _stack(cases).items()}
    cond = None
    if geo.guidance_dim:
        w = feeds.get("guidance_weight")
        w = torch.full((feeds["sample"].shape[0],), float(geo.fixed_w)) if w is None else w
        cond = geo.guidance.torch(w)
    ehs = feeds["encoder_hidden_states"].squeeze(2).transpose(1, 2)
    with torch.no_grad():
        return module(feeds["sample"], feeds["timestep"], ehs, timestep_cond=cond).sample.numpy()


def worst_psnr(out: np.ndarray, ref: np.ndarray, n_cases: int) -> float:
    """The worst per-case PSNR (Apple's) of stacked outputs."""
    from .verify import psnr

    return min(psnr(o, r) for o, r in zip(np.split(out, n_cases), np.split(ref, n_cases)))


# --------------------------------------------------------------------------------------------- #
# Matching torch parameters to the package's weight constants
# --------------------------------------------------------------------------------------------- #


def _signature(values) -> str:
    """Order-free fingerprint of a tensor's float16 values (survives the ANE rewrite's reshapes)."""
    flat = np.sort(np.asarray(values, dtype=np.float16).ravel())
    return hashlib.sha1(flat.tobytes()).hexdigest()


def weight_consts(mlmodel) -> dict[str, np.ndarray]:
    """{const op name: value} of the program's float weights of at least the threshold size."""
    program = mlmodel._mil_program
    out = {}
    for function in program.functions.values():
        for op in function.operations:
            if op.op_type != "const":
                continue
            val = op.outputs[0].val
            if isinstance(val, np.ndarray) and val.dtype.kind == "f" and val.size >= WEIGHT_THRESHOLD:
                out[op.name] = val
    return out


def match_layers(module, consts: dict) -> tuple[list[Layer], int]:
    """(layers whose torch parameter matches a package constant, count of unmatched constants)."""
    by_signature = {}
    for name, val in consts.items():
        by_signature.setdefault(_signature(val), []).append(name)
    layers, used = [], set()
    for pname, param in module.named_parameters():
        if param.numel() < WEIGHT_THRESHOLD:
            continue
        names = by_signature.get(_signature(param.detach().numpy()), [])
        names = [n for n in names if n not in used]
        if names:
            used.add(names[0])
            layers.append(Layer(pname, names[0], int(param.numel())))
    return layers, len(consts) - len(used)


# --------------------------------------------------------------------------------------------- #
# Sensitivity and allocation
# --------------------------------------------------------------------------------------------- #


def measure_sensitivity(module, layers: list[Layer], cases, bundle, geo, bits=BITS, progress=None) -> None:
    """Fill each layer's ``psnr`` {bits: worst PSNR with only it palettized} (PyTorch, float32)."""
    import torch

    ref = torch_outputs(module, cases, bundle, geo)
    params = dict(module.named_parameters())
    for i, layer in enumerate(layers):
        param = params[layer.param]
        original = param.detach().clone()
        for b in bits:
            with torch.no_grad():
                param.copy_(torch.from_numpy(kmeans_1d(original.numpy(), b)))
            layer.psnr[b] = worst_psnr(torch_outputs(module, cases, bundle, geo), ref, len(cases))
        with torch.no_grad():
            param.copy_(original)
        if progress is not None:
            progress(i + 1, len(layers))


def predicted_psnr(layers: list[Layer], allocation: dict) -> float:
    noise = sum(layer.noise(allocation[layer.const]) for layer in layers)
    return float("inf") if noise <= 0 else -10 * math.log10(noise)


def allocation_bytes(layers: list[Layer], allocation: dict) -> float:
    return sum(layer.bytes(allocation[layer.const]) for layer in layers)


def allocate(layers: list[Layer], target: float, bits=BITS) -> dict:
    """{const name: bits}: greedy upgrades (most noise removed per added byte) from the fewest bits
    until the predicted PSNR reaches ``target`` (all at the most bits if it never does)."""
    bits = sorted(bits)
    allocation = {layer.const: bits[0] for layer in layers}
    while predicted_psnr(layers, allocation) < target:
        best, best_gain = None, -1.0
        for layer in layers:
            now = allocation[layer.const]
            if now == bits[-1]:
                continue
            nxt = bits[bits.index(now) + 1]
            gain = (layer.noise(now) - layer.noise(nxt)) / max(layer.bytes(nxt) - layer.bytes(now), 1e-9)
            if gain > best_gain:
                best, best_gain = (layer, nxt), gain
        if best is None:
            break
        allocation[best[0].const] = best[1]
    return allocation


def summary(layers: list[Layer], allocation: dict) -> dict:
    counts = {str(b): sum(1 for v in allocation.values() if v == b) for b in sorted(set(allocation.values()))}
    numel = sum(layer.numel for layer in layers)
    average = sum(layer.numel * allocation[layer.const] for layer in layers) / max(numel, 1)
    return {"layers_by_bits": counts, "average_bits": round(average, 3),
            "palettized_weight_bytes": int(allocation_bytes(layers, allocation))}


# --------------------------------------------------------------------------------------------- #
# Applying and checking a recipe
# --------------------------------------------------------------------------------------------- #


def apply(mlmodel, allocation: dict):
    """The model palettized per ``allocation`` {const name: bits} (k-means, one table per tensor)."""
    import coremltools as ct

    oc = ct.optimize.coreml
    config = oc.OptimizationConfig(op_name_configs={
        name: oc.OpPalettizerConfig(nbits=int(bits), mode="kmeans") for name, bits in allocation.items()})
    return oc.palettize_weights(mlmodel, config)


def package_psnr(package, cases, ref: np.ndarray) -> list[tuple[str, float]]:
    """[(case label, PSNR)] of a saved package run on every case against ``ref`` (stacked)."""
    from .runtime import open_package
    from .verify import psnr

    model = open_package(package)
    refs = np.split(ref, len(cases))
    out = []
    for (label, feeds), r in zip(cases, refs):
        got = model.predict({k: v for k, v in feeds.items() if k in model.input_names})
        out.append((label, psnr(np.asarray(next(iter(got.values())), np.float32), r)))
    return out


def package_reference(module, cases, bundle, geo) -> np.ndarray:
    """What the package should return on the cases: the raw UNet output, or for the apple-pipeline
    target its epsilon at the fixed w (the target's own reference arithmetic)."""
    if geo.target != "apple-pipeline":
        return torch_outputs(module, cases, bundle, geo)
    from .targets import apple_pipeline

    contract = {"apple_pipeline": apple_pipeline.contract_section(geo, bundle.card)}
    return np.concatenate([apple_pipeline.reference("Unet", module, feeds, bundle, contract)["noise_pred"]
                           for _, feeds in cases])


def compress_auto(mlmodel, target: float, module, bundle, geo, work, note=None):
    """(compressed model, record): the smallest recipe measured at >= ``target`` dB on the grid.

    ``module``: the original float32 PyTorch UNet; ``work``: a scratch folder; ``note(text)``
    reports progress. Raises :class:`~.options.ConversionError` when even the largest recipe tried
    stays below the target."""
    from pathlib import Path

    from .options import ConversionError

    note = note or (lambda text: None)
    cases = grid_cases(bundle, geo)
    layers, unmatched = match_layers(module, weight_consts(mlmodel))
    if not layers:
        raise ConversionError("auto compression found no UNet weight to palettize")
    measure_sensitivity(module, layers, cases, bundle, geo,
                        progress=lambda i, n: note(f"sensitivity {i}/{n} layers") if i == n or i % 20 == 0 else None)
    ref = package_reference(module, cases, bundle, geo)
    tried = []
    for margin in MARGINS:
        allocation = allocate(layers, target + margin)
        if tried and allocation == tried[-1][0]:
            continue
        candidate = apply(mlmodel, allocation)
        path = Path(work) / "auto-candidate.mlpackage"
        candidate.save(str(path))
        scores = package_psnr(path, cases, ref)
        worst = min(p for _, p in scores)
        tried.append((allocation, worst))
        note(f"recipe {summary(layers, allocation)['average_bits']:.2f} bits: predicted "
             f"{predicted_psnr(layers, allocation):.1f} dB, measured worst {worst:.1f} dB")
        if worst >= target:
            record = {"spec": f"auto:{target:g}", "mode": "mixed_palettize", "granularity": "per_tensor",
                      "target_psnr": target, "measured_worst_psnr": round(worst, 2),
                      "grid": [label for label, _ in cases], "unmatched_float16_tensors": unmatched,
                      **summary(layers, allocation)}
            return candidate, record
    raise ConversionError(f"auto compression could not reach {target:g} dB (best recipe measured "
                          f"{max(w for _, w in tried):.1f} dB); ask for a lower target or a fixed bit width")


__all__ = ["BITS", "DEFAULT_TARGET", "Layer", "allocate", "apply", "compress_auto", "grid_cases", "kmeans_1d",
           "match_layers", "measure_sensitivity", "predicted_psnr", "summary", "weight_consts"]

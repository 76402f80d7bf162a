#!/usr/bin/env python
"""Size / PSNR curve of palettized UNets: uniform 8/6/4 bits against mixed-bit recipes (issue 16, part 3).

    python benchmarks/mixed_bit.py --model default --out benchmarks/results/mixed-bit-demo
    python benchmarks/mixed_bit.py --sd15 --out benchmarks/results/mixed-bit-sd15   # sizes only

Demo (a trained student): the UNet is converted once (float16); each layer's sensitivity is
measured once (:mod:`ane_diffusion_conversion.mixed_bit`); then every recipe (uniform 8, 6, 4 and
mixed-bit recipes for several targets) is applied with coremltools, saved, and run with the numpy
MIL executor on the w and t grid against the float32 PyTorch UNet: the worst PSNR and the package
size are reported.

SD 1.5 (``--sd15``): the UNet architecture with random weights, built on the meta device; only sizes,
computed from the tensor shapes (``numel * bits / 8`` plus a float16 table of 2**bits per tensor,
tensors under 2048 elements float16), for uniform bit widths and for the demo recipe's share of
parameters at each bit width. Sensitivity measured on random weights says nothing about a trained
model, so no recipe is derived there. The formula is checked against the demo's real packages.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def demo_curve(model: str, targets, work: Path) -> dict:
    import numpy as np

    from ane_diffusion.bundle import resolve_bundle
    from ane_diffusion_conversion import mixed_bit as mb
    from ane_diffusion_conversion.components import (example_inputs, import_coremltools, load_module, quiet_libraries,
                                                     rewrite, trace, traceable)
    from ane_diffusion_conversion.contract import geometry_from_bundle, io_specs
    from ane_diffusion_conversion.precision import compute_precision

    ct = import_coremltools()
    bundle = resolve_bundle(model)
    geo = geometry_from_bundle(bundle)
    start = time.perf_counter()
    traced = trace(traceable("unet", rewrite("unet", load_module(bundle, "unet"), "split_einsum", 512), geo),
                   example_inputs("unet", geo, bundle))
    inputs, outputs = io_specs("unet", geo, "float16")
    dtype = {"float16": np.float16, "float32": np.float32}
    with quiet_libraries(False):
        mlmodel = ct.convert(traced, inputs=[ct.TensorType(name=s.name, shape=s.shape, dtype=dtype[s.dtype]) for s in inputs],
                             outputs=[ct.TensorType(name=s.name, dtype=dtype[s.dtype]) for s in outputs],
                             convert_to="mlprogram", compute_precision=compute_precision("float16"),
                             minimum_deployment_target=ct.target.iOS16, skip_model_load=True)
    convert_s = time.perf_counter() - start
    module = load_module(bundle, "unet")
    cases = mb.grid_cases(bundle, geo)
    layers, unmatched = mb.match_layers(module, mb.weight_consts(mlmodel))
    start = time.perf_counter()
    mb.measure_sensitivity(module, layers, cases, bundle, geo,
                           progress=lambda i, n: print(f"sensitivity {i}/{n}", file=sys.stderr) if i % 10 == 0 else None)
    sensitivity_s = time.perf_counter() - start
    ref = mb.package_reference(module, cases, bundle, geo)
    rows = []

    def measure(label, model_, allocation):
        path = work / f"{label.replace(':', '-').replace(' ', '_')}.mlpackage"
        model_.save(str(path))
        scores = mb.package_psnr(path, cases, ref)
        worst = min(scores, key=lambda item: item[1])
        row = {"recipe": label, "bytes": _bytes(path), "worst_psnr": round(worst[1], 2), "worst_case": worst[0],
               "psnr_by_case": {k: round(v, 2) for k, v in scores}}
        if allocation is not None:
            row.update(mb.summary(layers, allocation))
            row["predicted_psnr"] = round(mb.predicted_psnr(layers, allocation), 2)
        rows.append(row)
        print(f"{label}: {row['bytes'] / 1e6:.2f} MB, worst {row['worst_psnr']:.1f} dB ({worst[0]})", file=sys.stderr)

    measure("float16", mlmodel, None)
    for bits in (8, 6, 4):
        allocation = {layer.const: bits for layer in layers}
        measure(f"uniform {bits}-bit", mb.apply(mlmodel, allocation), allocation)
    for target in targets:
        for margin in mb.MARGINS:
            allocation = mb.allocate(layers, target + margin)
            candidate = mb.apply(mlmodel, allocation)
            measure(f"auto:{target:g} (margin {margin:g})", candidate, allocation)
            if rows[-1]["worst_psnr"] >= target:
                rows[-1]["chosen_by_auto"] = True
                break
    return {"model": model, "image": f"{geo.height}x{geo.width}", "grid": [label for label, _ in cases],
            "layers": len(layers), "unmatched_float16_tensors": unmatched,
            "sensitivity": {layer.param: {str(b): round(p, 2) for b, p in layer.psnr.items()} for layer in layers},
            "convert_seconds": round(convert_s, 1), "sensitivity_seconds": round(sensitivity_s, 1), "rows": rows}


def size_for(shapes, bits_of) -> float:
    """Bytes of palettized weights: bits_of(numel) bits per element for tensors >= 2048, else float16."""
    total = 0.0
    for numel in shapes:
        if numel < 2048:
            total += numel * 2
        else:
            bits = bits_of(numel)
            total += numel * bits / 8 + (2 ** bits) * 2
    return total


def sd15_sizes(demo: dict | None) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    from ane_diffusion.testing import sd15  # the public configs, inline

    config = dict(sd15.configs()["unet"])
    config["time_cond_proj_dim"] = 256  # the student's guidance input
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    numels = [p.numel() for p in unet.parameters()]
    rows = [{"recipe": "float16", "bytes": sum(numels) * 2}]
    for bits in (8, 6, 4):
        rows.append({"recipe": f"uniform {bits}-bit", "bytes": int(size_for(numels, lambda n, b=bits: b))})
    if demo:
        chosen = next((r for r in demo["rows"] if r.get("chosen_by_auto") and r["recipe"].startswith("auto:35")), None)
        if chosen:
            avg = chosen["average_bits"]
            big = sum(n for n in numels if n >= 2048)
            small = sum(n for n in numels if n < 2048)
            tables = sum(1 for n in numels if n >= 2048)
            # the demo recipe's average bit width on SD 1.5's large tensors (tables at 2**6 on average)
            rows.append({"recipe": f"demo auto:35 share ({avg:.2f} bits on average)",
                         "bytes": int(big * avg / 8 + small * 2 + tables * 2 ** 6 * 2)})
    return {"parameters": sum(numels), "palettizable_tensors": sum(1 for n in numels if n >= 2048), "rows": rows,
            "note": "random weights: sizes only; per-layer sensitivity on random weights is not meaningful"}


def markdown(result: dict) -> str:
    lines = [f"# Mixed-bit palettization: size and PSNR ({result['date']}, {result['machine']})", ""]
    demo = result.get("demo")
    if demo:
        lines += [f"Demo student `{demo['model']}` UNet, {demo['image']} images, {demo['layers']} palettized tensors "
                  f"({demo['unmatched_float16_tensors']} left float16). Worst PSNR (Apple's) of the package run by the "
                  f"numpy MIL executor against the float32 PyTorch UNet over the grid {', '.join(demo['grid'])}.", "",
                  "| recipe | size | average bits | 4/6/8-bit tensors | predicted dB | worst dB | worst case |",
                  "|---|---:|---:|---|---:|---:|---|"]
        for r in demo["rows"]:
            counts = r.get("layers_by_bits", {})
            mix = "/".join(str(counts.get(str(b), 0)) for b in (4, 6, 8)) if counts else "-"
            lines.append(f"| {r['recipe']}{' (chosen)' if r.get('chosen_by_auto') else ''} | {r['bytes'] / 1e6:.2f} MB | "
                         f"{r.get('average_bits', 16)} | {mix} | {r.get('predicted_psnr', '-')} | {r['worst_psnr']:.1f} | "
                         f"{r['worst_case']} |")
        lines += ["", f"Conversion {demo['convert_seconds']} s, sensitivity {demo['sensitivity_seconds']} s.", ""]
    sd = result.get("sd15")
    if sd:
        lines += [f"SD 1.5 UNet architecture ({sd['parameters'] / 1e6:.0f} M parameters, {sd['palettizable_tensors']} "
                  f"tensors >= 2048 elements), weight bytes from the shapes ({sd['note']}):", "",
                  "| recipe | size |", "|---|---:|"]
        lines += [f"| {r['recipe']} | {r['bytes'] / 1e6:.0f} MB |" for r in sd["rows"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--targets", default="30,35,40")
    parser.add_argument("--sd15", action="store_true", help="also the SD 1.5 sizes (meta device, no weights)")
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/mixed-bit")
    args = parser.parse_args(argv)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {platform.system()}, "
              f"{__import__('os').cpu_count()} cores"}
    out = Path(args.out)
    if not args.no_demo:
        with tempfile.TemporaryDirectory() as work:
            result["demo"] = demo_curve(args.model, [float(t) for t in args.targets.split(",")], Path(work))
    elif out.with_suffix(".json").exists():
        result["demo"] = json.loads(out.with_suffix(".json").read_text()).get("demo")
    if args.sd15:
        result["sd15"] = sd15_sizes(result.get("demo"))
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

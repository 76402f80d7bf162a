#!/usr/bin/env python
"""Stable Diffusion 1.5's VAE decoder against a tiny decoder (TAESD's shape) at 512x512, side by side.

    python benchmarks/decoder_sd15.py [--repeats 3] [--threads 1]

Writes ``benchmarks/results/decoder-sd15.{json,md}``: one call of each decoder (random weights,
float32, torch CPU), timed interleaved after one warm-up call each, with its FLOPs. Under three
minutes of CPU, so it runs beside other work; the whole-image benchmark
(``python -m ane_diffusion bench --arch sd15``) times both decoders inside whole images.

It also writes a COMPOSED table (clearly labelled, not a measurement): the whole-image latencies of
the committed SD 1.5 run (``latency-sd15.json``) with the full decoder's time replaced by
``that run's full-decoder time x (tiny / full)`` measured here. The ratio carries across runs; the
absolute times of two runs on a shared machine do not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    try:
        import ane_diffusion  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT))
    import torch
    from diffusers import AutoencoderKL

    from ane_diffusion.benchmarking import report as rep
    from ane_diffusion.benchmarking.architectures import arch_spec
    from ane_diffusion.benchmarking.flops import WorkCounter
    from ane_diffusion.benchmarking.projection import project
    from ane_diffusion.decoders import build_tiny, tiny_decoder

    torch.set_num_threads(args.threads)
    started, machine = rep.now(), rep.machine()
    spec = arch_spec("sd15")
    configs = spec.student_configs
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config({k: v for k, v in configs["vae"].items() if not k.startswith("_")}).eval()
    tiny = tiny_decoder(build_tiny(configs["vae_tiny"]), configs["vae"]["scaling_factor"]).eval()
    z = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    calls = {"vae_decode": lambda: vae.decode(z).sample, "vae_decode_tiny": lambda: tiny(z)}
    times = {name: [] for name in calls}
    with torch.inference_mode():
        first = {}
        for name, call in calls.items():
            start = time.perf_counter()
            out = call()
            first[name] = time.perf_counter() - start
            assert out.shape == (1, 3, 512, 512) and torch.isfinite(out).all()
        for _ in range(args.repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    work = WorkCounter(configs, 512, 512)
    components = {name: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t, "first_call_s": first[name],
                         "flops": work.flops(name, 1),
                         "parameters_m": round(sum(p.numel() for p in (vae.decoder.parameters() if name == "vae_decode"
                                                                          else tiny.parameters())) / 1e6, 3)}
                  for name, t in times.items()}
    ratio = components["vae_decode_tiny"]["median_s"] / components["vae_decode"]["median_s"]
    result = {"benchmark": "ane-diffusion decoder latency", "arch": "sd15", "date": started, "machine": machine,
              "versions": rep.versions(), "git_commit": rep.git_commit(ROOT),
              "settings": {"threads": torch.get_num_threads(), "repeats": args.repeats, "warmup": 1,
                           "dtype": "float32", "device": "cpu", "latent": "4x64x64", "image": "512x512",
                           "weights": "random (latency does not depend on weight values)"},
              "tiny_config": configs["vae_tiny"], "components": components, "tiny_over_full_time": ratio,
              "composed": compose(args.output_dir / "latency-sd15.json", ratio, components),
              "projection": project(decoders=("full", "tiny"))}
    rep.write_json(args.output_dir / "decoder-sd15.json", result)
    rep.write_text(args.output_dir / "decoder-sd15.md", markdown(result))
    print(args.output_dir / "decoder-sd15.md")
    print(f"full {components['vae_decode']['median_s']:.2f}s, tiny {components['vae_decode_tiny']['median_s']:.3f}s "
          f"({1 / ratio:.1f}x faster; FLOPs "
          f"{components['vae_decode']['flops'] / components['vae_decode_tiny']['flops']:.1f}x)")
    return 0


def compose(run_path: Path, ratio: float, components: dict):
    """The committed whole-image run with each student's full decode replaced by ``full x ratio``
    (and its FLOPs by the tiny decoder's: the FLOP ratios beside the composed latency ratios)."""
    if not run_path.exists():
        return None
    run = json.loads(run_path.read_text())
    full = {e["steps"]: e for e in run["images"] if e["role"] == "baseline" and e.get("decoder", "full") == "full"}
    saved = components["vae_decode"]["flops"] - components["vae_decode_tiny"]["flops"]
    rows = []
    for e in run["images"]:
        if e["role"] != "student" or e.get("decoder", "full") != "full":
            continue
        total = e["total"]["median_s"]
        tiny_decode = e["vae_decode_s"] * ratio
        composed = total - e["vae_decode_s"] + tiny_decode
        row = {"steps": e["steps"], "measured_total_s": total, "measured_vae_decode_s": e["vae_decode_s"],
               "composed_tiny_decode_s": tiny_decode, "composed_total_s": composed,
               "vs_baseline": {str(n): b["total"]["median_s"] / composed for n, b in full.items()},
               "flops": e["flops"] - saved,
               "flops_vs_baseline": {str(n): b["flops"] / (e["flops"] - saved) for n, b in full.items()}}
        rows.append(row)
    baseline_tiny = {str(n): b["total"]["median_s"] - b["vae_decode_s"] * (1 - ratio) for n, b in full.items()}
    return {"label": "COMPOSED (not one measured run)", "source_run": {"file": run_path.name, "date": run["date"],
                                                                        "threads": run["backend"].get("threads")},
            "method": "student total (measured in source_run) - its VAE decode + VAE decode x (tiny/full time "
                      "ratio measured here)", "students": rows, "baseline_with_tiny_total_s": baseline_tiny}


def markdown(r: dict) -> str:
    s, m = r["settings"], r["machine"]
    lines = [f"# Decoder latency: SD 1.5 VAE decoder vs tiny decoder ({s['image']}, torch CPU, {s['dtype']})", "",
             f"Measured {r['date']} on {m['cpu']} ({m['cores']} cores; load average at start "
             f"{m['load_average_at_start']}), {s['threads']} thread(s), median of {s['repeats']} interleaved calls "
             f"after {s['warmup']} warm-up. Weights: {s['weights']}. Tiny decoder: diffusers AutoencoderTiny in "
             "TAESD's shape (`ane_diffusion.decoders.tiny_config` of SD's VAE).", "",
             "| decoder | parameters (M) | median (s) | min (s) | first call (s) | GFLOP | GFLOP/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, c in r["components"].items():
        label = "full (AutoencoderKL.decode)" if name == "vae_decode" else "tiny (AutoencoderTiny decoder)"
        lines.append(f"| {label} | {c['parameters_m']:.2f} | {c['median_s']:.3f} | {c['min_s']:.3f} | "
                     f"{c['first_call_s']:.3f} | {c['flops'] / 1e9:,.0f} | {c['flops'] / c['median_s'] / 1e9:,.0f} |")
    full, tiny = r["components"]["vae_decode"], r["components"]["vae_decode_tiny"]
    lines += ["", f"Tiny decoder: **{1 / r['tiny_over_full_time']:.1f}x faster**, "
                  f"{full['flops'] / tiny['flops']:.1f}x fewer FLOPs.", ""]
    c = r.get("composed")
    if c:
        src = c["source_run"]
        lines += [f"## {c['label']}: whole images with the tiny decoder", "",
                  f"Method: {c['method']}. Source run: `{src['file']}` ({src['date']}, {src['threads']} thread). "
                  "Only the decoder's share is replaced; the UNet and text-encoder times are that run's. "
                  "Latency ratio, FLOP ratio in brackets.", "",
                  "| student steps | measured total, full decoder (s) | composed total, tiny decoder (s) | "
                  + " | ".join(f"guided {n} steps / student" for n in sorted(c["students"][0]["vs_baseline"],
                                                                           key=int)) + " |",
                  "|---:|---:|---:|" + "---:|" * len(c["students"][0]["vs_baseline"])]
        for row in c["students"]:
            ratios = " | ".join(f"**{row['vs_baseline'][n]:.1f}x** ({row['flops_vs_baseline'][n]:.1f}x)"
                                for n in sorted(row["vs_baseline"], key=int))
            lines.append(f"| {row['steps']} | {row['measured_total_s']:.1f} | {row['composed_total_s']:.1f} | "
                         f"{ratios} |")
        lines += ["", "Guided baselines keep their full decoder (measured). With the tiny decoder they would take "
                  + ", ".join(f"{n} steps {t:.1f} s" for n, t in c["baseline_with_tiny_total_s"].items())
                  + " (composed the same way).", ""]
    if r.get("projection"):
        from ane_diffusion.benchmarking.report import _projection_markdown

        lines += _projection_markdown(r["projection"])[1:] + [""]
    lines += ["Raw numbers: `decoder-sd15.json`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

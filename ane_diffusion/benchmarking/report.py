"""Where and with what a run happened, and its outputs: JSON, a markdown table, a PNG plot.

Every file is written atomically (:func:`ane_diffusion.atomic.atomic_file`), so an interrupted run
never leaves a half-written result behind.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path


def cpu_model() -> str:
    try:
        if sys.platform.startswith("linux"):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
        if sys.platform == "darwin":
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        ram = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        load = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
            "ram_gib": round(ram, 1) if ram else None, "platform": platform.platform(),
            "load_average_at_start": load}


def _version(package: str):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def versions() -> dict:
    return {"python": platform.python_version(), "ane_diffusion": _version("ane-diffusion"),
            "torch": _version("torch"), "diffusers": _version("diffusers"), "transformers": _version("transformers"),
            "coremltools": _version("coremltools"), "numpy": _version("numpy")}


def git_commit(root: Path):
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- writing ---------------------------------------------------------------------------------------------

def _readable(tmp: Path) -> None:
    """The usual permissions (0666 less the umask) instead of the temporary file's 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def write_text(path: Path, text: str) -> Path:
    from ane_diffusion.atomic import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        _readable(tmp)
    return Path(path)


def write_json(path: Path, report: dict) -> Path:
    return write_text(path, json.dumps(report, indent=2, sort_keys=False) + "\n")


def write_plot(path: Path, report: dict) -> Path:
    """Seconds per image against steps: measured points, and the per-step model through them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from ane_diffusion.atomic import atomic_file

    images = report["images"]
    comps = report["components"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    styles = {"baseline": ("tab:red", "o", "guided teacher, CFG batch 2, DPM-Solver++(2M)"),
              "student": ("tab:blue", "s", "guidance-distilled student, batch 1")}
    max_steps = max(e["steps"] for e in images)
    for role, (colour, marker, label) in styles.items():
        for decoder, fill in (("tiny", "none"), ("full", colour)):
            tiny = [e for e in images if e["role"] == role and e.get("decoder", "full") == decoder]
            if tiny:
                ax.plot([e["steps"] for e in tiny], [e["total"]["median_s"] for e in tiny], marker=marker,
                        linestyle="none", color=colour, markerfacecolor=fill, markersize=7,
                        label=f"{label}, {decoder} decoder (measured)")
        points = sorted((e["steps"], e["total"]["median_s"]) for e in images if e["role"] == role)
        if not points:
            continue
        unet = comps.get("unet_teacher" if role == "baseline" else "unet_student")
        te, vae = comps.get("text_encoder"), comps.get("vae_decode")
        if unet and te and vae:  # fixed cost + steps x one UNet call, from the component medians
            encodes = 2 if role == "baseline" else 1
            xs = list(range(1, max_steps + 1))
            fixed = encodes * te["median_s"] + vae["median_s"]
            ax.plot(xs, [fixed + n * unet["median_s"] for n in xs], color=colour, alpha=0.4, linestyle="--",
                    label=f"{role}: components x steps")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({e["steps"] for e in images})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if report["ratios"]:
        text = "measured speed-up (FLOP ratio)\n" + "\n".join(
            f"{r['baseline_steps']} guided / {r['student_steps']} student"
            + ("" if r.get("student_decoder", "full") == "full" else f" ({r['student_decoder']})")
            + ("" if r.get("baseline_decoder", "full") == "full" else f" [{r['baseline_decoder']} baseline]")
            + f": {r['latency_ratio']:.1f}x "
            + (f"({r['flops_ratio']:.1f}x)" if r["flops_ratio"] else "") for r in report["ratios"])
        ax.text(0.98, 0.03, text, transform=ax.transAxes, fontsize=7, ha="right", va="bottom", family="monospace",
                bbox=dict(boxstyle="round", facecolor="white", alpha=0.8, edgecolor="0.8"))
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("seconds per image (median)")
    backend = report["backend"]
    ax.set_title(f"{report['arch']}: latency per image, {backend['name']} {backend.get('device', '')} "
                 f"({report['machine']['cpu'][:40]})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
        _readable(tmp)
    plt.close(fig)
    return Path(path)


# -- markdown --------------------------------------------------------------------------------------------

def _ms(seconds) -> str:
    return f"{seconds * 1000:.1f}" if seconds is not None else "-"


def _s(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def _g(flops) -> str:
    if flops is None:
        return "-"
    g = flops / 1e9
    return f"{g:,.1f}" if g >= 10 else f"{g:.3g}"


def markdown(report: dict) -> str:
    b, m, s = report["backend"], report["machine"], report["settings"]
    where = ", ".join(str(x) for x in (b.get("device") or b.get("compute_units"), b.get("dtype")) if x)
    lines = [f"# Latency: `{report['arch']}` on {b['name']} ({where})", ""]
    lines.append(f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores, {m['ram_gib']} GiB RAM; load average "
                 f"at start {m['load_average_at_start']}); python {report['versions']['python']}, torch "
                 f"{report['versions']['torch']}, diffusers {report['versions']['diffusers']}. "
                 f"{s['latent']} latents ({s['height']}x{s['width']} images). Median of {s['repeats']} runs after "
                 f"{s['warmup']} warm-up call(s){' (quick mode)' if s['quick'] else ''}. Weights: "
                 f"{report['model']['weights']}.")
    lines += ["", "## Whole image (`Pipeline.text_to_image`)", "",
              "| model | steps | UNet calls x batch | text encoder (s) | UNet (s) | VAE decode (s) | other (s) "
              "| total (s) | GFLOP | VAE decode share: time (FLOP) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in report["images"]:
        unet = next((ev for ev in e["evaluations"] if ev["component"] == "unet"), None)
        calls = f"{unet['calls']} x {unet['batch']}" if unet else "-"
        share = f" ({e['vae_share_of_flops'] * 100:.0f}%)" if e.get("vae_share_of_flops") is not None else ""
        name = ("baseline: guided teacher (CFG), " if e["role"] == "baseline" else "student: guidance-distilled, ") + \
            e["sampler"] + (f", **{e['decoder']} decoder**" if e.get("decoder", "full") != "full" else "")
        lines.append(f"| {name} | {e['steps']} | {calls} | {_s(e['text_encoder_s'])} | {_s(e['unet_s'])} | "
                     f"{_s(e['vae_decode_s'])} | {_s(e['other_s'])} | **{_s(e['total']['median_s'])}** | "
                     f"{_g(e.get('flops'))} | {e['vae_share'] * 100:.0f}%{share} |")
    lines += ["", "## One call of each network", "",
              "| component | batch | median (ms) | min (ms) | first call (ms) | GFLOP | GFLOP/s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, c in report["components"].items():
        rate = c["flops"] / c["median_s"] / 1e9 if c.get("flops") else None
        lines.append(f"| {name} | {c['batch']} | {_ms(c['median_s'])} | {_ms(c['min_s'])} | "
                     f"{_ms(c.get('first_call_s'))} | {_g(c.get('flops'))} | {f'{rate:,.0f}' if rate else '-'} |")
    if report["ratios"]:
        def key(r, side):
            return (r[f"{side}_steps"], r.get(f"{side}_decoder", "full"))

        def label(steps, decoder, unit):
            return f"{steps} {unit}{'s' if steps > 1 else ''}" + ("" if decoder == "full" else f", {decoder} decoder")

        columns = sorted({key(r, "student") for r in report["ratios"]}, key=lambda k: (k[1] != "full", k[0]))
        rows = sorted({key(r, "baseline") for r in report["ratios"]}, key=lambda k: (k[1] != "full", k[0]))
        lines += ["", "## Speed-up: baseline / student (the figure that carries across machines)", "",
                  "Measured latency ratio, with the FLOP ratio in brackets. Baselines decode with the full VAE "
                  "unless the row says otherwise.", "",
                  "| baseline \\ student | " + " | ".join(label(n, d, "step") for n, d in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for base in rows:
            cells = []
            for col in columns:
                r = next((r for r in report["ratios"] if key(r, "baseline") == base and key(r, "student") == col),
                         None)
                if r is None:
                    cells.append("-")
                    continue
                flops = f" ({r['flops_ratio']:.1f}x)" if r["flops_ratio"] else ""
                cells.append(f"**{r['latency_ratio']:.1f}x**{flops}")
            lines.append(f"| {label(base[0], base[1], 'step')} | " + " | ".join(cells) + " |")
    lines += _projection_markdown(report.get("projection"))
    if report.get("coreml"):
        lines += _coreml_markdown(report)
    lines += ["", f"Raw numbers: `{Path(report.get('files', {}).get('json', 'latency.json')).name}`.", ""]
    return "\n".join(lines)


def _coreml_markdown(report: dict) -> list:
    c = report["coreml"]
    out = ["", f"## Core ML: loading and first calls ({c['compute_units']})", "",
           "Load: constructing the backend and opening each package. First call: the first prediction of each "
           "network (the component table's *first call* column), which includes Core ML's on-device "
           "specialisation; neither is in the timings above.", "",
           "| export | path | backend (s) | TextEncoder (s) | Unet (s) | VAEDecoder (s) | total load (s) |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for role, load in c["model_load_s"].items():
        cells = " | ".join(_s(load.get(k)) for k in ("backend", "TextEncoder", "Unet", "VAEDecoder", "total"))
        out.append(f"| {role} | `{c['exports'].get(role)}` | {cells} |")
    return out


def _projection_markdown(p) -> list:
    if not p:
        return []
    steps = list(p["rows"][0]["student"]) if p["rows"] else []
    out = ["", f"## {p['label']}", "",
           f"Method: {p['method']}.", "", f"Work: {p['basis']}.", "", "Assumptions:", ""]
    out += [f"- {a}" for a in p["assumptions"]]
    out += [f"- {p['peak_caveat']}", f"- Baselines: {p['baseline_source']}.", "",
            "| device (chip, peak NE TOPS) | published baseline (measured by Apple) | baseline TFLOP | "
            "effective TFLOPS (% of peak) | "
            + " | ".join(f"student {n} step{'s' if n != '1' else ''}: projected / floor" for n in steps) + " |",
            "|---|---|---:|---:|" + "---:|" * len(steps)]
    tiny = bool(p["rows"]) and "student_tiny" in p["rows"][0]
    if tiny:
        out[-2] = out[-2][:-2] + " | " + " | ".join(
            f"student {n} step{'s' if n != '1' else ''} + tiny decoder: projected / floor" for n in steps) + " |"
        out[-1] += "---:|" * len(steps)
    for r in p["rows"]:
        frac = f" ({r['baseline_fraction_of_peak'] * 100:.0f}%)" if r["baseline_fraction_of_peak"] else ""
        cells = []
        for part in ("student", "student_tiny") if tiny else ("student",):
            for n in steps:
                st = r[part][n]
                floor = f"{st['floor_s']:.2f} s" if st["floor_s"] is not None else "-"
                cells.append(f"~{st['projected_s']:.2f} s / {floor}")
        out.append(f"| {r['device']} ({r['chip']}, {r['peak_ne_tops']}) | {r['model_label']}, {r['steps']} steps, "
                   f"{r['precision']}, {r['compute_units']}: {r['latency_s']} s | {r['baseline_flops'] / 1e12:.1f} | "
                   f"{r['baseline_effective_tflops']:.2f}{frac} | " + " | ".join(cells) + " |")
    return out

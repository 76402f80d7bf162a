"""Benchmark: convert the full-size Stable Diffusion 1.5 architecture (a guidance-distilled student)
to Core ML at 512x512 and record wall time, peak memory and package sizes per component.

    python benchmarks/convert_sd15.py            # full size: ~10 min, ~8-12 GiB RAM (run on a quiet machine)
    python benchmarks/convert_sd15.py --tiny     # tiny configs, seconds: checks the script itself

What it converts (random weights from the public SD 1.5 configs, kept inline in
``ane_diffusion.testing.sd15``; nothing is downloaded): the CLIP ViT-L text encoder (float16),
the UNet with the student's guidance input (``time_cond_proj_dim`` 256; float16, then 6-bit
k-means palettization) and the VAE decoder (float16), i.e. the export an iPhone app ships. Each
job runs in its own process (through :func:`ane_diffusion_conversion.convert_bundle`, the code path
of ``python -m ane_diffusion convert``), so its peak resident memory is its own: the parent reads
the child's ``ru_maxrss`` with ``os.wait4`` and the child samples ``VmRSS`` per stage from
``/proc/self/status``.

Results: ``benchmarks/results/convert-sd15.json`` and ``.md`` (``convert-sd15-tiny.*`` with
``--tiny``). Goal: everything, compressed, in under 10 minutes wall and 12 GiB peak RSS. Reference
(Linux, 2 cores): the UNet alone 2 min 12 s / 7.5 GiB to a 1.72 GB float16 package; its 6-bit
palettization 3 min 19 s to 646 MB.

Random weights make the timings representative (same shapes, same number of k-means fits) but
not the PSNRs: verify a real checkpoint's export with ``python -m ane_diffusion verify``. The
tokenizer files in the export are a tiny stand-in (CLIP's real vocab is not downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GOAL_SECONDS = 600
GOAL_RSS_GIB = 12.0

# name -> (components, compression)
JOBS = {
    "text_encoder": ("text_encoder", ""),
    "unet": ("unet", "unet=6"),
    "vae_decoder": ("vae_decoder", ""),
}


def bundle_for(tiny: bool):
    """An in-memory student bundle: SD 1.5 (or tiny) configs, random weights, a tiny tokenizer."""
    from ane_diffusion.bundle import Bundle
    from ane_diffusion.card import ModelCard
    from ane_diffusion.testing.factory import tiny_configs, tiny_tokenizer_files

    files, vocab = tiny_tokenizer_files()
    if tiny:
        configs = tiny_configs(vocab_size=len(vocab), bos_id=vocab["<|startoftext|>"], eos_id=vocab["<|endoftext|>"])
        configs["unet"]["time_cond_proj_dim"] = 16
        dim = 16
    else:  # the public SD 1.5 configs (inline in ane_diffusion.testing.sd15), the UNet made a student
        from ane_diffusion.testing import sd15

        configs = sd15.configs()
        dim = sd15.GUIDANCE_EMBEDDING_DIM
        configs["unet"]["time_cond_proj_dim"] = dim
    card = ModelCard(kind="guidance-distilled", prediction_type="epsilon", steps=4, w_min=0.0, w_max=14.0,
                     default_w=6.5, guidance_embedding_dim=dim, recommended_sampler="ddim", recommended_steps=4,
                     description="SD 1.5 architecture with random weights (conversion benchmark)")
    return Bundle(source="sd15-random-weights" + ("-tiny" if tiny else ""), configs=configs, card=card.validate(),
                  tokenizer_files=files, extra={"weights": "random, seed 0"})


def random_loader(bundle, name):
    """module_loader for convert_bundle: a seeded random module instead of loading weights."""
    import torch

    from ane_diffusion_conversion.components import build_module

    torch.manual_seed({"text_encoder": 0, "unet": 1, "vae": 2}[name])
    return build_module(bundle.configs, name).eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------- #
# Child: one job
# --------------------------------------------------------------------------------------------- #


class RssSampler:
    """Peak VmRSS (Linux /proc) per stage, sampled every 50 ms in a thread."""

    def __init__(self) -> None:
        self.current_peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.available = Path("/proc/self/status").exists()
        if self.available:
            self.thread.start()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self.stop.is_set():
            self.current_peak = max(self.current_peak, self.rss())
            time.sleep(0.05)

    def reset(self) -> None:
        self.current_peak = self.rss() if self.available else 0

    def peak(self) -> int:
        return max(self.current_peak, self.rss()) if self.available else 0


def run_job(name: str, output: Path, tiny: bool, result_path: Path) -> None:
    from ane_diffusion.memory import keep_freed_memory

    freed_kept = keep_freed_memory()  # torch is 10-50x slower on some VMs without it
    from ane_diffusion_conversion import ConvertOptions, convert_bundle
    from ane_diffusion_conversion.progress import Progress

    sampler = RssSampler()
    stages = []

    def callback(kind, event):
        if kind == "start":
            sampler.reset()
        else:
            stages.append({"stage": event["stage"], "seconds": round(event["seconds"], 2),
                           "peak_rss_bytes": sampler.peak(), "detail": event.get("detail", "")})

    components, compress = JOBS[name]
    start = time.perf_counter()
    result = convert_bundle(
        ConvertOptions(model=bundle_for(tiny), output=output, components=components, compress=compress,
                       height=None if not tiny else 16, width=None if not tiny else 16),
        progress=Progress(callback=callback), module_loader=random_loader)
    wall = time.perf_counter() - start
    sampler.stop.set()
    contract_name = {"text_encoder": "TextEncoder", "unet": "Unet", "vae_decoder": "VAEDecoder"}[name]
    record = result.contract["converter"]["components"][contract_name]
    result_path.write_text(json.dumps({
        "job": name, "wall_seconds": round(wall, 2), "stages": stages,
        "self_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024),
        "bytes": record["bytes"], "uncompressed_bytes": record.get("uncompressed_bytes"),
        "files": record["files"], "compression": record["compression"], "keep_freed_memory": freed_kept,
    }, indent=2))


# --------------------------------------------------------------------------------------------- #
# Parent
# --------------------------------------------------------------------------------------------- #


def gib(n) -> str:
    return f"{n / 2**30:.2f} GiB"


def mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def markdown(summary: dict) -> str:
    lines = [f"# Core ML conversion benchmark: {summary['model']}", "",
             f"{summary['machine']} | Python {summary['python']} | coremltools {summary['coremltools']} | "
             f"torch {summary['torch']} | {summary['date']}", "",
             f"Total wall **{summary['total_wall_seconds']:.0f} s** (goal < {GOAL_SECONDS} s), peak RSS "
             f"**{gib(summary['peak_rss_bytes'])}** (goal < {GOAL_RSS_GIB:.0f} GiB): "
             f"{'goal met' if summary['goal_met'] else 'goal NOT met'}.", "",
             "| job | wall s | peak RSS | package | uncompressed | stages (s, peak RSS) |",
             "|---|---:|---:|---:|---:|---|"]
    for job in summary["jobs"]:
        stages = "; ".join(f"{s['stage']} {s['seconds']:.1f} s ({gib(s['peak_rss_bytes'])})" for s in job["stages"])
        lines.append(f"| {job['job']} ({job['compression']['spec']}) | {job['process_wall_seconds']:.1f} | "
                     f"{gib(job['peak_rss_bytes'])} | {mb(job['bytes'])} | {mb(job['uncompressed_bytes'])} | {stages} |")
    what = ("tiny test configs, the UNet with a 16-wide guidance input" if summary["tiny"] else
            "public SD 1.5 configs, the UNet with a 256-wide guidance input")
    lines += ["", f"Random weights ({what}); each job in its own process; peak RSS = the child's ru_maxrss "
              "(os.wait4), per stage = sampled VmRSS. `load` builds the random module (a real checkpoint loads "
              "its safetensors instead)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs (checks the script in seconds)")
    parser.add_argument("--output", type=Path, default=None, help="keep the export here (default: a temp folder)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the .json/.md results")
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"subset of {','.join(JOBS)}")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.job:  # child process
        run_job(args.job, args.output, args.tiny, args.result_file)
        return 0

    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        parser.error(f"unknown jobs {unknown}; choose from {list(JOBS)}")
    work = Path(tempfile.mkdtemp(prefix="convert-sd15-"))
    output = args.output or work / "export"
    if output.exists() and args.output is not None and any(output.iterdir()):
        parser.error(f"{output} is not empty")
    results = []
    begin = time.perf_counter()
    try:
        for name in jobs:
            result_file = work / f"{name}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--job", name, "--output", str(output),
                       "--result-file", str(result_file)] + (["--tiny"] if args.tiny else [])
            print(f"== {name}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            proc = subprocess.Popen(command, cwd=str(ROOT))
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                print(f"error: job {name} failed with exit status {proc.returncode}", file=sys.stderr)
                return 1
            job = json.loads(result_file.read_text())
            job["process_wall_seconds"] = round(wall, 2)
            job["peak_rss_bytes"] = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
            results.append(job)
            print(f"== {name}: {wall:.1f} s, peak RSS {gib(job['peak_rss_bytes'])}, {mb(job['bytes'])}",
                  file=sys.stderr, flush=True)
        total = time.perf_counter() - begin
    finally:
        if args.output is None:
            shutil.rmtree(work, ignore_errors=True)

    from importlib import metadata

    peak = max(job["peak_rss_bytes"] for job in results)
    summary = {
        "model": "Stable Diffusion 1.5 architecture, student, 512x512" if not args.tiny else "tiny configs, 16x16",
        "tiny": args.tiny, "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(), "coremltools": metadata.version("coremltools"),
        "torch": metadata.version("torch"), "total_wall_seconds": round(total, 1), "peak_rss_bytes": peak,
        "goal": {"wall_seconds": GOAL_SECONDS, "peak_rss_gib": GOAL_RSS_GIB},
        "goal_met": total < GOAL_SECONDS and peak < GOAL_RSS_GIB * 2**30,
        "total_package_bytes": sum(job["bytes"] for job in results), "jobs": results,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    stem = "convert-sd15-tiny" if args.tiny else "convert-sd15"
    (args.results / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.results / f"{stem}.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

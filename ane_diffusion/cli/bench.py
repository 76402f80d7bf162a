"""``bench``: latency of guided baselines against guidance-distilled students, in one run.

    python -m ane_diffusion bench --quick                    # demo architecture, a few seconds
    python -m ane_diffusion bench --arch sd15                # full SD 1.5 at 512x512 (long on a CPU)
    python -m ane_diffusion bench --arch sd15 --check-unet   # one student UNet call: does it run?
    python -m ane_diffusion bench --backend coreml --model STUDENT_EXPORT --teacher-model TEACHER_EXPORT  # macOS

A thin shell over :mod:`ane_diffusion.benchmarking`. Results go to
``benchmarks/results/latency-<arch>.json/.md/.png``; ``benchmarks/README.md`` explains how to read them.
"""

from __future__ import annotations

from pathlib import Path

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="latency: guided baseline vs guidance-distilled student",
        description="Time a guided teacher (classifier-free guidance, UNet batch 2, DPM-Solver++(2M), 20 and 50 "
                    "steps) against its guidance-distilled student (batch 1, 1/2/4 steps) on one backend, in one "
                    "run: per network call, per image, the baseline/student ratios, FLOPs, and a labelled "
                    "PROJECTION to Apple devices from Apple's published baselines. Writes "
                    "benchmarks/results/latency-ARCH.{json,md,png}.")
    p.add_argument("--arch", default="demo", help="demo (the embedded demo model) or sd15 (Stable Diffusion 1.5, "
                   "512x512, random weights); default demo")
    p.add_argument("--quick", action="store_true", help="demo architecture, fewer repeats (CI smoke test)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per network before timing "
                   "(default: demo 2, sd15 1, quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs; the median is reported "
                   "(default: demo 7, sd15 3, quick 3)")
    p.add_argument("--baseline-steps", type=int, nargs="+", default=[20, 50], metavar="N",
                   help="teacher steps (default 20 50)")
    p.add_argument("--student-steps", type=int, nargs="+", default=[1, 2, 4], metavar="N",
                   help="student steps (default 1 2 4)")
    p.add_argument("--decoders", nargs="+", choices=("full", "tiny"), default=["full", "tiny"],
                   help="VAE decoders of the whole-image runs (default both: students at every step count, the "
                        "baseline at its smallest; the tiny one is a random AutoencoderTiny sized for the VAE)")
    p.add_argument("--output-dir", type=Path, default=None, help="default: benchmarks/results of the checkout")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG")
    p.add_argument("--prompt", default=None, help="prompt of the whole-image runs (cost does not depend on it)")
    p.add_argument("--check-unet", action="store_true",
                   help="only time one student UNet call of --arch (writes nothing): does the architecture run?")
    p.add_argument("--backend", choices=("torch", "coreml"), default="torch")
    p.add_argument("--device", default=None, help="torch device (default: mps, then cuda, then cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 for demo, whose networks are too small to share; "
                        "torch's default for sd15)")
    p.add_argument("--model", default=None, help="coreml: the student's Core ML export folder")
    p.add_argument("--teacher-model", default=None, help="coreml: the guided teacher's Core ML export (baseline)")
    p.add_argument("--compute-units", default="CPU_AND_NE", choices=COMPUTE_UNITS, help="coreml compute units")
    p.set_defaults(run=run)


def run(args) -> int:
    from .. import benchmarking as lib

    options = lib.BenchOptions(
        arch=args.arch, quick=args.quick, warmup=args.warmup, repeats=args.repeats,
        baseline_steps=tuple(args.baseline_steps), student_steps=tuple(args.student_steps),
        output_dir=args.output_dir, backend=args.backend, device=args.device, threads=args.threads,
        model=args.model, teacher_model=args.teacher_model, compute_units=args.compute_units,
        prompt=args.prompt, check_unet=args.check_unet, plot=args.plot, decoders=tuple(args.decoders))
    lib.run(options)
    return 0

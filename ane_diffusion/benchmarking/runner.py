"""One benchmark run: build, time components and whole images, count work, project, write."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from ane_diffusion.decoders import has_tiny

from .architectures import ARCHITECTURES, PROMPTS, BenchError, check_arch

ROOT = Path(__file__).resolve().parents[2]
"""The repository checkout this library lives in."""
RESULTS = ROOT / "benchmarks" / "results"

BASELINE_STEPS = (20, 50)
STUDENT_STEPS = (1, 2, 4)
BASELINE_SAMPLER = "dpmpp-2m"
STUDENT_SAMPLER = "ddim"
DEFAULT_RUNS = {"demo": {"warmup": 2, "repeats": 7, "threads": 1}, "sd15": {"warmup": 1, "repeats": 3, "threads": None}}
"""Per architecture. ``threads``: torch CPU threads (None: torch's default, one per core). The demo
networks are too small for intra-op parallelism to pay, and on a shared machine OpenMP threads
that wait on each other made a quick demo run 6x slower and far noisier (58 s vs 10 s measured on a
loaded 2-core VM), so the demo runs on one thread unless ``--threads`` says otherwise."""
QUICK_RUNS = {"warmup": 1, "repeats": 3, "threads": 1}


@dataclass
class BenchOptions:
    arch: str = "demo"
    quick: bool = False
    warmup: Optional[int] = None
    """Untimed calls of each network (and one untimed image per model) before timing."""
    repeats: Optional[int] = None
    baseline_steps: tuple = BASELINE_STEPS
    student_steps: tuple = STUDENT_STEPS
    output_dir: Optional[Path] = None
    backend: str = "torch"
    device: Optional[str] = None
    threads: Optional[int] = None
    model: Optional[str] = None
    teacher_model: Optional[str] = None
    compute_units: str = "CPU_AND_NE"
    prompt: Optional[str] = None
    check_unet: bool = False
    plot: bool = True
    seed: int = 0
    decoders: tuple = ("full", "tiny")
    """Decoders of the whole-image runs; ``tiny`` is skipped when the model carries none."""
    tiny_baseline_steps: Optional[tuple] = None
    """Baseline step counts also run with the tiny decoder (default: the smallest baseline count,
    which separates the win of the decoder from the win of the steps)."""
    extra: dict = field(default_factory=dict)

    def resolved(self) -> "BenchOptions":
        """Defaults filled in; a bad request raises :class:`BenchError` (one line)."""
        check_arch(self.arch)
        if self.backend not in ("torch", "coreml"):
            raise BenchError(f"unknown backend {self.backend!r}; choose one of: torch, coreml")
        if self.quick and self.arch != "demo":
            raise BenchError(f"--quick benchmarks the demo architecture only (got --arch {self.arch})")
        for name, steps in (("--baseline-steps", self.baseline_steps), ("--student-steps", self.student_steps)):
            if not steps:
                raise BenchError(f"{name} needs at least one step count")
            bad = [s for s in steps if int(s) <= 0]
            if bad:
                raise BenchError(f"{name} must be >= 1, got {bad[0]}")
        runs = QUICK_RUNS if self.quick else DEFAULT_RUNS[self.arch]
        warmup = runs["warmup"] if self.warmup is None else int(self.warmup)
        repeats = runs["repeats"] if self.repeats is None else int(self.repeats)
        if warmup < 0:
            raise BenchError(f"--warmup must be >= 0, got {warmup}")
        if repeats < 1:
            raise BenchError(f"--repeats must be >= 1, got {repeats}")
        if self.check_unet and self.backend != "torch":
            raise BenchError("--check-unet times the torch backend only")
        if self.backend == "coreml" and warmup < 1:
            warmup = 1  # the first call is reported separately (compilation), never timed
        threads = runs["threads"] if self.threads is None else int(self.threads)
        if threads is not None and threads < 1:
            raise BenchError(f"--threads must be >= 1, got {threads}")
        if self.backend == "coreml":
            threads = self.threads
        bad = [d for d in self.decoders if d not in ("full", "tiny")]
        if bad or not self.decoders:
            raise BenchError(f"--decoders takes full and/or tiny, got {' '.join(map(str, self.decoders))}")
        baseline_steps = tuple(sorted({int(s) for s in self.baseline_steps}))
        tiny_baseline = (baseline_steps[:1] if self.tiny_baseline_steps is None
                         else tuple(sorted({int(s) for s in self.tiny_baseline_steps})))
        return replace(self, warmup=warmup, repeats=repeats, threads=threads, tiny_baseline_steps=tiny_baseline,
                       decoders=tuple(d for d in ("full", "tiny") if d in self.decoders),
                       baseline_steps=tuple(sorted({int(s) for s in self.baseline_steps})),
                       student_steps=tuple(sorted({int(s) for s in self.student_steps})),
                       output_dir=Path(self.output_dir) if self.output_dir else RESULTS,
                       prompt=self.prompt or PROMPTS[self.arch])


def _stderr(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(options: BenchOptions, log=_stderr) -> Optional[dict]:
    """Run the benchmark; returns the report (also written to disk), or None when skipped."""
    o = options.resolved()
    if o.backend == "coreml":
        from . import coreml

        if not coreml.available():
            print(coreml.SKIP_NOTE.format(platform=sys.platform))
            return None
    if not o.check_unet:
        if o.output_dir == RESULTS:
            RESULTS.mkdir(parents=True, exist_ok=True)
        if not o.output_dir.is_dir():  # checked now, not after an hour of timing
            raise BenchError(f"output folder {o.output_dir} does not exist")
    previous = None
    if o.threads:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(o.threads)
    try:
        return check_unet(o, log) if o.check_unet else benchmark(o, log)
    finally:
        if previous is not None:
            torch.set_num_threads(previous)


def check_unet(o: BenchOptions, log=_stderr) -> dict:
    """Time one student UNet call (batch 1) of ``o.arch``: does the architecture build and run?"""
    import time

    import numpy as np

    from ane_diffusion.backends.torch_backend import TorchBackend
    from ane_diffusion.torch_models import TorchComponents

    from .architectures import build_student_unet
    from .flops import WorkCounter
    from .measure import stats

    start = time.perf_counter()
    spec, unet, device = build_student_unet(o.arch, o.device, o.seed)
    built = time.perf_counter() - start
    _, bundle = spec.bundles()
    backend = TorchBackend(bundle, device=str(device), dtype=next(unet.parameters()).dtype,
                           components=TorchComponents(None, unet, None))
    size = bundle.default_size
    shape = (1, bundle.latent_channels, size // bundle.vae_scale_factor, size // bundle.vae_scale_factor)
    rng = np.random.default_rng(o.seed)
    z = rng.standard_normal(shape).astype(np.float32)
    hidden = rng.standard_normal((1, 77, spec.teacher_configs["text_encoder"]["hidden_size"])).astype(np.float32)
    w = np.full(1, spec.default_w, np.float32)
    times = []
    for _ in range(o.warmup + o.repeats):
        start = time.perf_counter()
        backend.predict(z, 500, hidden, w)
        times.append(time.perf_counter() - start)
    flops = WorkCounter(spec.student_configs, size, size).flops("unet", 1)
    timed = stats(times[o.warmup:])
    result = {"arch": o.arch, "component": "unet_student", "batch": 1, "latent": list(shape[1:]),
              "device": str(device), "dtype": str(backend.dtype).replace("torch.", ""), "build_s": built,
              "first_call_s": times[0], "warmup": o.warmup, **timed, "flops": flops,
              "gflops_per_s": flops / timed["median_s"] / 1e9}
    print(f"{o.arch} student UNet call (batch 1, latents {'x'.join(map(str, shape[1:]))}, {result['device']} "
          f"{result['dtype']}): first call {times[0]:.2f}s, median {timed['median_s']:.2f}s over {o.repeats} "
          f"after {o.warmup} warm-up; {flops / 1e9:.0f} GFLOP = {result['gflops_per_s']:.0f} GFLOP/s "
          f"(built in {built:.0f}s)")
    return result


def benchmark(o: BenchOptions, log=_stderr) -> dict:
    from . import report as rep
    from .flops import WorkCounter
    from .measure import CountingBackend, Subject, component_calls, latent_shape, time_components, time_images
    from .projection import project

    started = rep.now()
    machine = rep.machine()
    if o.backend == "coreml":
        from . import coreml

        setup = coreml.build(o.model, o.teacher_model, o.compute_units, log)
        model_info = {"configs_from": "Core ML exports", "weights": "as exported"}
    else:
        from .architectures import build_torch

        setup = build_torch(o.arch, o.device, o.seed, log)
        model_info = {"configs_from": setup.spec.configs_from, **setup.spec.info}
    subjects = {}
    if setup.teacher is not None:
        subjects["baseline"] = Subject("baseline", setup.teacher, BASELINE_SAMPLER, setup.teacher.card.default_w)
    if setup.student is not None:
        subjects["student"] = Subject("student", setup.student, STUDENT_SAMPLER,
                                      setup.teacher.card.default_w if setup.teacher else setup.student.card.default_w)
    for subject in subjects.values():
        subject.pipeline.backend = CountingBackend(subject.pipeline.backend)
    tiny = {role: replace(s, decoder="tiny") for role, s in subjects.items()
            if "tiny" in o.decoders and has_tiny(s.pipeline.bundle)}
    main = (subjects.get("student") or subjects["baseline"]).pipeline
    height = width = main.bundle.default_size
    count = _strict if o.backend == "torch" else _lenient
    if o.backend == "coreml":
        works = _export_work(o.arch, subjects, height, width, log)
    else:
        works = {role: WorkCounter(s.pipeline.bundle.configs, height, width) for role, s in subjects.items()}

    def flops(fn, *needed):
        return None if any(w is None for w in needed) else count(fn, log)

    log(f"timing one call of each network ({o.warmup} warm-up, {o.repeats} timed)")
    calls = component_calls(subjects.get("baseline"), subjects.get("student"), o.prompt, o.seed)
    components = time_components(calls, o.warmup, o.repeats, log)
    main_work = works["student"] if "student" in works else works["baseline"]
    for name, c in components.items():
        work = {"unet_teacher": works.get("baseline"), "unet_student": works.get("student")}.get(name, main_work)
        c["flops"] = flops(lambda: work.flops("unet" if name.startswith("unet") else name, c["batch"]), work)

    full = "full" in o.decoders
    plan = [(subjects["baseline"], n) for n in o.baseline_steps if "baseline" in subjects and full] + \
           [(tiny["baseline"], n) for n in o.tiny_baseline_steps if "baseline" in tiny] + \
           [(subjects["student"], n) for n in o.student_steps if "student" in subjects and full] + \
           [(tiny["student"], n) for n in o.student_steps if "student" in tiny]
    log(f"timing whole images: {', '.join(f'{s.role} {n} ({s.decoder})' for s, n in plan)} "
        f"({o.repeats} runs each, interleaved)")
    images = time_images(plan, o.prompt, o.warmup, o.repeats, log)
    for e in images:
        evaluations = {(ev["component"], ev["batch"]): ev["calls"] for ev in e["evaluations"]}
        work = works[e["role"]]
        e["flops"] = flops(lambda: work.image_flops(evaluations), work)
        e["flops_breakdown"] = flops(lambda: {f"{c}_batch{b}": k * work.flops(c, b)
                                              for (c, b), k in evaluations.items()}, work)
        e["vae_share_of_flops"] = (sum(v for k, v in e["flops_breakdown"].items() if k.startswith("vae")) / e["flops"]
                                   if e["flops"] and e["flops_breakdown"] else None)

    def unet(e):  # UNet sample-evaluations per image: calls x batch
        return sum(ev["calls"] * ev["batch"] for ev in e["evaluations"] if ev["component"] == "unet")

    ratios = []
    for b in (e for e in images if e["role"] == "baseline"):
        for s in (e for e in images if e["role"] == "student"):
            ratios.append({"baseline_steps": b["steps"], "student_steps": s["steps"],
                           "baseline_decoder": b["decoder"], "student_decoder": s["decoder"],
                           "latency_ratio": b["total"]["median_s"] / s["total"]["median_s"],
                           "latency_ratio_min": b["total"]["min_s"] / s["total"]["min_s"],
                           "flops_ratio": b["flops"] / s["flops"] if b["flops"] and s["flops"] else None,
                           "unet_sample_evaluations_ratio": unet(b) / unet(s)})
    log("counting the work of SD 1.5 / SD 2.1-base for the Apple projection")
    projection = project(o.student_steps, decoders=o.decoders)

    name = f"latency-{o.arch}" + ("-coreml" if o.backend == "coreml" else "")
    files = {ext: str(o.output_dir / f"{name}.{ext}") for ext in ("json", "md", "png")}
    if not o.plot:
        files.pop("png")
    shape = latent_shape(main)
    report = {
        "benchmark": "ane-diffusion latency", "schema": 1, "arch": o.arch, "date": started, "finished": rep.now(),
        "machine": machine, "versions": rep.versions(), "git_commit": rep.git_commit(ROOT),
        "backend": setup.backend_info,
        "settings": {"quick": o.quick, "warmup": o.warmup, "repeats": o.repeats, "statistic": "median",
                     "baseline_steps": list(o.baseline_steps), "student_steps": list(o.student_steps),
                     "baseline_sampler": BASELINE_SAMPLER, "student_sampler": STUDENT_SAMPLER,
                     "w": next(iter(subjects.values())).w, "prompt": o.prompt, "height": height, "width": width,
                     "latent": "x".join(map(str, shape)), "images_per_run": 1,
                     "decoders": list(o.decoders), "tiny_baseline_steps": list(o.tiny_baseline_steps)},
        "model": model_info,
        "components": components,
        "images": images,
        "ratios": ratios,
        "vae_share": {str(e["steps"]) + ("" if e["decoder"] == "full" else f" {e['decoder']}"):
                      {"time": e["vae_share"], "flops": e["vae_share_of_flops"]}
                      for e in images if e["role"] == "student"},
        "projection": projection,
        "coreml": None if o.backend != "coreml" else setup.backend_info,
        "files": files,
    }
    rep.write_json(Path(files["json"]), report)
    rep.write_text(Path(files["md"]), rep.markdown(report))
    if o.plot:
        rep.write_plot(Path(files["png"]), report)
    for path in files.values():
        print(path)
    for r in ratios:
        flops = f", {r['flops_ratio']:.1f}x FLOPs" if r["flops_ratio"] else ""
        print(f"baseline {r['baseline_steps']} steps ({r['baseline_decoder']} decoder) / student "
              f"{r['student_steps']} steps ({r['student_decoder']} decoder): "
              f"{r['latency_ratio']:.1f}x measured{flops}")
    if o.backend != "coreml":
        print(coreml_note())
    return report


def _export_work(arch: str, subjects: dict, height: int, width: int, log) -> dict:
    """Work counters for Core ML exports. An export records only part of its configs, too little to
    rebuild its networks, so FLOPs come from ``--arch``'s full configs, and only when every
    architecture key the export does record agrees with them."""
    from .architectures import arch_spec, config_mismatch
    from .flops import WorkCounter

    spec = arch_spec(arch)
    reference = {"baseline": spec.teacher_configs, "student": spec.student_configs}
    expected_size = spec.bundles()[0].default_size
    works = {}
    for role, subject in subjects.items():
        configs = reference[role]
        size = subject.pipeline.bundle.default_size
        if size != expected_size or size != height:
            mismatch = f"images are {size} px, --arch {arch} makes {expected_size} px"
        else:
            mismatch = config_mismatch(configs, subject.pipeline.bundle.configs)
        if mismatch:
            log(f"FLOPs of the {role} not counted: its export does not match --arch {arch} ({mismatch})")
            works[role] = None
        else:
            works[role] = WorkCounter(configs, height, width)
    return works


def _strict(fn, log):
    return fn()


def _lenient(fn, log):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - FLOPs are optional on Core ML exports
        log(f"FLOPs not counted ({type(exc).__name__}: {exc})")
        return None


def coreml_note() -> str:
    from . import coreml

    if coreml.available():
        return ("note: for the Neural Engine, rerun with --backend coreml --model STUDENT_EXPORT "
                "[--teacher-model TEACHER_EXPORT]")
    return coreml.SKIP_NOTE.format(platform=sys.platform)


__all__ = ["ARCHITECTURES", "BenchError", "BenchOptions", "run", "benchmark", "check_unet"]

"""The Core ML path (macOS only): the same measurements on exported Core ML packages.

Written against the Core ML backend's interface (``ane_diffusion.backends.coreml_backend``:
``CoreMLBackend(bundle, compute_units=...)`` through ``make_backend("coreml", ...)``, export folders
read by ``resolve_model``), which offers the same ``encode_text`` / ``predict`` / ``decode`` calls
as the torch backend. Besides the steady state it reports what a user waits for once: loading each
export and its packages (``model_load_s``) and the first call of each network (``first_call_s`` of
each component; on the Neural Engine that first prediction includes Core ML's on-device
specialisation).

Not run off macOS: there the backend falls back to a numpy MIL executor, whose timings say nothing
about Core ML, so the benchmark prints one line and skips.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
PACKAGES = ("TextEncoder", "Unet", "VAEDecoder")
"""The export's packages a text-to-image run uses (contract names of ``CoreMLBackend``)."""
SKIP_NOTE = "note: the Core ML benchmark runs only on macOS (Core ML predictions need it); skipped on {platform}"


def available() -> bool:
    return sys.platform == "darwin"


@dataclass
class CoreMLSetup:
    teacher: object = None
    student: object = None
    backend_info: dict = field(default_factory=dict)


def _resolve(path: str):
    """An export folder's bundle (``coreml_backend.resolve_model`` reads its contract), else any bundle."""
    try:
        from ane_diffusion.backends.coreml_backend import resolve_model
    except ImportError:  # an older checkout without the export reader
        from ane_diffusion.bundle import resolve_bundle as resolve_model
    return resolve_model(path)


def build(student_model: str, teacher_model: str | None, compute_units: str, log=None) -> CoreMLSetup:
    """Pipelines over Core ML exports: ``student_model`` (a guidance-distilled export) and,
    for the baseline, ``teacher_model`` (a guided-teacher export with a batch-2 UNet).

    Load time: constructing the backend, then opening each package (``backend.runner(name)`` where
    the backend has it; otherwise packages open on first use and their load is part of the first
    call, reported per component as ``first_call_s``).
    """
    from ane_diffusion.backends import make_backend
    from ane_diffusion.pipeline import Pipeline

    from .architectures import BenchError

    if compute_units not in COMPUTE_UNITS:
        raise BenchError(f"unknown compute units {compute_units!r}; choose one of: {', '.join(COMPUTE_UNITS)}")
    loads = {}

    def load(path: str, role: str, flag: str, want_student: bool):
        bundle = _resolve(path)
        if bundle.card.is_student != want_student:
            kind = "a guidance-distilled student" if want_student else "a guided teacher"
            raise BenchError(f"{path} is a {bundle.card.kind} export; {flag} needs {kind}")
        start = time.perf_counter()
        backend = make_backend("coreml", bundle, compute_units=compute_units)
        times = {"backend": time.perf_counter() - start}
        if callable(getattr(backend, "runner", None)):
            for package in PACKAGES:
                start = time.perf_counter()
                backend.runner(package)
                times[package] = time.perf_counter() - start
        times["total"] = sum(times.values())
        loads[role] = times
        if log:
            log(f"loaded {role} Core ML export {path} in {times['total']:.1f}s")
        return Pipeline(bundle, backend)

    student = load(student_model, "student", "--model", True) if student_model else None
    teacher = load(teacher_model, "baseline", "--teacher-model", False) if teacher_model else None
    if student is None and teacher is None:
        raise BenchError("--backend coreml needs --model STUDENT_EXPORT (and --teacher-model TEACHER_EXPORT "
                         "for the baseline)")
    info = {"name": "coreml", "compute_units": compute_units, "model_load_s": loads,
            "exports": {"student": student_model, "baseline": teacher_model}}
    return CoreMLSetup(teacher=teacher, student=student, backend_info=info)

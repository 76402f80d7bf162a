"""Latency benchmark of guided baselines against guidance-distilled students.

The library behind ``python -m ane_diffusion bench`` and ``benchmarks/latency.py`` (see
``benchmarks/README.md``).

Modules: :mod:`.architectures` (demo / sd15 teacher and student built in memory), :mod:`ane_diffusion.testing.sd15`
(Stable Diffusion 1.5 configs), :mod:`.measure` (timing), :mod:`.flops` (work counts),
:mod:`.projection` (Apple devices, labelled PROJECTION), :mod:`.coreml` (macOS path),
:mod:`.report` (JSON / markdown / PNG), :mod:`.runner` (one run).
"""

from .architectures import ARCHITECTURES, BenchError
from .runner import BenchOptions, run

__all__ = ["ARCHITECTURES", "BenchError", "BenchOptions", "run"]

"""Latency benchmark of guided baselines against guidance-distilled students.

The library behind ``python -m ane_diffusion bench`` and ``benchmarks/latency.py`` (see
``benchmarks/README.md``). ``benchmarks/`` is not an installed package: the CLI loads this folder
by path from the checkout it belongs to (:func:`ane_diffusion.cli.bench.load_library`), under the
module name ``ane_diffusion_latency_bench``.

Modules: :mod:`.architectures` (demo / sd15 teacher and student built in memory), :mod:`.sd15`
(Stable Diffusion 1.5 configs), :mod:`.measure` (timing), :mod:`.flops` (work counts),
:mod:`.projection` (Apple devices, labelled PROJECTION), :mod:`.coreml` (macOS path),
:mod:`.report` (JSON / markdown / PNG), :mod:`.runner` (one run).
"""

from .architectures import ARCHITECTURES, BenchError
from .runner import BenchOptions, run

__all__ = ["ARCHITECTURES", "BenchError", "BenchOptions", "run"]

#!/usr/bin/env python
"""Write the committed latency results: ``benchmarks/results/latency-<arch>.{json,md,png}``.

    python benchmarks/latency.py --arch demo
    python benchmarks/latency.py --arch sd15        # long on a CPU: run on a quiet machine
    python benchmarks/latency.py --quick            # the CI smoke run

The same options as ``python -m ane_diffusion bench`` (this script is that command); see
``benchmarks/README.md``.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    try:
        import ane_diffusion  # noqa: F401
    except ImportError:  # a checkout that is not installed: use it in place
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ane_diffusion.cli import main

    raise SystemExit(main(["bench", *sys.argv[1:]]))

#!/usr/bin/env python
"""Quality table of the demo models (issue 5, part 4): one run, JSON + markdown + sample grids.

    python benchmarks/quality.py --models runs/demo --out benchmarks/results/quality
    python benchmarks/quality.py --teacher runs/demo/teacher --stage1 runs/demo/stage1 \\
        --progressive runs/demo/progressive --num-prompts 32 --images-per-prompt 4
    python benchmarks/quality.py --models runs/demo --quick --out /tmp/quality   # smoke test

Rows: guided teacher (DDIM, 64 ... 1 steps; --teacher-steps 256 ... for more), stage-1 student (same
steps), progressive students (8, 4, 2, 1 steps, from PROGRESSIVE/steps-N; missing ones are reported,
not fatal), 512 images each by default. Columns: evaluations per image, per-attribute and all-five
accuracy with 95% bootstrap intervals, Frechet distance to real images (its feature space validated
on blurred and colour-shifted real images), seconds per image; then the speed-up at matched quality
and a w sweep (0, 1, 3, 6) with the w-fidelity verdict of every student. See
:mod:`benchmarks.quality.harness` for the details and
``python benchmarks/quality.py --help`` for every option. Exit status: 0, or 3 when the attribute
evaluator fails its trust check on real images (outputs are still written, marked untrusted), or 2
when there is no model to evaluate.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ane_diffusion.memory import keep_freed_memory  # noqa: E402

keep_freed_memory()

from benchmarks.quality.harness import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())

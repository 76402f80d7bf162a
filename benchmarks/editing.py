#!/usr/bin/env python
"""Editing benchmark of the demo models (issue 8, part 4): one run, JSON + markdown + sample grids.

    python benchmarks/editing.py                                    # the embedded demo models
    python benchmarks/editing.py --models default demo-8step --inpaint-models default demo-2step \\
        --teacher demo-teacher --num-scenes 48 --out benchmarks/results/editing
    python benchmarks/editing.py --models PATH ... --teacher PATH --quick --out /tmp/editing   # smoke test

Image-to-image: real train-split scenes, one attribute (colour or shape) changed in the prompt, the
8-step student at strength 0.25 / 0.375 / 0.5 and the 4-step student at 0.5 / 0.75 / 1.0 (2, 3, 4
steps run), the guided teacher at DDIM 16 and 64 steps, strength 0.5. Inpainting: the object's
bounding box (dilated 2 px) regenerated with the changed caption, the 4-step student at 2, 3, 4 steps,
the 2-step student at 2, the teacher at 16. Judged by the attribute evaluator: edit success (target
attribute reached and the other four kept), target-attribute and kept-attributes rates, evaluations
and seconds per image, and for inpainting the PSNR of the unmasked pixels. See
:mod:`benchmarks.editing.harness` and ``python benchmarks/editing.py --help``. Exit status: 0, 3 when
the attribute evaluator fails its trust check (outputs still written, marked untrusted), 2 when a
model is missing (one ``error:`` line) or nothing can run.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ane_diffusion.memory import keep_freed_memory  # noqa: E402

keep_freed_memory()

from benchmarks.editing.harness import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())

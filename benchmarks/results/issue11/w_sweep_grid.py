"""A w-sweep picture: rows = model x prompt, columns = w = 0, 1, 3, 6 (issue 11, section 8 of README.md here).

Run from the repository root (about 2 minutes, 1 thread):

    python benchmarks/results/issue11/w_sweep_grid.py OUT.png teacher=demo-teacher:16 shipped=demo-4step:4 \\
        LABEL=STUDENT:STEPS ...

Each argument is a row label, a bundle and its DDIM step count (``LABEL=BUNDLE:STEPS:clamp``: with the x
estimates clamped to the card's latent range, ``--clamp``); every model sees the same three prompts and the
same noise (seed 7, :func:`benchmarks.quality.wsweep.sweep_images`); drawn by the harness's
:func:`benchmarks.quality.harness.sample_grid` with 64-pixel tiles, each row labelled."""
import sys

import torch

sys.path.insert(0, ".")
torch.set_num_threads(1)
from ane_diffusion import load_pipeline  # noqa: E402
from benchmarks.quality.harness import sample_grid  # noqa: E402
from benchmarks.quality.wsweep import sweep_images  # noqa: E402

WS = (0.0, 1.0, 3.0, 6.0)
PROMPTS = ("a large yellow circle at the top right on a black background",
           "a small red square at the bottom left on a blue background",
           "a large green triangle in the center on a white background")


def parse(arg: str) -> tuple[str, str, int, bool]:
    """``LABEL=BUNDLE:STEPS[:clamp]`` -> (label, bundle, steps, clamp)."""
    label, rest = arg.split("=", 1)
    clamp = rest.endswith(":clamp")
    bundle, steps = rest.removesuffix(":clamp").rsplit(":", 1)
    return label, bundle, int(steps), clamp


out, models = sys.argv[1], [parse(arg) for arg in sys.argv[2:]]
rows = []
for label, bundle, steps, clamp in models:
    by_w = sweep_images(load_pipeline(bundle), PROMPTS, WS, steps, 7, 1, clamp=clamp)
    rows += [(f"{label} {steps}", [by_w[w][i] for w in WS]) for i in range(len(PROMPTS))]
sample_grid(rows, cell=64).save(out)
print(out, "rows:", ", ".join(f"{label} = {bundle} at {steps} steps{' clamped' * clamp}"
                              for label, bundle, steps, clamp in models))

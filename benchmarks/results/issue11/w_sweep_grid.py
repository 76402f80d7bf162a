"""A w-sweep picture: rows = model x prompt, columns = w = 0, 1, 3, 6 (issue 11, section 8 of README.md here).

Run from the repository root (about 2 minutes, 1 thread):

    python benchmarks/results/issue11/w_sweep_grid.py OUT.png demo-teacher:16 demo-4step:4 STUDENT:STEPS ...

Each argument is a bundle and its DDIM step count; every model sees the same three prompts and the
same noise (seed 7, :func:`benchmarks.quality.wsweep.sweep_images`). Tiles are 64 x 64 (nearest)."""
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, ".")
torch.set_num_threads(1)
from ane_diffusion import load_pipeline  # noqa: E402
from benchmarks.quality.wsweep import sweep_images  # noqa: E402

WS = (0.0, 1.0, 3.0, 6.0)
PROMPTS = ("a large yellow circle at the top right on a black background",
           "a small red square at the bottom left on a blue background",
           "a large green triangle in the center on a white background")

out, models = sys.argv[1], [(arg.rsplit(":", 1)[0], int(arg.rsplit(":", 1)[1])) for arg in sys.argv[2:]]
rows = []
for bundle, steps in models:
    by_w = sweep_images(load_pipeline(bundle), PROMPTS, WS, steps, 7, 1)
    for i in range(len(PROMPTS)):
        rows.append(np.concatenate([np.asarray(by_w[w][i].convert("RGB").resize((64, 64), Image.NEAREST))
                                    for w in WS], axis=1))
Image.fromarray(np.concatenate(rows, axis=0)).save(out)
print(out, "rows:", ", ".join(f"{bundle} {steps} steps" for bundle, steps in models))

"""How far the teacher's own w = 0 images move under small changes of w or of the step count
(issue 11, section 7 of README.md here): the floor a student's w = 0 error is judged against.

Run from the repository root: python benchmarks/results/issue11/w0_sensitivity.py (about 10 minutes,
1 thread). The quality harness's first 128 train prompts, one noise each (seeds 7 ... 134, as
stage1_w_trial.py), teacher at 16 DDIM steps; mean absolute pixel distance (/255) from its w = 0
images, the median, and how many images move by more than 15/255 (a changed background or colour).
Writes w0-sensitivity.json beside this file."""
import json
import sys
import time

import numpy as np
import torch

sys.path.insert(0, ".")
from ane_diffusion import load_pipeline  # noqa: E402
from benchmarks.quality.harness import choose_scenes  # noqa: E402
from benchmarks.quality.wsweep import as_arrays, sweep_images  # noqa: E402


def distance(images, reference) -> dict:
    """Mean and median absolute pixel distance (/255) of each image (N, H, W, 3) from ``reference``, and
    how many images moved by more than 15/255."""
    per_image = np.abs(images.astype(np.float64) - reference).mean(axis=(1, 2, 3))
    return {"mean": float(per_image.mean()), "median": float(np.median(per_image)),
            "over_15": int((per_image > 15).sum())}


def main() -> None:
    prompts = [s.caption(0) for s in choose_scenes("train", 128, 0)]
    pipe = load_pipeline("demo-teacher")
    start = time.time()
    by_w = as_arrays(sweep_images(pipe, prompts, [0.0, 0.1, 0.25, 0.5, 1.0], 16, 7, 1))
    by_steps = {s: as_arrays(sweep_images(pipe, prompts, [0.0], s, 7, 1))[0.0] for s in (32, 64)}
    reference = by_w[0.0].astype(np.float64)
    out = {f"w={w} (16 steps)": distance(a, reference) for w, a in by_w.items()}
    out.update({f"w=0 ({s} steps)": distance(a, reference) for s, a in by_steps.items()})
    out["seconds"] = time.time() - start
    print(json.dumps(out, indent=1))
    json.dump(out, open(__file__.replace("w0_sensitivity.py", "w0-sensitivity.json"), "w"), indent=1)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

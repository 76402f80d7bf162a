"""How far students' w = 0 images are from the teacher's w = 0 images (issue 11, section 9 of
README.md here): the same measure as ``w0_sensitivity.py`` (the quality harness's first 128 train
prompts, one noise each, seeds 7 ... 134, 16 DDIM steps, mean / median absolute pixel distance per 255,
images moved by more than 15/255), for the bundles given.

Run from the repository root:
    python benchmarks/results/issue11/w0_students.py LABEL=BUNDLE ... [--out FILE.json]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, ".")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ane_diffusion import load_pipeline  # noqa: E402
from benchmarks.quality.harness import choose_scenes  # noqa: E402
from benchmarks.quality.wsweep import as_arrays, sweep_images  # noqa: E402
from w0_sensitivity import distance  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", metavar="LABEL=BUNDLE")
    p.add_argument("--out", default=None, help="JSON file for the figures (default: print only)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    models = dict(m.split("=", 1) for m in args.models)
    prompts = [s.caption(0) for s in choose_scenes("train", 128, 0)]
    start = time.time()

    def w0_images(bundle):
        return as_arrays(sweep_images(load_pipeline(bundle), prompts, [0.0], 16, 7, 1))[0.0]

    reference = w0_images("demo-teacher").astype(np.float64)
    out = {label: {"bundle": bundle, **distance(w0_images(bundle), reference)} for label, bundle in models.items()}
    out["seconds"] = time.time() - start
    print(json.dumps(out, indent=1))
    if args.out:
        json.dump(out, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()

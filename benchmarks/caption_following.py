#!/usr/bin/env python
"""Does a teacher follow the position words? (issue 11, part 1): corner sweep + text separation.

    python benchmarks/caption_following.py --model demo-teacher --out /tmp/shipped
    python benchmarks/caption_following.py --model runs/demo/teacher --out /tmp/new --steps 32 --w 3

For 4 base scenes x 4 corners x 3 seeds (same noise at every corner), the mean absolute pixel
difference between corner captions (and between seeds, for scale), the attribute evaluator's
position accuracy on those 48 images, the text encoder's relative distance between the corner
captions, and a grid (``corners.png``: rows base x seed, columns top left / top right / bottom
left / bottom right). Writes ``caption_following.json`` and the grid into ``--out``. One thread.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo-teacher")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--w", type=float, default=3.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from ane_diffusion import load_pipeline
    from ane_diffusion.atomic import atomic_file
    from benchmarks.quality.evaluator import Evaluator
    from benchmarks.quality.positions import corner_grid, corner_sweep, text_separation

    start = time.time()
    sweep = corner_sweep(load_pipeline(args.model), args.steps, args.w, args.seeds, evaluator=Evaluator.load())
    record = {"model": args.model, "steps": args.steps, "w": args.w, "seeds": args.seeds,
              "text": text_separation(args.model),
              **{k: v for k, v in sweep.items() if k != "images"}, "seconds": time.time() - start}
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.out / "corners.png") as tmp:
        corner_grid(sweep["images"], args.seeds).save(tmp, format="PNG")
    with atomic_file(args.out / "caption_following.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

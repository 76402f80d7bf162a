#!/usr/bin/env python
"""Short stage-1 trial: does a guidance-distilled student follow w? (issue 11, part 2)

    # measure an existing student against its teacher
    python benchmarks/stage1_w_trial.py --student demo-stage1 --out /tmp/before.json
    # train a short stage-1 run from the embedded teacher with the given settings, then measure it
    python benchmarks/stage1_w_trial.py --train --updates 300 --guidance-lr-scale 100 --work /tmp/w100 \\
        --out /tmp/w100.json   # [--embedding-scale 1000] [--loss-weighting x] [--w-max 9]

The measurement: 4 train-split prompts x 3 seeds, the student at ``--student-steps`` DDIM steps and
the guided teacher at ``--teacher-steps``, at every w of ``--ws``; prints the w-fidelity table of
:mod:`benchmarks.quality.wsweep` (distance to the teacher at the same and other w, change from
w = 0, verdict) and writes it as JSON. One torch thread unless ``--threads``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ane_diffusion.guidance import STUDENT_W_SCALE  # noqa: E402
from ane_diffusion.schedule import PREDICTION_TYPES  # noqa: E402


def train(args) -> str:
    from ane_diffusion.demo.shapes import write_image_folder
    from ane_diffusion.distill import DistillConfig, distill_guidance

    work = Path(args.work)
    images = work / "images"
    if not images.exists():
        write_image_folder(images, args.images, resolution=32, seed=1)
    cfg = DistillConfig(model=args.teacher, output=str(work / "run"), data=str(images), cache_dir=str(work / "cache"),
                        updates=args.updates, batch_size=args.batch_size, lr=args.lr,
                        warmup=min(100, args.updates // 10), ema_decay=0.999, seed=0, w_min=min(args.ws),
                        w_max=max(args.ws) if args.w_max is None else args.w_max,
                        guidance_lr_scale=args.guidance_lr_scale,
                        guidance_embedding_scale=args.embedding_scale, prediction_type=args.prediction_type,
                        loss_weighting=args.loss_weighting,
                        checkpoint_every=10_000,
                        progress=False, overwrite=True)
    return str(distill_guidance(cfg))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="demo-teacher")
    p.add_argument("--student", help="an existing student (e.g. demo-stage1); default: train one (--train)")
    p.add_argument("--train", action="store_true")
    p.add_argument("--work", default="/tmp/stage1-trial")
    p.add_argument("--updates", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--guidance-lr-scale", type=float, default=100.0)
    p.add_argument("--embedding-scale", type=float, default=STUDENT_W_SCALE,
                   help="w x this goes into the sinusoid (default %(default)s; LCM and the first demo students: 1000)")
    p.add_argument("--prediction-type", default="v_prediction", choices=PREDICTION_TYPES,
                   help="the student's output parameterisation (the demo teacher's is epsilon)")
    p.add_argument("--loss-weighting", default="truncated_snr", choices=("truncated_snr", "sqrt_truncated_snr", "x"))
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--w-max", type=float, default=None,
                   help="top of the trained w range (default: the largest of --ws)")
    p.add_argument("--ws", type=float, nargs="+", default=[0.0, 1.0, 3.0, 6.0])
    p.add_argument("--student-steps", type=int, default=4)
    p.add_argument("--teacher-steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from ane_diffusion import load_pipeline
    from ane_diffusion.demo.shapes import train_scenes
    from benchmarks.quality.wsweep import as_arrays, fidelity_table, markdown_fidelity, sweep_images

    start = time.time()
    student = train(args) if args.train else args.student
    trained_s = time.time() - start
    scenes = train_scenes()
    prompts = [scenes[i].caption(0) for i in (3, 101, 257, 409)]
    teacher = as_arrays(sweep_images(load_pipeline(args.teacher), prompts, args.ws, args.teacher_steps, 7, 3))
    sweep = as_arrays(sweep_images(load_pipeline(student), prompts, args.ws, args.student_steps, 7, 3))
    table = fidelity_table(teacher, {f"{student} {args.student_steps} steps": sweep}, args.ws)
    print(markdown_fidelity(table, args.ws))
    record = {"student": student, "teacher": args.teacher, "settings": vars(args), "prompts": prompts,
              "train_seconds": trained_s, "seconds": time.time() - start, "fidelity": table}
    Path(args.out).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

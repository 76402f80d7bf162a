#!/usr/bin/env python
"""Short stage-1 trial: does a guidance-distilled student follow w? (issue 11, part 2)

    # measure an existing student against its teacher
    python benchmarks/stage1_w_trial.py --student demo-stage1 --out /tmp/before.json
    # train a short stage-1 run from the embedded teacher with the given settings, then measure it
    python benchmarks/stage1_w_trial.py --train --updates 300 --guidance-lr-scale 100 --work /tmp/w100 \\
        --out /tmp/w100.json   # [--embedding-scale 1000] [--loss-weighting x] [--w-max 9]

    # several students against one teacher sweep, on the quality harness's first 128 train prompts
    python benchmarks/stage1_w_trial.py --student demo-stage1 demo-4step --student-steps 16 4 \\
        --teacher-steps 16 --prompts 128 --seeds 1 --out /tmp/students.json
    # stage 1 with w drawn towards w_min, then stage 2 from it down to 4 steps
    python benchmarks/stage1_w_trial.py --train --updates 1000 --w-power 2 --progressive-to 4 ...
    # stage 2 from an epsilon stage-1 student: kept epsilon, or switched to v in a longer first phase
    python benchmarks/stage1_w_trial.py --student EPS_STAGE1 --student-steps 16 --progressive-to 4 \\
        --progressive-prediction-type epsilon ...   # or: --first-phase-updates 1200

The measurement: 4 train-split prompts (or ``--prompts N``) x ``--seeds`` images, every image its own
noise seed, the students at ``--student-steps`` DDIM steps (progressive students at their own) and
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


def training_images(args) -> Path:
    """``WORK/images``: ``--images`` captioned demo images (written once)."""
    from ane_diffusion.demo.shapes import write_image_folder

    images = Path(args.work) / "images"
    if not images.exists():
        write_image_folder(images, args.images, resolution=32, seed=1)
    return images


def train(args) -> str:
    from ane_diffusion.distill import DistillConfig, distill_guidance

    work = Path(args.work)
    images = training_images(args)
    cfg = DistillConfig(model=args.teacher, output=str(work / "run"), data=str(images), cache_dir=str(work / "cache"),
                        updates=args.updates, batch_size=args.batch_size, lr=args.lr,
                        warmup=min(100, args.updates // 10), ema_decay=0.999, seed=0, w_min=min(args.ws),
                        w_max=max(args.ws) if args.w_max is None else args.w_max,
                        guidance_lr_scale=args.guidance_lr_scale,
                        guidance_embedding_scale=args.embedding_scale, prediction_type=args.prediction_type,
                        loss_weighting=args.loss_weighting, w_power=args.w_power,
                        init_student=args.init_student, checkpoint_every=10_000,
                        progress=False, overwrite=True)
    return str(distill_guidance(cfg))


def train_progressive(args, stage1: str) -> list[str]:
    """Stage 2 from ``stage1`` down to ``--progressive-to`` steps; returns the students' folders."""
    from ane_diffusion.distill import DistillConfig, distill_progressive

    work = Path(args.work)

    def run(model: str, output: str, updates: int, start: int, target: int) -> list[str]:
        cfg = DistillConfig(model=model, output=str(work / output), data=str(training_images(args)),
                            cache_dir=str(work / "cache"), updates=updates, batch_size=args.batch_size, lr=args.lr,
                            warmup=min(100, updates // 10), ema_decay=0.999, seed=0, start_steps=start,
                            target_steps=target, w_power=args.w_power,
                            prediction_type=args.progressive_prediction_type,
                            checkpoint_every=10_000, progress=False, overwrite=True)
        return [str(path) for path in distill_progressive(cfg)]

    first = args.first_phase_updates
    if first is None or first == args.progressive_updates:
        return run(stage1, "progressive", args.progressive_updates, args.progressive_from, args.progressive_to)
    halved = run(stage1, "progressive-first", first, args.progressive_from, args.progressive_from // 2)
    if args.progressive_from // 2 <= args.progressive_to:
        return halved
    return halved + run(halved[-1], "progressive", args.progressive_updates, args.progressive_from // 2,
                        args.progressive_to)


def trial_prompts(args) -> list[str]:
    """The 4 fixed train-split prompts, or ``--prompts N`` scenes chosen as the quality harness does."""
    from ane_diffusion.demo.shapes import train_scenes

    if args.prompts is None:
        scenes = train_scenes()
        return [scenes[i].caption(0) for i in (3, 101, 257, 409)]
    from benchmarks.quality.harness import choose_scenes

    return [scene.caption(0) for scene in choose_scenes("train", args.prompts, 0)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="demo-teacher")
    p.add_argument("--student", nargs="+", help="existing students (e.g. demo-stage1), measured against one teacher "
                   "sweep; default: train one (--train)")
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
    p.add_argument("--init-student", default=None,
                   help="--train starts from this stage-1 student (e.g. one trained at w = 0 only)")
    p.add_argument("--w-power", type=float, default=1.0, help="training draws w = w_min + (w_max - w_min) u^P")
    p.add_argument("--progressive-from", type=int, default=16,
                   help="with --progressive-to: stage 2 from the trained (or first --student) stage-1 model")
    p.add_argument("--progressive-to", type=int, default=None)
    p.add_argument("--progressive-updates", type=int, default=400)
    p.add_argument("--first-phase-updates", type=int, default=None,
                   help="updates of stage 2's first phase (the one that switches an epsilon student to v); "
                   "default: --progressive-updates")
    p.add_argument("--progressive-prediction-type", default="v_prediction", choices=PREDICTION_TYPES,
                   help="the stage-2 students' parameterisation (default %(default)s)")
    p.add_argument("--prompts", type=int, default=None,
                   help="N train-split scenes chosen as the quality harness chooses them (default: 4 fixed prompts)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per prompt (default %(default)s)")
    p.add_argument("--student-steps", type=int, nargs="+", default=[4],
                   help="DDIM steps of each student (one value: all of them; progressive students: their own)")
    p.add_argument("--teacher-steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from ane_diffusion import load_pipeline
    from benchmarks.quality.wsweep import as_arrays, fidelity_table, markdown_fidelity, sweep_images

    start = time.time()
    students = [train(args)] if args.train else list(args.student or [])
    if not students:
        p.error("give --student BUNDLE ... or --train")
    steps = args.student_steps * len(students) if len(args.student_steps) == 1 else list(args.student_steps)
    if len(steps) != len(students):
        p.error("--student-steps takes one value or one per student")
    if args.progressive_to is not None:
        from ane_diffusion.distill.config import halving_schedule

        students += train_progressive(args, students[0])
        steps += halving_schedule(args.progressive_from, args.progressive_to)
    trained_s = time.time() - start
    prompts = trial_prompts(args)
    teacher = as_arrays(sweep_images(load_pipeline(args.teacher), prompts, args.ws, args.teacher_steps, 7, args.seeds))
    sweeps = {f"{student} {n} steps": as_arrays(sweep_images(load_pipeline(student), prompts, args.ws, n, 7,
                                                             args.seeds))
              for student, n in zip(students, steps)}
    table = fidelity_table(teacher, sweeps, args.ws)
    print(markdown_fidelity(table, args.ws))
    record = {"students": students, "teacher": args.teacher, "settings": vars(args), "prompts": prompts,
              "train_seconds": trained_s, "seconds": time.time() - start, "fidelity": table}
    Path(args.out).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

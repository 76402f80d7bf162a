"""How the w = 0 distance splits by the teacher's own verdict (issue 11, section 6 of README.md here).

Run from the repository root: python benchmarks/results/issue11/w0_split.py (about 5 minutes, 1 thread).
Writes w0-split.json beside this file."""
import json
import sys

import torch

sys.path.insert(0, ".")
torch.set_num_threads(1)
from ane_diffusion import load_pipeline  # noqa: E402
from ane_diffusion.distill.fidelity import mean_abs_distance  # noqa: E402
from benchmarks.quality.evaluator import Evaluator  # noqa: E402
from benchmarks.quality.harness import choose_scenes, to_array  # noqa: E402
from benchmarks.quality.stats import correctness  # noqa: E402
from benchmarks.quality.wsweep import sweep_images  # noqa: E402

scenes = choose_scenes("train", 128, 0)
prompts = [s.caption(0) for s in scenes]
per_image = [s for s in scenes for _ in range(4)]
evaluator = Evaluator.load()
teacher = {w: to_array(v) for w, v in sweep_images(load_pipeline("demo-teacher"), prompts, [0.0, 1.0], 16, 0, 4).items()}
student = to_array(sweep_images(load_pipeline("demo-4step"), prompts, [0.0], 4, 0, 4)[0.0])
right = correctness(evaluator.predict(teacher[0.0]), per_image, evaluator.config.classes)["all"].astype(bool)
out = {"teacher_w0_right": int(right.sum()), "teacher_w0_wrong": int((~right).sum())}
for name, mask in (("right", right), ("wrong", ~right)):
    out[name] = {"student_w0_to_teacher_w0": mean_abs_distance(student[mask], teacher[0.0][mask]),
                 "student_w0_to_teacher_w1": mean_abs_distance(student[mask], teacher[1.0][mask]),
                 "teacher_w0_to_w1": mean_abs_distance(teacher[0.0][mask], teacher[1.0][mask])}
print(json.dumps(out, indent=1))
json.dump(out, open(__file__.replace("w0_split.py", "w0-split.json"), "w"), indent=1)

"""How the w = 0 distance splits by the teacher's own verdict (issue 11, section 6 of README.md here).

Run from the repository root: python benchmarks/results/issue11/w0_split.py (about 5 minutes, 1 thread).
Writes w0-split.json beside this file."""
import sys, json, numpy as np, torch
sys.path.insert(0, '.')
torch.set_num_threads(1)
from ane_diffusion import load_pipeline
from benchmarks.quality.harness import choose_scenes, to_array
from benchmarks.quality.wsweep import sweep_images
from benchmarks.quality.evaluator import Evaluator
from benchmarks.quality.stats import correctness
scenes = choose_scenes("train", 128, 0)
prompts = [s.caption(0) for s in scenes]
per = [s for s in scenes for _ in range(4)]
ev = Evaluator.load()
T = {w: to_array(v) for w, v in sweep_images(load_pipeline("demo-teacher"), prompts, [0.0, 1.0], 16, 0, 4).items()}
S = {w: to_array(v) for w, v in sweep_images(load_pipeline("demo-4step"), prompts, [0.0], 4, 0, 4).items()}
ok = correctness(ev.predict(T[0.0]), per, ev.config.classes)["all"].astype(bool)
d = lambda a, b, m: float(np.abs(a[m].astype(float) - b[m].astype(float)).mean())
out = {"teacher_w0_right": int(ok.sum()), "teacher_w0_wrong": int((~ok).sum())}
for name, m in (("right", ok), ("wrong", ~ok)):
    out[name] = {"student_w0_to_teacher_w0": d(S[0.0], T[0.0], m), "student_w0_to_teacher_w1": d(S[0.0], T[1.0], m),
                 "teacher_w0_to_w1": d(T[0.0], T[1.0], m)}
print(json.dumps(out, indent=1))
json.dump(out, open(__file__.replace('w0_split.py', 'w0-split.json'), 'w'), indent=1)

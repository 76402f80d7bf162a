#!/usr/bin/env python
"""Where in the noise schedule does a guidance student lose the teacher's w response? (issue 11)

    python benchmarks/stage1_w_response.py --teacher runs/demo/teacher --student runs/demo/stage1 \\
        --cache runs/demo/distill-cache/images-5c77adc45be26dd968222022.safetensors

On ``--count`` cached training latents (a distillation cache: ``latents``, ``embeddings``,
``caption_index``, ``uncond``), noised at each timestep of ``--timesteps`` (same noise for both
models), it compares x estimates: the guided teacher's change from w = 0 to ``--w``,
``dT = x_T(w) - x_T(0)``, against the student's ``dS``. Prints per timestep the mean norms,
``|dS| / |dT|`` (the response ratio in x-space), their cosine, and the student's relative error
at w = 0 and at ``--w``. One torch thread unless ``--threads``.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--cache", required=True, help="a distillation cache .safetensors file")
    p.add_argument("--count", type=int, default=256)
    p.add_argument("--w", type=float, default=6.0)
    p.add_argument("--timesteps", type=int, nargs="+", default=[999, 900, 750, 600, 450, 300, 150, 50])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch
    from safetensors.numpy import load_file

    from ane_diffusion.bundle import resolve_bundle
    from ane_diffusion.distill.models import alpha_sigma, predict_x0
    from ane_diffusion.distill.stage1 import guided_teacher_x0
    from ane_diffusion.schedule import add_noise, expand_like
    from ane_diffusion.torch_models import load_components

    torch.set_num_threads(args.threads)
    tb, sb = resolve_bundle(args.teacher), resolve_bundle(args.student)
    teacher, student = load_components(tb).unet.eval(), load_components(sb).unet.eval()
    cache = load_file(args.cache)
    gen = torch.Generator().manual_seed(0)
    n = args.count
    pick = torch.randint(0, len(cache["latents"]), (n,), generator=gen).numpy()
    x0 = torch.from_numpy(cache["latents"][pick])
    cond = torch.from_numpy(cache["embeddings"][cache["caption_index"][pick]])
    uncond = torch.from_numpy(cache["uncond"]).expand(n, -1, -1)
    zero, strong = torch.zeros(n), torch.full((n,), args.w)

    def norms(a):
        return a.flatten(1).norm(dim=1)

    print(f"| t | teacher change norm dT | student change norm dS | dS / dT | cosine | student relative error at w=0 "
          f"| at w={args.w:g} |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for step in args.timesteps:
        t = torch.full((n,), step, dtype=torch.long)
        eps = torch.randn(x0.shape, generator=gen)
        a, s = alpha_sigma(tb.schedule, t, "cpu")
        z = add_noise(x0, eps, expand_like(a, eps), expand_like(s, eps))
        with torch.no_grad():
            t0, tw = (guided_teacher_x0(teacher, z, t, cond, uncond, a, s, w, tb.card.prediction_type)
                      for w in (zero, strong))
            s0, sw = (predict_x0(student, z, t, cond, a, s, sb.card.prediction_type, w, sb.card.guidance_embedding)
                      for w in (zero, strong))
        d_t, d_s = (tw - t0).flatten(1), (sw - s0).flatten(1)
        cosine = torch.nn.functional.cosine_similarity(d_t, d_s, dim=1).mean()
        print(f"| {step} | {norms(d_t).mean():.2f} | {norms(d_s).mean():.2f} | "
              f"{(norms(d_s).mean() / norms(d_t).mean()):.2f} | {cosine:.2f} | "
              f"{(norms(s0 - t0) / norms(t0)).mean():.3f} | {(norms(sw - tw) / norms(tw)).mean():.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

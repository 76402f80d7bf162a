"""Peak memory of ONE stage-1 distillation update at Stable Diffusion 1.5's full size.

The UNet is built from SD 1.5's public architecture (config inline, random weights, no download).
One update is exactly the training code's: the teacher's conditional + unconditional forward
without gradients, the student's forward and backward (:class:`ane_diffusion.distill.stage1.
GuidanceLoss`), and an optimiser step, at batch 1 on 64x64 latents (512x512 images).

    python benchmarks/distill_memory.py --estimate                       # arithmetic only, no model
    python benchmarks/distill_memory.py --device cuda --mixed-precision bf16
    python benchmarks/distill_memory.py --device cpu --optimizer sgd     # smaller, see below
    python benchmarks/distill_memory.py --device cpu --lora-rank 16      # a LoRA student
    python benchmarks/distill_memory.py --device cpu --compare-lora 16   # full AdamW, then LoRA, one run

With ``--lora-rank R`` the student is the trainer's LoRA student (:mod:`ane_diffusion.student_lora`):
rank-R adapters on the attention projections plus the guidance projection in full, AdamW over those
only, and the frozen teacher is the SAME UNet with its adapters switched off (one UNet in memory).
``--compare-lora R`` measures the full fine-tune and the LoRA student in two fresh subprocesses
back to back (peak RSS is per process) and writes both into one result file.

What is measured: on CUDA ``torch.cuda.max_memory_allocated`` during the update (weights
included; allocator caching excluded); on CPU the process's peak resident set size
(``resource.getrusage``, which also covers building the two UNets); on MPS the driver's allocation
after the update (MPS has no peak counter). Results go to ``benchmarks/results/`` as JSON.

Safety: fp32 SD 1.5 with AdamW needs about 17 GB for weights, gradients and Adam state alone,
before activations. On CPU the script refuses to start when its estimate exceeds the memory
available (``MemAvailable``) unless ``--force``; ``--optimizer sgd`` (plain SGD, no optimiser
state) drops the 2 x 3.4 GB of Adam moments and is the documented fallback for a small machine;
it measures everything else of the update unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ane_diffusion.testing.sd15 import GUIDANCE_EMBEDDING_DIM, unet_config  # noqa: E402

GIB = 1024**3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda", "mps"), default="cpu")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lora-rank", type=int, default=0, help="LoRA student of this rank (0: full fine-tune)")
    p.add_argument("--compare-lora", type=int, default=0, metavar="R",
                   help="run full AdamW and a rank-R LoRA student in subprocesses; one result file")
    p.add_argument("--updates", type=int, default=1, help="updates timed (the first includes warm-up)")
    p.add_argument("--estimate", action="store_true", help="print the arithmetic estimate and exit")
    p.add_argument("--force", action="store_true", help="run on CPU even above the available memory")
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def count_parameters() -> int:
    """Parameters of the SD 1.5 UNet, counted on the meta device (nothing allocated)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return sum(p.numel() for p in UNet2DConditionModel(**unet_config()).parameters())


def estimate_bytes(params: int, mixed_precision: str, optimizer: str, lora: bool = False) -> dict:
    """Weights, gradients and optimiser state (activations come on top and are measured)."""
    if lora:  # one shared fp32 UNet; adapters, their gradients and moments are < 1 % of it
        return {"teacher_weights": 0, "student_weights_grads_optimizer": params * 4, "total": params * 4}
    teacher = params * (4 if mixed_precision == "no" else 2)
    student = params * 4 * 2 + (params * 8 if optimizer == "adamw" else 0)  # weights + grads (+ 2 moments)
    return {"teacher_weights": teacher, "student_weights_grads_optimizer": student, "total": teacher + student}


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read MemAvailable")


def build_models(device, half_dtype, gradient_checkpointing: bool, lora_rank: int = 0):
    """(teacher, student): random SD 1.5 UNet frozen (in the mixed-precision dtype), and its
    guidance-input copy (float32, trainable), built as the training code builds them. With
    ``lora_rank`` the trainer's LoRA student, and its base view as the teacher."""
    import torch
    from diffusers import UNet2DConditionModel

    from ane_diffusion.distill.models import freeze
    from ane_diffusion.student import add_guidance_input

    with torch.device(device):
        teacher = UNet2DConditionModel(**unet_config())
    if lora_rank:
        from ane_diffusion import student_lora

        student = student_lora.add_lora(student_lora.guidance_base(teacher, GUIDANCE_EMBEDDING_DIM), lora_rank)
        if gradient_checkpointing:
            student.enable_gradient_checkpointing()
        return student_lora.BaseView(student.train()), student
    student = add_guidance_input(teacher, GUIDANCE_EMBEDDING_DIM).train().requires_grad_(True)
    if gradient_checkpointing:
        student.enable_gradient_checkpointing()
    return freeze(teacher, half_dtype), student


def timed_updates(args, device, teacher, student) -> list:
    """``args.updates`` stage-1 updates; their durations in seconds."""
    return [one_update(args, device, teacher, student) for _ in range(args.updates)]


def one_update(args, device, teacher, student) -> float:
    """One stage-1 update through the training code; returns its duration in seconds."""
    import torch

    from ane_diffusion.distill.engine import MicroBatch
    from ane_diffusion.distill.stage1 import GuidanceLoss
    from ane_diffusion.guidance import STUDENT_W_SCALE, GuidanceEmbedding
    from ane_diffusion.schedule import DiscreteSchedule

    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision)
    autocast = (lambda: torch.autocast(device.type, dtype=half)) if half else contextlib.nullcontext
    loss_fn = GuidanceLoss(teacher, DiscreteSchedule.scaled_linear(), "epsilon", "v_prediction",
                           GuidanceEmbedding(GUIDANCE_EMBEDDING_DIM, STUDENT_W_SCALE), 1.0, 13.0, autocast)
    params = [p for p in student.parameters() if p.requires_grad]
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    else:
        optimizer = torch.optim.SGD(params, lr=1e-5)
    scaler = torch.amp.GradScaler(device.type) if args.mixed_precision == "fp16" else None
    gen = torch.Generator().manual_seed(0)
    b = args.batch_size
    x0, cond, uncond = (torch.randn(shape, generator=gen).to(device)
                        for shape in ((b, 4, 64, 64), (b, 77, 768), (b, 77, 768)))  # latents, text embeddings
    batch = MicroBatch(x0, cond, uncond, gen, device)
    start = time.perf_counter()
    with autocast():
        loss = loss_fn(student, batch)
    (scaler.scale(loss) if scaler else loss).backward()
    if scaler:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    scaler.step(optimizer) if scaler else optimizer.step()
    if scaler:
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return time.perf_counter() - start


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def machine(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.machine()} {platform.processor() or platform.system()} ({torch.get_num_threads()} threads)"


def measure(args) -> dict:
    import torch

    device = torch.device(args.device)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the imports, before any model
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision)
    teacher, student = build_models(device, half, args.gradient_checkpointing, args.lora_rank)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = timed_updates(args, device, teacher, student)
    seconds = min(times)
    if device.type == "cuda":
        peak, metric = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    elif device.type == "mps":
        peak, metric = torch.mps.driver_allocated_memory(), "torch.mps.driver_allocated_memory (after the update)"
    else:
        peak, metric = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss (process peak RSS)"
    return {"peak_bytes": peak, "peak_gib": round(peak / GIB, 3), "metric": metric,
            "cpu_rss_before_models_gib": round(baseline / GIB, 3), "update_seconds": round(seconds, 3),
            "update_seconds_all": [round(t, 3) for t in times], "trainable_parameters": trainable,
            "machine": machine(device)}


def versions() -> dict:
    import accelerate
    import diffusers
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "accelerate": accelerate.__version__, "cuda": torch.version.cuda}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compare_lora:
        return compare_lora(args, argv if argv is not None else sys.argv[1:])
    params = count_parameters()
    estimate = estimate_bytes(params, args.mixed_precision, args.optimizer, bool(args.lora_rank))
    summary = {"unet_parameters": params, "estimate_gib": {k: round(v / GIB, 2) for k, v in estimate.items()}}
    if args.estimate:
        print(json.dumps(summary, indent=2))
        return 0
    if args.device == "cpu" and not args.force and estimate["total"] > available_bytes():
        print(f"error: the estimate ({estimate['total'] / GIB:.1f} GiB before activations) exceeds the available "
              f"memory ({available_bytes() / GIB:.1f} GiB); try --optimizer sgd or --force", file=sys.stderr)
        return 2
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": args.device,
              "mixed_precision": args.mixed_precision, "optimizer": args.optimizer, "lora_rank": args.lora_rank,
              "gradient_checkpointing": args.gradient_checkpointing, "batch_size": args.batch_size,
              "latent_size": 64, "guidance_embedding_dim": GUIDANCE_EMBEDDING_DIM, **summary,
              **measure(args), "versions": versions()}
    args.output.mkdir(parents=True, exist_ok=True)
    tag = "-".join([args.device, args.mixed_precision, args.optimizer]
                   + ([f"lora{args.lora_rank}"] if args.lora_rank else [])
                   + (["gc"] if args.gradient_checkpointing else []))
    path = args.output / f"distill_memory-{tag}-{result['date'][:10]}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(path, file=sys.stderr)
    return 0


def compare_lora(args, argv) -> int:
    """Full fine-tune and LoRA student, each in a fresh process (peak RSS is per process)."""
    import subprocess
    import tempfile

    rest, skip = [], False
    for item in argv:  # drop --compare-lora R / --output DIR: the children write to a scratch folder
        if skip:
            skip = False
        elif item in ("--compare-lora", "--output"):
            skip = True
        elif not item.startswith(("--compare-lora=", "--output=")):
            rest.append(item)
    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, extra in (("full", []), ("lora", ["--lora-rank", str(args.compare_lora)])):
            out = Path(scratch) / name
            code = subprocess.call([sys.executable, __file__, *rest, *extra, "--output", str(out)])
            if code:
                return code
            runs[name] = json.loads(next(out.glob("*.json")).read_text())
    result = {"date": runs["lora"]["date"], "full": runs["full"], "lora": runs["lora"],
              "lora_over_full_peak": round(runs["lora"]["peak_bytes"] / runs["full"]["peak_bytes"], 3),
              "lora_over_full_seconds": round(runs["lora"]["update_seconds"] / runs["full"]["update_seconds"], 3)}
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"distill_memory-{args.device}-{args.mixed_precision}-full-vs-lora{args.compare_lora}-" \
                         f"{result['date'][:10]}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

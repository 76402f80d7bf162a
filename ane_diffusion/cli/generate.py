"""``generate``: text to image with a distilled student (or a guided teacher)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..samplers import SAMPLERS


def add_common_options(p, default_output: str, samplers=SAMPLERS, sizes: bool = False) -> None:
    """Options shared by generate, edit and inpaint."""
    p.add_argument("--model", default=None, help="model folder, .safetensors file, hub id, or 'default' "
                   "(the embedded demo student); a Core ML export folder with --backend coreml")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model card's)")
    p.add_argument("--guidance", "-w", dest="w", type=float, default=None,
                   help="guidance weight w (paper convention; guidance_scale = 1 + w)")
    p.add_argument("--sampler", choices=samplers, default=None, help="default: the model card's")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    if sizes:
        p.add_argument("--height", type=int, default=None)
        p.add_argument("--width", type=int, default=None)
    else:
        p.add_argument("--resize", action="store_true", help="resize the input to the model's image size")
    p.add_argument("--negative-prompt", default="", help="teacher only")
    p.add_argument("--decoder", choices=("tiny", "full"), default=None,
                   help="VAE decoder (and encoder): the model's distilled tiny one or its full VAE "
                        "(default: tiny when the model has one)")
    p.add_argument("--clamp", action="store_true",
                   help="clip each step's x estimate to the data latents' range recorded in the model card "
                        "(static thresholding: stops the colour burn of few-step students at high w)")
    p.add_argument("--backend", choices=("torch", "coreml"), default="torch")
    p.add_argument("--device", default=None, help="torch device (default: mps, then cuda, then cpu)")
    p.add_argument("--vae-precision", choices=("auto", "float16", "float32"), default="auto",
                   help="torch: the VAE's dtype (auto: float16 on GPUs, float32 on the CPU); float32 cures "
                        "black/NaN images from float16 decoder overflow")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 for small models such as the embedded one, else torch's; "
                        "env ANE_DIFFUSION_THREADS)")
    p.add_argument("--compute-units", default="ALL", choices=("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY"),
                   help="Core ML compute units (macOS)")
    p.add_argument("--output", "-o", type=Path, default=Path(default_output),
                   help="PNG path (numbered when several images) or an existing folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar or timings")
    add_lora_option(p)


def add_lora_option(p) -> None:
    """``--lora FILE[:SCALE]``, repeatable (generate, edit, inpaint, convert)."""
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="a LoRA .safetensors (kohya or diffusers/peft layout) fused into the model at SCALE "
                        "(default 1); repeat for several")


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="text to image",
                              description="Generate images from text. w is the paper's guidance weight "
                                          "(guidance_scale = 1 + w); defaults come from the model card.")
    p.add_argument("prompts", nargs="*", help="one or more prompts (none with --from-png)")
    add_common_options(p, default_output="image.png", sizes=True)
    p.add_argument("--student-lora", default=None, metavar="FILE",
                   help="a student adapter from `distill --lora-rank` (student-lora.safetensors) applied to "
                        "--model, its base (the teacher, or the stage-1 student for a stage-2 adapter)")
    p.add_argument("--from-png", type=Path, default=None, metavar="FILE",
                   help="re-run an image from its metadata (ours, or the 'parameters' chunk of the Stable "
                        "Diffusion UIs); options given here override it")
    p.set_defaults(run=run, _parser=p)


def backend_options(args) -> dict:
    loras = {"loras": args.lora} if getattr(args, "lora", None) else {}
    if args.backend == "torch":
        threads = {"threads": args.threads} if getattr(args, "threads", None) is not None else {}
        return {"device": args.device, "vae_precision": args.vae_precision} | threads | loras
    if args.vae_precision != "auto":
        raise ValueError("--vae-precision sets the torch backend's VAE; a Core ML export's decoder precision is "
                         "chosen at conversion (convert --vae-decoder-precision float32)")
    return {"compute_units": args.compute_units} | loras


def report(result, args) -> int:
    for meta in result.metadata:
        print(meta["path"])
    if not args.quiet:
        print(result.timings.summary(), file=sys.stderr)
    return 0


FROM_PNG_FIELDS = ("negative_prompt", "seed", "steps", "w", "sampler", "height", "width", "model", "decoder",
                   "clamp")


def apply_png_settings(args) -> None:
    """Fill ``args`` from ``--from-png``: every field the PNG holds, unless the command line set
    it to something other than its default (or gave prompts)."""
    from ..images import read_settings

    settings = read_settings(args.from_png)
    parser = args._parser
    for name in FROM_PNG_FIELDS:
        if name in settings and settings[name] is not None and getattr(args, name) == parser.get_default(name):
            setattr(args, name, settings[name])
    if not args.prompts:
        args.prompts = [settings.get("prompt", "")]
    if not args.lora and settings.get("loras"):  # ours: the LoRA files the image was made with
        args.lora = [f"{lora['path']}:{lora['scale']}" for lora in settings["loras"]]


def run(args) -> int:
    from ..api import generate

    if getattr(args, "from_png", None) is not None:
        apply_png_settings(args)
    if not args.prompts:
        raise ValueError("no prompt given (pass one or more prompts, or --from-png FILE)")
    result = generate(args.prompts, model=args.model, backend=args.backend, steps=args.steps, w=args.w,
                      sampler=args.sampler, seed=args.seed, num_images=args.num_images, height=args.height,
                      width=args.width, negative_prompt=args.negative_prompt, decoder=args.decoder, clamp=args.clamp,
                      output=args.output, progress=not args.quiet, student_lora=args.student_lora,
                      **backend_options(args))
    return report(result, args)

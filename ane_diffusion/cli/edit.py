"""``edit``: image to image (SDEdit-style) in a few student steps."""

from __future__ import annotations

from pathlib import Path

from .generate import add_common_options, backend_options, report


def register(subparsers) -> None:
    p = subparsers.add_parser("edit", help="image to image: re-imagine an image from a prompt",
                              description="Noise the image to the grid point that --strength selects, then "
                                          "run the remaining steps with the prompt.")
    p.add_argument("prompt")
    p.add_argument("--image", type=Path, required=True, help="source image (PNG, JPEG, ...)")
    p.add_argument("--strength", type=float, default=0.6,
                   help="in (0, 1]: how much of the grid to run (1 = from pure noise; default 0.6)")
    add_common_options(p, default_output="edited.png", samplers=("ddim", "stochastic", "lcm"))
    p.set_defaults(run=run)


def run(args) -> int:
    from ..api import edit

    result = edit(args.image, args.prompt, strength=args.strength, model=args.model, backend=args.backend,
                  steps=args.steps, w=args.w, sampler=args.sampler, seed=args.seed, num_images=args.num_images,
                  resize=args.resize, negative_prompt=args.negative_prompt, decoder=args.decoder, clamp=args.clamp,
                  output=args.output, progress=not args.quiet, **backend_options(args))
    return report(result, args)

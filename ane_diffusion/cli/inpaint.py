"""``inpaint``: regenerate the masked region of an image in a few student steps."""

from __future__ import annotations

from pathlib import Path

from .generate import add_common_options, backend_options, report


def register(subparsers) -> None:
    p = subparsers.add_parser("inpaint", help="regenerate the white region of a mask",
                              description="Inpainting: the black region of the mask is kept pixel for pixel, "
                                          "the white region is generated from the prompt.")
    p.add_argument("prompt")
    p.add_argument("--image", type=Path, required=True, help="source image")
    p.add_argument("--mask", type=Path, required=True,
                   help="single-channel mask of the same size: white = generate, black = keep")
    add_common_options(p, default_output="inpainted.png", samplers=("ddim", "stochastic", "lcm"))
    p.set_defaults(run=run)


def run(args) -> int:
    from ..api import inpaint

    result = inpaint(args.image, args.mask, args.prompt, model=args.model, backend=args.backend, steps=args.steps,
                     w=args.w, sampler=args.sampler, seed=args.seed, num_images=args.num_images, resize=args.resize,
                     negative_prompt=args.negative_prompt, decoder=args.decoder, clamp=args.clamp,
                     output=args.output, progress=not args.quiet, **backend_options(args))
    return report(result, args)

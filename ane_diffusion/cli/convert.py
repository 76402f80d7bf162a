"""``convert``: a bundle's text encoder, UNet and VAE to Core ML packages for the Neural Engine.

    python -m ane_diffusion convert --model runs/student --output export
    python -m ane_diffusion convert --model runs/student --output export-6bit --compress unet=6 --chunk-unet

Writes ``TextEncoder.mlpackage``, ``Unet.mlpackage`` (or ``UnetChunk1/2``), ``VAEDecoder.mlpackage``,
``VAEEncoder.mlpackage``, the tokenizer files and the contract ``ane_diffusion_coreml.json``; a
thin shell around :func:`ane_diffusion_conversion.convert_bundle`. See docs/coreml.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

ATTENTION_KINDS = ("split_einsum", "split_einsum_v2", "original")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a model to Core ML packages for the Apple Neural Engine",
        description="Convert a bundle to Core ML (ML Program) packages with Neural-Engine friendly layers, "
                    "float16 compute (guidance and timestep embeddings kept float32), optional weight "
                    "compression and UNet chunking, plus the contract file an app reads. Finished "
                    "components are skipped on a re-run unless --force.")
    p.add_argument("--model", required=True, help="model folder, .safetensors file or hub id")
    p.add_argument("--output", "-o", required=True, type=Path, help="export folder (created; parent must exist)")
    p.add_argument("--components", default="all",
                   help="comma-separated subset of text_encoder,unet,vae_decoder,vae_encoder (default all), "
                        "plus vae_decoder_full (the full decoder beside a tiny one) when named")
    p.add_argument("--attention", choices=ATTENTION_KINDS, default="split_einsum",
                   help="split_einsum (ANE, default), split_einsum_v2 (ANE, chunked queries for large "
                        "latents), original (GPU)")
    p.add_argument("--precision", choices=("float16", "float32"), default="float16",
                   help="compute precision (float32 for debugging)")
    p.add_argument("--vae-decoder-precision", choices=("float16", "float32"), default=None,
                   help="the VAEDecoder's precision alone (default: --precision); float32 cures black/NaN images "
                        "from float16 decoder overflow")
    p.add_argument("--compress", default="",
                   help="per-component weight compression, e.g. unet=6,text_encoder=8: 8/6/4 = k-means "
                        "palettization, 4g16 = per-16-channel tables (iOS18), int8 / int4 (iOS18) = linear")
    p.add_argument("--chunk-unet", action="store_true",
                   help="split the UNet into UnetChunk1/UnetChunk2 (iOS: packages under 1 GB each)")
    p.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's)")
    p.add_argument("--min-target", default="iOS16",
                   help="minimum deployment target: iOS16 (default), iOS17, iOS18, iOS26, macOS13..macOS15, macOS26")
    p.add_argument("--decoder", choices=("tiny", "full"), default=None,
                   help="VAEDecoder/VAEEncoder from the model's distilled tiny autoencoder or its full VAE "
                        "(default: tiny when the model has one); add vae_decoder_full to --components to keep "
                        "the full decoder beside a tiny one (VAEDecoderFull)")
    p.add_argument("--sizes", default=None,
                   help="several image sizes in one export, HEIGHTxWIDTH,... e.g. 512x512,512x768,768x512 "
                        "(Core ML enumerated shapes; the first is the default)")
    p.add_argument("--target", default="ane-diffusion", choices=("ane-diffusion", "apple-pipeline"),
                   help="ane-diffusion (default: w an input, for this project's runtimes) or apple-pipeline "
                        "(Apple's Swift StableDiffusionPipeline: w fixed, epsilon output, float32 tensors)")
    p.add_argument("--guidance-weight", type=float, default=None,
                   help="apple-pipeline: the w baked into the Unet (default: the model card's default w)")
    p.add_argument("--force", action="store_true", help="reconvert components the folder already holds")
    p.add_argument("--no-compile", action="store_true", help="macOS: do not compile packages to .mlmodelc")
    p.add_argument("--student-lora", default=None, metavar="FILE",
                   help="a student adapter (distill --lora-rank) fused into --model, its base, before converting")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--verbose", action="store_true", help="also show coremltools' own progress bars")
    from .generate import add_lora_option

    add_lora_option(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ane_diffusion_conversion.convert import convert_bundle
    from ane_diffusion_conversion.options import ConvertOptions
    from ane_diffusion_conversion.progress import Progress

    if args.student_lora:
        import tempfile

        from ..bundle import resolve_bundle
        from ..student_lora import save_student_bundle

        with tempfile.TemporaryDirectory() as scratch:
            fused = save_student_bundle(resolve_bundle(args.model), Path(args.student_lora), Path(scratch) / "student")
            args.model, args.student_lora = str(fused), None
            return run(args)
    model = args.model
    if args.lora:  # fused before conversion; recorded in the card, hence the contract
        from ane_diffusion.bundle import resolve_bundle
        from ane_diffusion.loaders.lora import with_loras

        model = with_loras(resolve_bundle(args.model), args.lora)
    options = ConvertOptions(model=model, output=args.output, components=args.components,
                             attention=args.attention, precision=args.precision, compress=args.compress,
                             chunk_unet=args.chunk_unet, height=args.height, width=args.width,
                             min_target=args.min_target, force=args.force, compile=not args.no_compile,
                             vae_decoder_precision=args.vae_decoder_precision, decoder=args.decoder,
                             target=args.target, guidance_weight=args.guidance_weight, sizes=args.sizes)
    progress = Progress(enabled=not args.quiet, library_bars=args.verbose)
    result = convert_bundle(options, progress=progress)
    if not args.quiet:
        done = ", ".join(result.converted) or "nothing"
        skipped = f"; skipped (already converted): {', '.join(result.skipped)}" if result.skipped else ""
        print(f"converted: {done}{skipped}", file=sys.stderr)
        if result.converted and sys.platform != "darwin" and not args.no_compile:
            print("note: not on macOS, so packages were not compiled to .mlmodelc (xcrun coremlcompiler); "
                  "Xcode or the app compiles them", file=sys.stderr)
    print(result.output)
    return 0

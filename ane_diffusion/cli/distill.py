"""``distill``: train guidance-distilled (stage 1) and few-step progressive (stage 2) students.

    python -m ane_diffusion distill guidance --teacher TEACHER --data IMAGES --output RUN1
    python -m ane_diffusion distill progressive --student RUN1/student --start-steps 8 \\
        --target-steps 2 --data IMAGES --output RUN2
    python -m ane_diffusion distill decoder --model RUN2/steps-2 --data IMAGES --output RUN3

Runs unchanged under ``accelerate launch --num_processes N -m ane_diffusion distill ...``.
A thin shell around :mod:`ane_diffusion.distill`.
"""

from __future__ import annotations

import argparse
import os

from ..distill.config import DEFAULT_EDGE_WEIGHT, DEFAULT_GUIDANCE_LR_SCALE, DEFAULT_W_RANGE, MIXED_PRECISION
from ..guidance import STUDENT_W_SCALE
from ..schedule import PREDICTION_TYPES


def _common(p: argparse.ArgumentParser) -> None:
    """Options both stages share: data, optimisation, run control."""
    data = p.add_argument_group("data (one of --data / --shards / --prompts)")
    data.add_argument("--data", default=None, help="folder with manifest.jsonl or manifest.csv (file, caption)")
    data.add_argument("--shards", default=None, help="webdataset tar shards, streamed (img2dataset's layout): "
                      "a folder of .tar files or a pattern like 'data/{00000..00099}.tar'")
    data.add_argument("--shuffle-buffer", type=int, default=1000, help="--shards: samples in the shuffle buffer")
    data.add_argument("--bad-data", choices=("refuse", "skip"), default="refuse",
                      help="--shards: a corrupt image or missing caption stops the run (refuse) or is skipped")
    data.add_argument("--prompts", default=None, help="text file, one prompt a line: train on the model's samples")
    data.add_argument("--cache-dir", default=None, help="latent/embedding cache (default OUTPUT/cache)")
    data.add_argument("--resolution", type=int, default=None, help="image size in pixels (default: the model's)")
    data.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of the --prompts samples")
    data.add_argument("--sample-w", type=float, default=None, help="w of the --prompts samples (default: card's)")
    data.add_argument("--samples-per-prompt", type=int, default=1)
    opt = p.add_argument_group("optimisation (per phase)")
    opt.add_argument("--updates", type=int, default=1000, help="optimiser updates (per phase in stage 2)")
    opt.add_argument("--batch-size", type=int, default=4, help="per process and micro-batch")
    opt.add_argument("--grad-accum", type=int, default=1, help="micro-batches per update")
    opt.add_argument("--lr", type=float, default=1e-5)
    opt.add_argument("--warmup", type=int, default=0, help="linear warm-up updates (then linear decay to 0)")
    opt.add_argument("--weight-decay", type=float, default=0.0)
    opt.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping")
    opt.add_argument("--ema-decay", type=float, default=None, help="keep and save an EMA of the weights")
    opt.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no")
    opt.add_argument("--gradient-checkpointing", action="store_true", help="less memory, ~30%% slower")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--lora-rank", type=int, default=0, metavar="R",
                     help="train a LoRA student: rank-R adapters (the guidance projection in full); "
                          "0 = fine-tune the whole UNet (default)")
    opt.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale alpha/R (default alpha = R)")
    run = p.add_argument_group("run")
    run.add_argument("--output", "-o", required=True, help="run folder (bundles, checkpoint, log.jsonl, cache)")
    run.add_argument("--checkpoint-every", type=int, default=500, help="updates between checkpoints")
    run.add_argument("--log-every", type=int, default=10, help="updates between log.jsonl lines")
    run.add_argument("--resume", action="store_true", help="continue the interrupted run in --output")
    run.add_argument("--overwrite", action="store_true", help="discard a previous run in --output")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    p = subparsers.add_parser("distill", help="distill a guided teacher into a 1-4 step student",
                              description="Guided diffusion distillation (Meng et al. 2023): stage 1 makes a "
                                          "student that takes w as an input, stage 2 halves its steps.")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    g = stages.add_parser("guidance", help="stage 1: one evaluation per step for any w",
                          description="Stage 1: distill the guided teacher (1 + w) x_c - w x_u into a student "
                                      "that takes w as an input. Saves OUTPUT/student.")
    g.add_argument("--teacher", required=True, help="teacher bundle (folder, .safetensors, hub id)")
    g.add_argument("--w-min", type=float, default=DEFAULT_W_RANGE[0],
                   help=f"w range (guidance_scale = 1 + w); default {DEFAULT_W_RANGE[0]}")
    g.add_argument("--w-max", type=float, default=DEFAULT_W_RANGE[1], help=f"default {DEFAULT_W_RANGE[1]}")
    g.add_argument("--prediction-type", choices=PREDICTION_TYPES, default="v_prediction",
                   help="the student's output parameterisation (default v_prediction)")
    g.add_argument("--guidance-embedding-dim", type=int, default=256)
    g.add_argument("--guidance-embedding-scale", type=float, default=STUDENT_W_SCALE,
                   help="w is multiplied by this before its sinusoidal embedding (default %(default)s; LCM "
                        "uses 1000; see docs/training.md)")
    g.add_argument("--guidance-lr-scale", type=float, default=DEFAULT_GUIDANCE_LR_SCALE,
                   help="the new guidance input learns at lr x this (default %(default)s; see docs/training.md)")
    g.add_argument("--loss-weighting", choices=("truncated_snr", "sqrt_truncated_snr", "x"), default="truncated_snr",
                   help="per-sample weight of the x-space error (default %(default)s: max(SNR, 1), as in the paper)")
    g.add_argument("--init-student", default=None, metavar="BUNDLE",
                   help="start from this stage-1 student of the same teacher instead of the teacher's UNet "
                        "(e.g. one trained at w = 0 only, to continue with the full w range)")
    _w_power(g)
    _common(g)
    g.set_defaults(run=run)
    s = stages.add_parser("progressive", help="stage 2: halve the steps down to --target-steps",
                          description="Stage 2: progressive distillation. Each phase trains an N/2-step student "
                                      "from the N-step model; saves OUTPUT/steps-{N/2}, ... OUTPUT/steps-{target}.")
    s.add_argument("--student", required=True, help="stage-1 (or progressive) student bundle")
    s.add_argument("--start-steps", type=int, default=None, help="steps of the input model (default: its card's)")
    s.add_argument("--target-steps", type=int, required=True, help="1, 2, 4, ... reachable by halving")
    s.add_argument("--prediction-type", choices=PREDICTION_TYPES, default="v_prediction",
                   help="the students' output parameterisation (default v_prediction, which 1-4-step students "
                        "need; an epsilon --student switches in the first phase)")
    _w_power(s)
    _common(s)
    s.set_defaults(run=run)
    d = stages.add_parser("decoder", help="stage 3: a tiny VAE decoder/encoder distilled from the bundle's VAE",
                          description="Stage 3: train diffusers' AutoencoderTiny (TAESD architecture) to reproduce "
                                      "the bundle's own VAE decoder and encoder, on data latents and on the latents "
                                      "the students produce (pixel + VAE-feature + encoder losses). Saves "
                                      "OUTPUT/bundle: the bundle plus vae_tiny/ (weights, config, decoder_card.json).")
    d.add_argument("--model", required=True, help="the bundle whose VAE is distilled (e.g. the 4-step student)")
    d.add_argument("--students", nargs="*", default=None, metavar="BUNDLE",
                   help="bundles whose own samples are trained on too (default: --model; none: --students)")
    d.add_argument("--student-w", type=float, nargs="+", default=None, metavar="W",
                   help="guidance weights the students sample at, in turn over the captions (default: each "
                        "student's card default_w)")
    d.add_argument("--samples-per-student", type=int, default=None,
                   help="samples of each --students model (default: one per training example)")
    d.add_argument("--feature-weight", type=float, default=1.0, help="VAE-encoder feature (perceptual) loss weight")
    d.add_argument("--encoder-weight", type=float, default=1.0, help="tiny encoder latent-MSE weight")
    d.add_argument("--edge-weight", type=float, default=DEFAULT_EDGE_WEIGHT,
                   help=f"weight of the edge term (MSE of image gradients): sharper edges and corners "
                        f"(default {DEFAULT_EDGE_WEIGHT:g}, the demo's best; 0 turns it off)")
    d.add_argument("--width", type=int, default=None, dest="tiny_width",
                   help="channels of every level of the tiny autoencoder (default: 64 for a VAE as wide as Stable "
                        "Diffusion's, else half the VAE's widest level)")
    _common(d)
    d.set_defaults(run=run, lr=1e-3, updates=2000, batch_size=16, warmup=100)


def _w_power(parser) -> None:
    parser.add_argument("--w-power", type=float, default=1.0,
                        help="training draws w = w_min + (w_max - w_min) u^P, u uniform (default 1: uniform; "
                             "2 puts 41%% of draws in the lowest sixth of the range; see docs/training.md)")


def config_from_args(args):
    from ..distill import DistillConfig

    if args.stage == "decoder":
        stage_fields = {"model": args.model, "decoder_students": args.students,
                        "student_w": args.student_w, "samples_per_student": args.samples_per_student,
                        "feature_weight": args.feature_weight, "encoder_weight": args.encoder_weight,
                        "edge_weight": args.edge_weight, "tiny_width": args.tiny_width}
    else:
        stage_fields = ({"model": args.teacher, "w_min": args.w_min, "w_max": args.w_max,
                         "prediction_type": args.prediction_type, "guidance_embedding_dim": args.guidance_embedding_dim,
                         "guidance_embedding_scale": args.guidance_embedding_scale,
                         "guidance_lr_scale": args.guidance_lr_scale, "loss_weighting": args.loss_weighting,
                         "w_power": args.w_power, "init_student": args.init_student}
                        if args.stage == "guidance" else
                        {"model": args.student, "start_steps": args.start_steps, "target_steps": args.target_steps,
                         "prediction_type": args.prediction_type, "w_power": args.w_power})
    return DistillConfig(
        output=args.output, data=args.data, prompts=args.prompts, cache_dir=args.cache_dir, shards=args.shards,
        shuffle_buffer=args.shuffle_buffer, bad_data=args.bad_data,
        resolution=args.resolution, sample_steps=args.sample_steps, sample_w=args.sample_w,
        samples_per_prompt=args.samples_per_prompt, updates=args.updates, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, ema_decay=args.ema_decay, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, seed=args.seed, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
        **stage_fields)


def run(args) -> int:
    from ..distill import distill_decoder, distill_guidance, distill_progressive

    cfg = config_from_args(args)
    if args.stage == "decoder":
        paths = [distill_decoder(cfg)]
    else:
        paths = [distill_guidance(cfg)] if args.stage == "guidance" else distill_progressive(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # one printout under accelerate launch
        for path in paths:
            print(path)
    return 0

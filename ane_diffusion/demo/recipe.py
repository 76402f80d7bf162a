"""The demo model's whole training recipe, stage by stage, resumable at stage granularity.

    python -m ane_diffusion.demo.recipe --work runs/demo            # every stage not yet done
    python -m ane_diffusion.demo.recipe --work runs/demo --only vae # one stage

Stages: ``data`` (synthetic scenes), ``vae``, ``text`` (the CLIP text encoder, pretrained
contrastively on the image-caption pairs: see :mod:`ane_diffusion.demo.train_text` for why),
``teacher`` (guided teacher bundle on top of that encoder, frozen by default), ``guidance``
(stage-1 student), ``progressive`` (stage-2 students down to 1 step), ``decoder`` (stage 3: the
tiny VAE decoder/encoder, trained on data latents and the 1/2/4-step students' samples), ``ship``
(copy into the package's assets in float16). Each stage writes its output atomically into the work folder and is
skipped when that output exists. Every setting and measured figure lands in the bundles' cards and
in ``WORK/recipe.jsonl`` (the log).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..distill.config import DEFAULT_EDGE_WEIGHT

STAGES = ("data", "vae", "text", "teacher", "guidance", "progressive", "decoder", "ship")
OUTPUTS = {"data": "data.npz", "vae": "vae", "text": "text_encoder", "teacher": "teacher", "guidance": "stage1",
           "progressive": "progressive", "decoder": "decoder", "ship": "shipped.json"}
"""What each stage writes into the work folder; a stage whose output exists is skipped."""
DECODER_STUDENTS = ("steps-4", "steps-2", "steps-1")
"""The students whose samples the tiny decoder trains on: the ones that ship for few-step use."""


@dataclass
class RecipeSettings:
    seed: int = 0
    train_images: int = 20000
    vae_steps: int = 3000
    vae_batch: int = 32
    text_steps: int = 1500
    """In-batch caption accuracy stops rising near 1100 steps (0.76; benchmarks/results/demo-recipe.jsonl)."""
    text_batch: int = 256
    text_lr: float = 1e-3
    text_frozen: bool = True
    """Keep the pretrained text encoder frozen while the teacher trains (as Stable Diffusion does)."""
    teacher_steps: int = 5000
    teacher_batch: int = 64
    teacher_lr: float = 3e-4
    caption_dropout: float = 0.1
    default_w: float = 3.0
    w_min: float = 0.0
    w_max: float = 6.0
    distill_images: int = 8000
    distill_batch: int = 32
    distill_lr: float = 1e-4
    guidance_updates: int = 2000
    """Was 1500; the stage-1 student's w response was still growing (issue 11, docs/training.md). 3000
    would not fit the recipe's 150-minute budget on the 2-core CPU beside the 86-minute teacher."""
    guidance_lr_scale: float = 100.0
    """The stage-1 student's new guidance input learns at distill_lr x this (DistillConfig's default)."""
    guidance_loss_weighting: str = "truncated_snr"
    progressive_start_steps: int = 16
    progressive_updates: int = 400
    """Per halving (was 600), for the same budget."""
    decoder_images: int = 2000
    decoder_updates: int = 4000
    """Was 1500: 29.3 dB held out and -8.6 points of shape accuracy; 4000 reach 32.5 dB and keep the
    train-split accuracies no more than 1 point below the full decoder's (benchmarks/results/decoder-demo)."""
    decoder_batch: int = 16
    decoder_lr: float = 1e-3
    decoder_samples_per_student: int = 400
    decoder_feature_weight: float = 1.0
    """Weight of the tiny decoder's VAE-feature term (``distill decoder --feature-weight``)."""
    decoder_student_w: str = ""
    """Comma-separated guidance weights the students sample at for the decoder's training latents
    (``distill decoder --student-w``); empty: each student's default w."""
    decoder_edge_weight: float = DEFAULT_EDGE_WEIGHT
    """Weight of the tiny decoder's edge term (``distill decoder --edge-weight``). Against 0 (the
    earlier setting) at the same 4000 updates: 36.4-36.7 dB instead of 34.0-34.1 against the full
    decoder, flipped attribute verdicts 71 / 112 instead of 152 / 145 on the train / held-out splits
    (1, 4 and 8 lie between; benchmarks/results/decoder-demo/trials, measured on 4 noises shared by the
    prompts)."""
    decoder_width: int = 0
    """Channels of the tiny autoencoder's levels; 0: :func:`ane_diffusion.decoders.tiny_config`'s rule
    (32 here). 64 at 4000 updates was more faithful (+2.3 dB) but still missed the 1-point target and
    took 2.4x as long (benchmarks/results/decoder-demo/trials)."""
    threads: int = 1  # two processes with two threads each on two cores spin-wait: 10x slower


class Recipe:
    def __init__(self, work: Path, settings: RecipeSettings, assets: Path | None = None):
        from ..bundle import embedded_root

        self.work = Path(work)
        self.settings = settings
        self.assets = Path(assets) if assets is not None else embedded_root()
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_path = self.work / "recipe.jsonl"

    def log(self, line: str) -> None:
        with open(self.log_path, "a") as handle:
            handle.write(line + "\n")

    # -- stages -----------------------------------------------------------------------------
    def data(self) -> None:
        from ..atomic import atomic_file
        from .shapes import make_dataset

        s = self.settings
        images, captions, _ = make_dataset(s.train_images, resolution=32, seed=s.seed, split="train")
        with atomic_file(self.work / "data.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, images=images, captions=np.array(captions))

    def load_data(self):
        data = np.load(self.work / "data.npz")
        return data["images"], [str(c) for c in data["captions"]]

    def vae(self) -> None:
        from ..atomic import atomic_directory
        from .train_vae import save_vae, train_vae

        images, _ = self.load_data()
        vae, summary = train_vae(images, self.settings.vae_steps, self.settings.vae_batch, seed=self.settings.seed,
                                 log=self.log)
        with atomic_directory(self.work / "vae") as tmp:
            save_vae(vae, tmp)
            (tmp / "training.json").write_text(json.dumps(summary, indent=2))
        self.log(json.dumps({"stage": "vae", "summary": summary}))

    def text(self) -> None:
        from ..atomic import atomic_directory
        from ..tokenizer import CLIPTokenizer
        from .configs import text_encoder_config, tokenizer_files
        from .train_text import caption_separation, train_text_encoder

        s = self.settings
        images, captions = self.load_data()
        files, vocab = tokenizer_files()
        tokenizer = CLIPTokenizer.from_strings(files["vocab.json"], files["merges.txt"])
        encoder, summary = train_text_encoder(images, tokenizer.encode_batch(captions), text_encoder_config(vocab),
                                              s.text_steps, s.text_batch, s.text_lr, seed=s.seed, log=self.log)
        summary["corner_captions"] = caption_separation(encoder, tokenizer.encode_batch(corner_captions()))
        with atomic_directory(self.work / "text_encoder") as tmp:
            encoder.save_pretrained(tmp, safe_serialization=True)
            (tmp / "training.json").write_text(json.dumps(summary, indent=2))
        self.log(json.dumps({"stage": "text", "summary": summary}))

    def pretrained_text_encoder(self):
        """The ``text`` stage's encoder, or None when the work folder has none (then the teacher
        trains a fresh one jointly, as the first demo teacher did)."""
        folder = self.work / "text_encoder"
        if not folder.is_dir():
            return None, None
        from transformers import CLIPTextModel

        return (CLIPTextModel.from_pretrained(str(folder), use_safetensors=True),
                json.loads((folder / "training.json").read_text()))

    def teacher(self) -> None:
        from diffusers import AutoencoderKL

        from ..card import ModelCard
        from ..latent_range import LatentRange
        from ..torch_models import TorchComponents, save_bundle
        from ..tokenizer import CLIPTokenizer
        from .configs import scheduler_config, text_encoder_config, tokenizer_files
        from .train_teacher import encode_latents, train_teacher

        s = self.settings
        images, captions = self.load_data()
        vae = AutoencoderKL.from_pretrained(str(self.work / "vae"), use_safetensors=True).eval()
        files, vocab = tokenizer_files()
        tokenizer = CLIPTokenizer.from_strings(files["vocab.json"], files["merges.txt"])
        latents = encode_latents(vae, images)
        token_ids = tokenizer.encode_batch(captions)
        empty = tokenizer.encode_batch([""])[0]
        pretrained, text_summary = self.pretrained_text_encoder()
        text_encoder, unet, summary = train_teacher(
            latents, token_ids, empty, text_encoder_config(vocab), s.teacher_steps, s.teacher_batch, s.teacher_lr,
            s.caption_dropout, seed=s.seed, log=self.log, text_encoder=pretrained,
            train_text=pretrained is None or not s.text_frozen)
        vae_summary = json.loads((self.work / "vae" / "training.json").read_text())
        card = ModelCard(kind="teacher", prediction_type="epsilon", w_min=0.0, w_max=s.w_max * 2,
                         default_w=s.default_w, recommended_sampler="ddim", recommended_steps=64,
                         latent_range=LatentRange.from_latents(latents).to_dict(),
                         description="ane-diffusion demo teacher: captioned shape scenes, 32x32, trained here",
                         training={"teacher": summary, "vae": vae_summary, "text_encoder": text_summary,
                                   "recipe": asdict(s),
                                   "latent_std_check": float(latents.std())})
        save_bundle(self.work / "teacher", TorchComponents(text_encoder, unet, vae), scheduler_config("epsilon"),
                    files, card)
        self.log(json.dumps({"stage": "teacher", "summary": summary}))

    def distill_data(self) -> Path:
        """Real training images with captions (manifest.jsonl), the trainers' --data."""
        from .shapes import write_image_folder

        folder = self.work / "images"
        if not folder.exists():
            write_image_folder(folder, self.settings.distill_images, resolution=32, seed=self.settings.seed + 1)
        return folder

    def distill_config(self, model: Path, output: Path, updates: int, **stage):
        from ..distill import DistillConfig

        s = self.settings
        return DistillConfig(model=str(model), output=str(output), data=str(self.distill_data()),
                             cache_dir=str(self.work / "distill-cache"), updates=updates, batch_size=s.distill_batch,
                             lr=s.distill_lr, warmup=min(100, updates // 10), ema_decay=0.999, seed=s.seed,
                             checkpoint_every=500, progress=True, **stage)

    def guidance(self) -> None:
        from ..distill import distill_guidance

        s = self.settings
        distill_guidance(self.distill_config(self.work / "teacher", self.work / "stage1-run", s.guidance_updates,
                                             w_min=s.w_min, w_max=s.w_max, prediction_type="v_prediction",
                                             guidance_lr_scale=s.guidance_lr_scale,
                                             loss_weighting=s.guidance_loss_weighting))
        (self.work / "stage1-run" / "student").rename(self.work / "stage1")

    def progressive(self) -> None:
        from ..distill import distill_progressive

        s = self.settings
        run = self.work / "progressive-run"
        distill_progressive(self.distill_config(self.work / "stage1", run, s.progressive_updates,
                                                start_steps=s.progressive_start_steps, target_steps=1))
        (run).rename(self.work / "progressive")

    def decoder(self) -> None:
        """Stage 3 from the 4-step student (its VAE is every model's VAE). When the work folder lacks
        the earlier stages, the shipped float16 models stand in (how the shipped tiny decoder was made)."""
        import dataclasses

        from ..distill import distill_decoder

        s = self.settings
        models = self.trained_models()
        if all(name in models for name in DECODER_STUDENTS):
            model, students = models["steps-4"], [str(models[name]) for name in DECODER_STUDENTS]
        else:
            model, students = "demo-4step", [f"demo-{name.split('-')[1]}step" for name in DECODER_STUDENTS]
            self.log(json.dumps({"stage": "decoder", "note": "earlier stages absent: trained from the shipped "
                                                             "float16 models"}))
        run = self.work / "decoder-run"
        images = self.work / "decoder-images"
        if not images.exists():
            from .shapes import write_image_folder

            write_image_folder(images, s.decoder_images, resolution=32, seed=s.seed + 3)
        cfg = dataclasses.replace(
            self.distill_config(model, run, s.decoder_updates), data=str(images), batch_size=s.decoder_batch,
            lr=s.decoder_lr,
            warmup=min(100, s.decoder_updates // 10), ema_decay=None, decoder_students=students,
            samples_per_student=s.decoder_samples_per_student,
            student_w=[float(w) for w in s.decoder_student_w.split(",")] if s.decoder_student_w else None,
            tiny_width=s.decoder_width or None,
            edge_weight=s.decoder_edge_weight, feature_weight=s.decoder_feature_weight)
        bundle = distill_decoder(cfg)
        card = json.loads((bundle / "vae_tiny" / "decoder_card.json").read_text())
        self.log(json.dumps({"stage": "decoder", "fidelity": card["fidelity"], "parameters": card["parameters"]}))
        (bundle / "vae_tiny").rename(self.work / "decoder")

    def trained_models(self) -> dict:
        """Embedded name (see bundle.EMBEDDED_MODELS) -> the bundle the recipe trained."""
        models = {"teacher": self.work / "teacher", "stage1": self.work / "stage1"}
        for path in sorted((self.work / "progressive").glob("steps-*")):
            models[path.name] = path
        return models

    def ship(self) -> None:
        """Copy every trained model into ``ane_diffusion/assets/demo`` in float16 (shared text
        encoder, VAE and tokenizer; a layer per model), after checking float16 is lossless enough."""
        from ..atomic import atomic_directory, atomic_file
        from .ship import check_float16, write_embedded

        models = self.trained_models()
        report = {"float16_check": check_float16(models["steps-4"])}
        self.assets.parent.mkdir(parents=True, exist_ok=True)
        with atomic_directory(self.assets, overwrite=True) as tmp:
            tiny = self.work / "decoder"
            report["sizes"] = write_embedded(tmp, models, tiny if tiny.is_dir() else None)
        with atomic_file(self.work / "shipped.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        self.log(json.dumps({"stage": "ship", **report}))

    def run(self, only=None) -> None:
        outputs = OUTPUTS
        for stage in STAGES:
            if only and stage not in only:
                continue
            if (self.work / outputs[stage]).exists():
                print(f"[recipe] {stage}: done already ({self.work / outputs[stage]})")
                continue
            if not hasattr(self, stage):
                print(f"[recipe] {stage}: not available yet")
                return
            start = time.time()
            print(f"[recipe] {stage}: running", flush=True)
            getattr(self, stage)()
            self.log(json.dumps({"stage": stage, "seconds": time.time() - start}))
            print(f"[recipe] {stage}: {time.time() - start:.0f}s", flush=True)


def corner_captions() -> list[str]:
    """One caption at each corner, everything else equal: what the first teacher could not tell apart."""
    from .shapes import POSITIONS, Scene

    return [Scene("circle", "red", "large", p, "black").caption(0) for p in POSITIONS if p != "center"]


def parse_setting(settings: RecipeSettings, name: str, value: str):
    """``--set NAME=VALUE`` as the setting's type (booleans: true/false/1/0); ValueError otherwise."""
    if not hasattr(settings, name):
        raise ValueError(f"unknown setting {name!r}")
    kind = type(getattr(settings, name))
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name} takes true or false, got {value!r}")
        return value.lower() in ("true", "1")
    return kind(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ane_diffusion.demo.recipe", description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/demo"))
    parser.add_argument("--only", nargs="*", choices=STAGES)
    parser.add_argument("--smoke", action="store_true", help="a few updates per stage: checks the plumbing")
    parser.add_argument("--assets", type=Path, default=None,
                        help="where ship writes (default: the package's ane_diffusion/assets/demo)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="override a setting")
    args = parser.parse_args(argv)
    from ..memory import keep_freed_memory

    keep_freed_memory()
    import torch

    settings = RecipeSettings()
    if args.smoke:
        settings = RecipeSettings(train_images=256, vae_steps=3, text_steps=3, text_batch=16, teacher_steps=3,
                                  guidance_updates=3,
                                  progressive_updates=2, progressive_start_steps=16, distill_images=16,
                                  distill_batch=4, decoder_images=16, decoder_updates=3, decoder_batch=4,
                                  decoder_samples_per_student=4)
    for item in args.set:
        name, _, value = item.partition("=")
        try:
            setattr(settings, name, parse_setting(settings, name, value))
        except ValueError as error:
            parser.error(f"--set {item}: {error}")
    torch.set_num_threads(settings.threads)
    Recipe(args.work, settings, args.assets).run(args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Stage 3: distil the bundle's VAE into a tiny autoencoder (diffusers ``AutoencoderTiny``).

Once a student samples in 1-4 UNet calls, the VAE decoder is most of the wait (2,515 GFLOP at
512x512 for Stable Diffusion's, against 803 for one student UNet call). This stage trains a tiny
decoder in TAESD's architecture (141 GFLOP at 512x512), and its encoder for ``edit``/``inpaint``,
to reproduce the bundle's *own* VAE -- no published weights are downloaded.

Training latents (B, 4, h, w), in the diffusion space (scaled by the VAE's ``scaling_factor``):

* data latents: the trainers' usual training set (``--data`` images encoded by the VAE, or
  ``--prompts`` samples), :func:`ane_diffusion.distill.data.load_training_set`;
* student latents: what the students actually hand the decoder at run time -- each model of
  ``students`` (default: ``--model`` itself) sampled at its card's steps on the training captions,
  at the card's default w or in turn at each of ``student_w`` (so that the w range users sample is
  covered). They are slightly off the data manifold (few-step samples), which is exactly where a
  decoder trained only on data latents would be untested.

Targets come from the frozen full VAE: ``x = vae.decode(z)`` for the decoder and
``vae.encode(x).mean`` for the encoder. The loss (:class:`DecoderLoss`) per micro-batch::

    L = |D(z) - x|^2 + edge_weight * |grad D(z) - grad x|^2
        + feature_weight * sum_l |F_l(D(z)) - F_l(x)|^2 / var(F_l(x))
        + encoder_weight * |E(x) - vae.encode(x).mean|^2 * scaling_factor^2

* pixel MSE, images in [-1, 1];
* an edge term: the MSE of the images' horizontal and vertical finite differences (a gradient
  difference loss as in Mathieu, Couprie & LeCun, "Deep multi-scale video prediction beyond mean
  square error", ICLR 2016, here on the signed differences and squared). In frequency terms it
  weights the error at spatial frequency (u, v) by ``4 sin^2(u/2) + 4 sin^2(v/2)``: pixel MSE plus
  ``edge_weight`` x this term raises the weight of the finest detail ``1 + 8 edge_weight`` times
  over flat colour. Pixel MSE alone leaves the tiny decoder blurrier than the full one (on the
  demo, 0.88 of its gradient energy, 57% of the error on the 10% sharpest pixels), and the blur is
  what rounds small shapes' corners;
* a feature (perceptual) term: ``F_l`` are the activations after the VAE encoder's input
  convolution and each of its down blocks, i.e. multi-scale edge and texture detectors that this
  bundle's own VAE learnt on this data. LPIPS would need downloaded VGG/AlexNet weights, which do
  not exist here; the VAE's encoder is the best-matched offline feature network (it is what maps
  images to this latent space). Each level is normalised by its target variance so that levels
  weigh alike. TAESD itself was trained with MSE plus an adversarial loss, LPIPS later; an
  adversarial term is not used here (its benefit is sharper high-frequency texture, which the
  32x32 demo images do not have, and it makes short CPU runs unstable).
* the encoder's latent MSE, in the diffusion space (x ``scaling_factor``^2).

Everything else -- accelerate, AdamW, LR schedule, EMA, exact resume, pickle-free checkpoints,
logs -- is the shared :class:`~ane_diffusion.distill.engine.Engine`. The output, ``OUTPUT/bundle``,
is the input bundle plus ``vae_tiny/`` (config, safetensors weights, and ``decoder_card.json`` with
lineage, training and held-out fidelity figures).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from ..bundle import resolve_bundle
from ..decoders import TINY, build_tiny, tiny_config, tiny_decoder, tiny_encoder
from .config import DEFAULT_EDGE_WEIGHT, DistillConfig
from .engine import Engine, MicroBatch
from .models import lineage_entry

LABEL = "decoder"
DECODER_CARD = "decoder_card.json"
HELDOUT = 32
"""Student latents per student model drawn with a different seed, never trained on: the fidelity set."""
FIDELITY_BATCH = 16
TARGET_CACHE_MB = 1024


def psnr_db(a, b) -> float:
    """PSNR in dB of images ``a`` against ``b`` (any shape, values in [-1, 1]; both clipped first):
    ``10 log10(1 / MSE)`` on [0, 1] pixel values."""
    a = (np.clip(np.asarray(a, np.float64), -1, 1) + 1) / 2
    b = (np.clip(np.asarray(b, np.float64), -1, 1) + 1) / 2
    mse = float(np.mean((a - b) ** 2))
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def _trainee(tiny, scaling_factor: float):
    """One module holding the tiny autoencoder (what the engine trains, checkpoints and wraps):
    ``forward(z, images) -> (decoded images, encoded z)`` in the full VAE's convention."""
    import torch

    class Trainee(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tiny = tiny

        def enable_gradient_checkpointing(self):
            self.tiny.enable_gradient_checkpointing()

        def forward(self, z, images):  # the wrappers hold no weights of their own: made per call
            return tiny_decoder(self.tiny, scaling_factor)(z), tiny_encoder(self.tiny, scaling_factor)(images)

    return Trainee()


def edge_error(images, target):
    """Mean squared difference of the horizontal plus the vertical finite differences of two image
    batches (B, C, H, W): the edge term of :class:`DecoderLoss` (0 for identical images, and for
    images that differ by a constant)."""
    dx = (images[..., :, 1:] - images[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])
    dy = (images[..., 1:, :] - images[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])
    return dx.pow(2).mean() + dy.pow(2).mean()


class VAEFeatures:
    """Multi-scale features of a frozen VAE encoder: after ``conv_in`` and after each down block."""

    def __init__(self, vae):
        self.encoder = vae.encoder

    def __call__(self, images) -> list:
        h = self.encoder.conv_in(images)
        out = [h]
        for block in self.encoder.down_blocks:
            h = block(h)
            out.append(h)
        return out


@dataclasses.dataclass
class DecoderLoss:
    """``loss_fn`` of the engine: pixel + feature + encoder terms (see the module docstring)."""

    vae: "object"
    scaling_factor: float
    feature_weight: float = 1.0
    encoder_weight: float = 1.0
    edge_weight: float = DEFAULT_EDGE_WEIGHT
    cache_mb: float = TARGET_CACHE_MB
    """Targets of each latent are computed once and kept (they never change: the VAE is frozen) up
    to this many MB; the rest are recomputed every time."""

    def __post_init__(self):
        self.features = VAEFeatures(self.vae)
        self._cache: dict = {}
        self._cached_bytes = 0

    def targets(self, x0):
        """``(z, x, mean)``: VAE-space latents, the full decoder's images, its encoder's means."""
        import torch

        z = x0 / self.scaling_factor
        keys = [row.detach().cpu().numpy().tobytes() for row in x0]
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        if missing:
            with torch.no_grad():
                x = self.vae.decode(z[missing]).sample.clamp(-1, 1)
                mean = self.vae.encode(x).latent_dist.mean
            for j, i in enumerate(missing):
                size = (x[j].numel() + mean[j].numel()) * 4
                if self._cached_bytes + size <= self.cache_mb * 2**20:
                    self._cache[keys[i]] = (x[j], mean[j])
                    self._cached_bytes += size
            fresh = {i: (x[j], mean[j]) for j, i in enumerate(missing)}
        else:
            fresh = {}
        pairs = [fresh[i] if i in fresh else self._cache[key] for i, key in enumerate(keys)]
        return z, torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def terms(self, trainee, x0) -> dict:
        import torch

        z, x, mean = self.targets(x0)
        decoded, encoded = trainee(z, x)
        pixel = torch.mean((decoded - x) ** 2)
        edge = edge_error(decoded, x)
        feature = decoded.new_zeros(())
        if self.feature_weight:
            with torch.no_grad():
                want = self.features(x)
            for got, target in zip(self.features(decoded), want):
                feature = feature + torch.mean((got - target) ** 2) / (target.var() + 1e-6)
            feature = feature / len(want)
        encoder = torch.mean((encoded - mean) ** 2) * self.scaling_factor ** 2
        return {"pixel": pixel, "edge": edge, "feature": feature, "encoder": encoder}

    def __call__(self, trainee, batch: MicroBatch):
        t = self.terms(trainee, batch.x0)
        return (t["pixel"] + self.edge_weight * t["edge"] + self.feature_weight * t["feature"]
                + self.encoder_weight * t["encoder"])


def student_latents(students: list, data, seed: int, device, count: Optional[int] = None,
                    weights: Optional[list] = None) -> "object":
    """Each student bundle's own samples (M, C, h, w) on the training captions, at its card's
    steps, as ``generate`` makes them (:func:`ane_diffusion.distill.data.sample_latents`): caption i
    at guidance weight ``weights[i % len(weights)]`` (default: the card's ``default_w``)."""
    import torch

    from ..torch_models import load_components
    from .data import sample_latents

    rows = []
    conds = data.embeddings[data.caption_index]
    if count is not None:
        conds = conds[:count]
    for i, source in enumerate(students):
        bundle = resolve_bundle(source)
        components = load_components(bundle, device=device)
        steps = bundle.card.steps or bundle.card.recommended_steps
        f = bundle.vae_scale_factor
        shape = (bundle.latent_channels, bundle.default_size // f, bundle.default_size // f)
        ws = list(weights) if weights else [bundle.card.default_w]
        latents = torch.empty((conds.shape[0], *shape))
        for k, w in enumerate(ws):
            at = torch.arange(k, conds.shape[0], len(ws))
            if len(at):
                latents[at] = sample_latents(bundle, components, conds[at], data.uncond, float(w), steps,
                                             seed + 7919 * i + 104729 * k, shape, device).float().cpu()
        rows.append(latents)
    return torch.cat(rows) if rows else None


def with_student_latents(data, latents, students: int):
    """The training set with ``latents`` appended: ``students`` equal blocks, each made on the
    captions of the first examples (as :func:`student_latents` makes them)."""
    import torch

    from .data import TrainingSet

    if latents is None:
        return data
    index = data.caption_index[: latents.shape[0] // students].repeat(students)
    return TrainingSet(torch.cat([data.latents, latents]), torch.cat([data.caption_index, index]),
                       data.embeddings, data.uncond, data.key + "+students", data.source + " + student samples")


def fidelity(vae, tiny, scaling_factor: float, latents, device) -> dict:
    """Tiny against full on latents (M, C, h, w) in diffusion space: decoder PSNR (dB; mean, min
    and the 5th percentile over images), encoder latent RMSE relative to the latents' std, and the
    PSNR of a full round trip image -> encoder -> full decoder with each encoder."""
    import torch

    dec, enc = tiny_decoder(tiny, scaling_factor).eval(), tiny_encoder(tiny, scaling_factor).eval()
    psnrs, round_tiny, round_full, errors = [], [], [], []
    with torch.no_grad():
        for start in range(0, latents.shape[0], FIDELITY_BATCH):
            z = latents[start:start + FIDELITY_BATCH].to(device) / scaling_factor
            full = vae.decode(z).sample.clamp(-1, 1)
            small = dec(z).clamp(-1, 1)
            mean = vae.encode(full).latent_dist.mean
            tiny_mean = enc(full)
            errors.append(((tiny_mean - mean) * scaling_factor).pow(2).mean(dim=(1, 2, 3)).cpu().numpy())
            for i in range(z.shape[0]):
                psnrs.append(psnr_db(small[i].cpu().numpy(), full[i].cpu().numpy()))
            back_tiny = vae.decode(tiny_mean).sample.clamp(-1, 1)
            back_full = vae.decode(mean).sample.clamp(-1, 1)
            for i in range(z.shape[0]):
                round_tiny.append(psnr_db(back_tiny[i].cpu().numpy(), full[i].cpu().numpy()))
                round_full.append(psnr_db(back_full[i].cpu().numpy(), full[i].cpu().numpy()))
    psnrs = np.array(psnrs)
    std = float((latents.float()).std())
    return {"images": int(len(psnrs)), "decoder_psnr_db": round(float(psnrs.mean()), 2),
            "decoder_psnr_db_min": round(float(psnrs.min()), 2),
            "decoder_psnr_db_p5": round(float(np.percentile(psnrs, 5)), 2),
            "encoder_latent_rel_rmse": round(float(np.sqrt(np.mean(np.concatenate(errors)))) / std, 4),
            "round_trip_psnr_db_tiny_encoder": round(float(np.mean(round_tiny)), 2),
            "round_trip_psnr_db_full_encoder": round(float(np.mean(round_full)), 2)}


def decoder_card(bundle, cfg: DistillConfig, students: list, config: dict, summary: dict, data_summary: dict,
                 figures: dict, parameters: int) -> dict:
    """What ``vae_tiny/decoder_card.json`` records: lineage, training and fidelity."""
    return {"kind": "tiny-autoencoder", "architecture": "diffusers AutoencoderTiny (TAESD)",
            "convention": "decoder input z = latents / vae.scaling_factor; output image in [-1, 1] "
                          "(the full decoder's); see ane_diffusion.decoders",
            "distilled_from": {"vae_of": lineage_entry(bundle.card, bundle.source),
                               "vae_scaling_factor": bundle.scaling_factor},
            "student_latents_from": [str(s) for s in students], "parameters": parameters,
            "config": {k: v for k, v in config.items() if not k.startswith("_")},
            "training": {"stage": LABEL, **summary, "data": data_summary,
                         "settings": cfg.settings_for(LABEL),
                         "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            "fidelity": figures}


def save_tiny(folder: Path, tiny, card: dict) -> None:
    """``folder`` (a bundle's ``vae_tiny/``): config.json, safetensors weights, decoder_card.json."""
    from safetensors.torch import save_file

    from ..bundle import WEIGHT_FILES

    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "AutoencoderTiny", **dict(tiny.config)}
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tiny.state_dict().items()},
              str(folder / WEIGHT_FILES[TINY]))
    (folder / DECODER_CARD).write_text(json.dumps(card, indent=2, default=str))


def distill_decoder(cfg: DistillConfig) -> Path:
    """Run stage 3; returns ``OUTPUT/bundle`` (the input bundle plus its trained ``vae_tiny``)."""
    import torch

    from ..atomic import atomic_directory
    from ..torch_models import TorchComponents, load_components, save_bundle

    cfg.check(LABEL)
    bundle = resolve_bundle(cfg.model)
    if "coreml_contract" in bundle.extra:
        raise ValueError(f"{cfg.model} is a Core ML export; distil from the PyTorch bundle it was converted from")
    students = list(cfg.decoder_students) if cfg.decoder_students is not None else [cfg.model]
    engine = Engine(cfg, LABEL)
    components = load_components(bundle, device=engine.device)
    data = engine.training_set(bundle, components)
    samples = (student_latents(students, data, cfg.seed, engine.device, cfg.samples_per_student, cfg.student_w)
               if students else None)
    train = with_student_latents(data, samples, len(students))
    vae = components.vae.eval().requires_grad_(False)
    config = tiny_config(bundle.configs["vae"], cfg.tiny_width)
    torch.manual_seed(cfg.seed)
    tiny = build_tiny(config)
    trainee = _trainee(tiny, bundle.scaling_factor).train()
    loss = DecoderLoss(vae, bundle.scaling_factor, cfg.feature_weight, cfg.encoder_weight, cfg.edge_weight)
    result = engine.train_phase(0, LABEL, trainee, loss, train)
    trained = result.model.tiny.eval()
    heldout = student_latents(students, data, cfg.seed + 1, engine.device, count=HELDOUT) if students else None
    figures = {"student_latents_heldout": fidelity(vae, trained, bundle.scaling_factor, heldout, engine.device)
               if heldout is not None else None,
               "data_latents_first": fidelity(vae, trained, bundle.scaling_factor, data.latents[:HELDOUT],
                                              engine.device)}
    card = decoder_card(bundle, cfg, students, config, result.summary, train.summary(), figures,
                        sum(p.numel() for p in trained.parameters()))
    path = Path(cfg.output) / "bundle"

    def write():
        save_bundle(path, TorchComponents(components.text_encoder, components.unet, vae), bundle.configs["scheduler"],
                    bundle.tokenizer_files, bundle.card, overwrite=True)
        with atomic_directory(path / TINY, overwrite=True) as tmp:
            save_tiny(tmp, trained, card)

    engine.on_main(write)
    return path


__all__ = ["DECODER_CARD", "DecoderLoss", "VAEFeatures", "distill_decoder", "edge_error", "fidelity", "psnr_db",
           "save_tiny"]

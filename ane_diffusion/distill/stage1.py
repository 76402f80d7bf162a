"""Stage 1, guidance distillation: one student evaluation replaces the guided teacher's two.

The student is the teacher's UNet plus a zero-initialised guidance input
(:func:`ane_diffusion.student.add_guidance_input`), so at update 0 it IS the teacher's conditional
model for every w. Each update draws clean latents x with their captions, ``t ~ U{0..T-1}``,
``w`` in ``[w_min, w_max]`` (:mod:`.guidance_weights`) and noise, and regresses the student's x
estimate at ``z_t`` onto the guided teacher's ``(1 + w) x_c - w x_u`` with the truncated-SNR
weight. The zero-initialised guidance input learns at ``lr x cfg.guidance_lr_scale``: at the
fine-tuning lr of the copied weights it stays near zero and the student learns one average guidance
strength instead of the family.

The student's output parameterisation (``cfg.prediction_type``) may differ from the teacher's; the
loss is in x-space either way. With a different one, update 0 is the teacher's network but not
its x estimate: the first updates re-learn what the output means.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from ..bundle import resolve_bundle
from ..card import ModelCard
from ..guidance import GuidanceEmbedding
from ..schedule import add_noise, expand_like
from .config import DistillConfig
from .data import check_data
from .engine import Engine, MicroBatch
from .guidance_weights import draw_guidance_weights
from .models import alpha_sigma, freeze, lineage_entry, predict_x0, student_scheduler_config
from .targets import LOSS_WEIGHTINGS, guided_target, weighted_mse

STUDENT_DIR = "student"
ADAPTER_FILE = "student-lora.safetensors"
"""A LoRA run's adapter (base: the teacher), beside the fused bundle ``student/``."""
PHASE_INDEX = 0
LABEL = "guidance"
GUIDANCE_INPUT = "time_embedding.cond_proj"
"""Parameter-name prefix of the student's new guidance input (diffusers' ``time_cond_proj_dim`` hook),
trained at ``lr x cfg.guidance_lr_scale``."""


def guided_teacher_x0(teacher, z, t, cond, uncond, alpha, sigma, w, kind: str):
    """The guided teacher's x estimate (B, C, H, W): one batch-2 call on [uncond; cond], as at runtime."""
    import torch

    both = teacher(torch.cat([z, z]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])).sample
    out_uncond, out_cond = both.float().chunk(2)
    return guided_target(out_cond, out_uncond, z, alpha, sigma, w, kind)


@dataclass
class GuidanceLoss:
    """``loss_fn`` of stage 1 (see :class:`~ane_diffusion.distill.engine.LossFn`)."""

    teacher: "object"
    schedule: "object"
    teacher_kind: str
    student_kind: str
    embedding: GuidanceEmbedding
    w_min: float
    w_max: float
    autocast: Callable
    loss_weighting: str = "truncated_snr"
    """A key of :data:`~ane_diffusion.distill.targets.LOSS_WEIGHTINGS`."""
    w_power: float = 1.0
    """See :func:`~ane_diffusion.distill.guidance_weights.draw_guidance_weights`."""

    def draw(self, batch: MicroBatch):
        """``(z_t, t, w)`` for the batch's latents: t (B,) CPU int64, z_t and w on the device."""
        import torch

        size, gen, device = batch.x0.shape[0], batch.generator, batch.device
        t = torch.randint(0, self.schedule.num_train_timesteps, (size,), generator=gen)
        w = draw_guidance_weights(size, gen, self.w_min, self.w_max, self.w_power)
        eps = torch.randn(batch.x0.shape, generator=gen).to(device)
        alpha, sigma = alpha_sigma(self.schedule, t, device)
        return add_noise(batch.x0, eps, expand_like(alpha, eps), expand_like(sigma, eps)), t, w.to(device)

    def loss_at(self, student, z, t, cond, uncond, w):
        """The weighted x-space error of ``student`` at given ``z`` (B, C, H, W), ``t`` (B,) CPU int64,
        embeddings (B, 77, D) and ``w`` (B,): the training loss, and the held-out measure."""
        import torch

        alpha, sigma = alpha_sigma(self.schedule, t, z.device)
        t = t.to(z.device)
        with torch.no_grad(), self.autocast():
            target = guided_teacher_x0(self.teacher, z, t, cond, uncond, alpha, sigma, w, self.teacher_kind)
        x_hat = predict_x0(student, z, t, cond, alpha, sigma, self.student_kind, w, self.embedding)
        return weighted_mse(x_hat, target, LOSS_WEIGHTINGS[self.loss_weighting](alpha, sigma))

    def __call__(self, student, batch: MicroBatch):
        z, t, w = self.draw(batch)
        return self.loss_at(student, z, t, batch.cond, batch.uncond, w)


def training_latent_range(data, teacher_card: ModelCard) -> Optional[dict]:
    """The ``latent_range`` for the student's card: measured on the in-memory training latents
    (:class:`~ane_diffusion.latent_range.LatentRange`), else (streamed shards) the teacher's, if any."""
    from ..latent_range import LatentRange

    latents = getattr(data, "latents", None)
    return LatentRange.from_latents(latents).to_dict() if latents is not None else teacher_card.latent_range


def guidance_card(teacher_bundle, cfg: DistillConfig, summary: dict, data_summary: dict,
                  latent_range: Optional[dict] = None) -> ModelCard:
    """The stage-1 student's card: w range, embedding size, lineage, the training latents' range
    and the training summary."""
    teacher = teacher_bundle.card
    return ModelCard(
        kind="guidance-distilled", prediction_type=cfg.prediction_type, steps=None,
        w_min=cfg.w_min, w_max=cfg.w_max, default_w=min(max(teacher.default_w, cfg.w_min), cfg.w_max),
        guidance_embedding_dim=cfg.guidance_embedding_dim, guidance_embedding_scale=cfg.guidance_embedding_scale,
        recommended_sampler=teacher.recommended_sampler,
        recommended_steps=teacher.recommended_steps, teacher=teacher_bundle.source, latent_range=latent_range,
        lineage=list(teacher.lineage) + [lineage_entry(teacher, teacher_bundle.source)],
        training={"stage": "guidance", **summary, "data": data_summary, "settings": cfg.settings_for("guidance"),
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        description=f"guidance-distilled from {teacher_bundle.source}: one evaluation per step "
                    f"for any w in [{cfg.w_min}, {cfg.w_max}] (guidance_scale = 1 + w)").validate()


def initial_student_bundle(cfg: DistillConfig):
    """The bundle of ``cfg.init_student`` (None without one), checked before anything is written.

    Raises ValueError (one line) for a teacher, a stage-2 student, or another embedding size or scale.
    """
    if not cfg.init_student:
        return None
    start = resolve_bundle(cfg.init_student)
    card = start.card
    if card.kind != "guidance-distilled":
        raise ValueError(f"--init-student {cfg.init_student} is a {card.kind} model; it must be a "
                         "guidance-distilled (stage-1) student")
    if (card.guidance_embedding_dim, card.guidance_embedding_scale) != (cfg.guidance_embedding_dim,
                                                                        cfg.guidance_embedding_scale):
        raise ValueError(f"--init-student {cfg.init_student} embeds w with dim {card.guidance_embedding_dim}, "
                         f"scale {card.guidance_embedding_scale:g}; this run uses dim {cfg.guidance_embedding_dim}, "
                         f"scale {cfg.guidance_embedding_scale:g}")
    return start


def distill_guidance(cfg: DistillConfig) -> Path:
    """Run stage 1 and return the student bundle's folder ``OUTPUT/student``."""
    from ..student import add_guidance_input
    from ..torch_models import TorchComponents, load_components, save_bundle

    cfg.check("guidance")
    bundle = resolve_bundle(cfg.model)
    if bundle.card.is_student:
        raise ValueError(f"--teacher {cfg.model} is already a {bundle.card.kind} student; stage 1 needs a "
                         "classifier-free-guided teacher")
    check_data(cfg)  # before the run folder exists
    start = initial_student_bundle(cfg)
    engine = Engine(cfg, LABEL)
    components = load_components(bundle, device=engine.device)
    data = engine.training_set(bundle, components)
    if cfg.lora_rank:  # one UNet: the teacher is the student's base (adapters off)
        from .. import student_lora

        student = student_lora.add_lora(student_lora.guidance_base(components.unet, cfg.guidance_embedding_dim),
                                        cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed).train()
        teacher = student_lora.BaseView(student)
    else:
        initial = (load_components(start, device=engine.device).unet if start is not None
                   else add_guidance_input(components.unet, cfg.guidance_embedding_dim))
        student = initial.train().requires_grad_(True)
        teacher = freeze(components.unet, engine.half_dtype)
    loss = GuidanceLoss(teacher, bundle.schedule, bundle.card.prediction_type, cfg.prediction_type,
                        GuidanceEmbedding(cfg.guidance_embedding_dim, cfg.guidance_embedding_scale), cfg.w_min,
                        cfg.w_max, engine.autocast, cfg.loss_weighting, cfg.w_power)
    result = engine.train_phase(PHASE_INDEX, LABEL, student, loss, data,
                                lr_scales={GUIDANCE_INPUT: cfg.guidance_lr_scale})
    card = guidance_card(bundle, cfg, result.summary, data.summary(), training_latent_range(data, bundle.card))
    path = Path(cfg.output) / STUDENT_DIR
    unet = result.model
    if cfg.lora_rank:
        from .. import student_lora

        engine.on_main(student_lora.save_adapter, Path(cfg.output) / ADAPTER_FILE, unet, card)
        unet = student_lora.fuse(unet)
    engine.on_main(save_bundle, path, TorchComponents(components.text_encoder, unet, components.vae),
                   student_scheduler_config(bundle.configs["scheduler"], cfg.prediction_type),
                   bundle.tokenizer_files, card, overwrite=True)
    return path

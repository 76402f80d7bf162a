"""Stage 2, progressive distillation: halve the sampling steps, phase after phase.

A phase trains an N'-step student from a frozen 2N'-step teacher (the stage-1 model first, then
each previous phase's student), both taking w as an input. Each update draws x, noise, w and a
point t of the student's trailing grid; the teacher takes two DDIM steps ``t -> t' -> t''`` (t' is
the next point of the 2N'-step grid, t'' the next student grid point or the clean end) and the
student learns, in one step, the x that lands on the same ``z_t''``
(:func:`~ane_diffusion.distill.targets.two_step_target`). Every phase is saved as a complete
bundle ``OUTPUT/steps-{N'}``.

The students' parameterisation is ``cfg.prediction_type`` (default v). When the stage-1 student's
differs (an epsilon student), the first phase switches: its student starts as the stage-1 network
with the output read the new way, and the loss, in x-space, teaches it what the output now means.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..bundle import resolve_bundle
from ..card import ModelCard
from ..guidance import GuidanceEmbedding
from ..samplers.ddim import ddim_step
from ..schedule import CLEAN, add_noise, expand_like, trailing_timesteps
from .checkpoint import CheckpointError
from .config import DistillConfig, halving_schedule
from .data import check_data
from .engine import Engine, MicroBatch
from .guidance_weights import draw_guidance_weights
from .models import alpha_sigma, freeze, lineage_entry, predict_x0, student_scheduler_config, trainable_copy
from .targets import truncated_snr_weight, two_step_target, weighted_mse

LABEL = "progressive"


def phase_dir(output: Path, steps: int) -> Path:
    return Path(output) / f"steps-{steps}"


def adapter_path(output: Path, steps: int) -> Path:
    """A LoRA phase's adapter (its base: the previous phase's bundle, or the stage-1 student)."""
    return Path(output) / f"steps-{steps}-lora.safetensors"


def two_step_timesteps(student_steps: int, index, num_train_timesteps: int = 1000):
    """``(t, t', t'')`` int64 arrays for student grid indices ``index`` (B,).

    t is the index-th point of the student's trailing grid, t' the next point of the teacher's
    (2N') grid, t'' the next student point or :data:`~ane_diffusion.schedule.CLEAN` after the last.
    """
    student = trailing_timesteps(student_steps, num_train_timesteps)
    teacher = trailing_timesteps(2 * student_steps, num_train_timesteps)
    ends = np.append(student[1:], CLEAN)
    index = np.asarray(index)
    return student[index], teacher[2 * index + 1], ends[index]


def teacher_two_steps(teacher, z_t, times, cond, w, schedule, kind: str, embedding):
    """The teacher's two DDIM steps from ``z_t`` (B, C, H, W) along ``times = (t, t', t'')`` (CPU
    int64 tensors (B,)); returns ``(z_t'', alpha_t'', sigma_t'')``."""
    device = z_t.device
    (a_t, s_t), (a_mid, s_mid), (a_end, s_end) = (alpha_sigma(schedule, t, device) for t in times)
    t, t_mid = times[0].to(device), times[1].to(device)
    x1 = predict_x0(teacher, z_t, t, cond, a_t, s_t, kind, w, embedding)
    z_mid = ddim_step(x1, z_t, *(expand_like(c, z_t) for c in (a_t, s_t, a_mid, s_mid)))
    x2 = predict_x0(teacher, z_mid, t_mid, cond, a_mid, s_mid, kind, w, embedding)
    z_end = ddim_step(x2, z_mid, *(expand_like(c, z_t) for c in (a_mid, s_mid, a_end, s_end)))
    return z_end, a_end, s_end


@dataclass
class ProgressiveLoss:
    """``loss_fn`` of one stage-2 phase (an N'-step student, a 2N'-step teacher)."""

    teacher: "object"
    schedule: "object"
    kind: str
    embedding: GuidanceEmbedding
    student_steps: int
    w_min: float
    w_max: float
    autocast: Callable
    w_power: float = 1.0
    """See :func:`~ane_diffusion.distill.guidance_weights.draw_guidance_weights`."""
    student_kind: Optional[str] = None
    """The student's parameterisation when it differs from the teacher's ``kind``."""

    def draw(self, batch: MicroBatch):
        """``(z_t, index, w)``: ``index`` (B,) CPU int64 points of the student's grid, t = grid[index]."""
        import torch

        size, gen, device = batch.x0.shape[0], batch.generator, batch.device
        index = torch.randint(0, self.student_steps, (size,), generator=gen)
        w = draw_guidance_weights(size, gen, self.w_min, self.w_max, self.w_power)
        eps = torch.randn(batch.x0.shape, generator=gen).to(device)
        alpha, sigma = alpha_sigma(self.schedule, self.timesteps(index)[0], device)
        return add_noise(batch.x0, eps, expand_like(alpha, eps), expand_like(sigma, eps)), index, w.to(device)

    def timesteps(self, index):
        """``(t, t', t'')`` CPU int64 tensors (B,) for grid indices (B,)."""
        import torch

        times = two_step_timesteps(self.student_steps, index.numpy(), self.schedule.num_train_timesteps)
        return tuple(torch.from_numpy(a) for a in times)

    def loss_at(self, student, z, index, cond, w):
        """The weighted error between one student step and two teacher steps from ``z`` (B, C, H, W)
        at grid points ``index`` (B,): the training loss, and the held-out measure."""
        import torch

        times = self.timesteps(index)
        alpha, sigma = alpha_sigma(self.schedule, times[0], z.device)
        with torch.no_grad(), self.autocast():
            z_end, a_end, s_end = teacher_two_steps(self.teacher, z, times, cond, w, self.schedule,
                                                    self.kind, self.embedding)
        target = two_step_target(z, z_end, alpha, sigma, a_end, s_end)
        x_hat = predict_x0(student, z, times[0].to(z.device), cond, alpha, sigma, self.student_kind or self.kind, w,
                           self.embedding)
        return weighted_mse(x_hat, target, truncated_snr_weight(alpha, sigma))

    def __call__(self, student, batch: MicroBatch):
        z, index, w = self.draw(batch)
        return self.loss_at(student, z, index, batch.cond, w)


def progressive_card(root_card: ModelCard, root_source: str, teacher_card: ModelCard, teacher_source: str,
                     steps: int, cfg: DistillConfig, summary: dict, data_summary: dict) -> ModelCard:
    """The card of an N'-step student: the stage-1 model's w range, its lineage, this phase's training."""
    return dataclasses.replace(
        teacher_card, kind="progressive", steps=steps, prediction_type=cfg.prediction_type,
        recommended_sampler="ddim", recommended_steps=steps,
        teacher=root_card.teacher or root_source,
        lineage=list(teacher_card.lineage) + [lineage_entry(teacher_card, teacher_source)],
        training={"stage": "progressive", "teacher_steps": 2 * steps, **summary, "data": data_summary,
                  "settings": cfg.settings_for("progressive"),
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        description=f"{steps}-step progressive student of {teacher_source} (DDIM, trailing grid)").validate()


def resolve_start_steps(cfg: DistillConfig, card: ModelCard, source: str) -> int:
    """``--start-steps``, defaulting to (and required to match) the input card's ``steps``."""
    if not card.is_student or not card.guidance_embedding_dim:
        raise ValueError(f"--student {source} is a {card.kind} model; stage 2 needs a guidance-distilled "
                         "student (run `distill guidance` first)")
    start = cfg.start_steps if cfg.start_steps is not None else card.steps
    if start is None:
        raise ValueError(f"--start-steps is needed: {source} was not distilled for a fixed step count")
    if card.steps is not None and start != card.steps:
        raise ValueError(f"{source} was distilled for {card.steps} steps; --start-steps must be {card.steps}")
    return start


def _finished_phase(path: Path) -> ModelCard:
    if not path.is_dir():
        raise CheckpointError(f"cannot resume: {path}, saved by a finished phase, is missing")
    return resolve_bundle(path).card


def distill_progressive(cfg: DistillConfig) -> list[Path]:
    """Run stage 2 down to ``cfg.target_steps``; returns the phase bundles' folders, in order."""
    from ..torch_models import TorchComponents, load_components, save_bundle

    cfg.check("progressive")
    bundle = resolve_bundle(cfg.model)
    cfg = dataclasses.replace(cfg, start_steps=resolve_start_steps(cfg, bundle.card, cfg.model))
    phases = halving_schedule(cfg.start_steps, cfg.target_steps, bundle.schedule.num_train_timesteps)
    check_data(cfg)  # before the run folder exists
    engine = Engine(cfg, LABEL)
    components = load_components(bundle, device=engine.device)
    data = engine.training_set(bundle, components)
    resumed = engine.resume_position()
    teacher_unet, teacher_card, teacher_source = components.unet, bundle.card, bundle.source
    scheduler_config = student_scheduler_config(bundle.configs["scheduler"], cfg.prediction_type)
    paths = []
    for index, steps in enumerate(phases):
        path = phase_dir(cfg.output, steps)
        if resumed is not None and index < resumed[0]:
            teacher_unet, teacher_card, teacher_source = None, _finished_phase(path), str(path)
            paths.append(path)
            continue
        if teacher_unet is None:
            teacher_unet = load_components(resolve_bundle(teacher_source), device=engine.device).unet
        if cfg.lora_rank:  # one UNet: the teacher is the student's base (adapters off)
            from .. import student_lora

            student = student_lora.add_lora(teacher_unet.float(), cfg.lora_rank, cfg.lora_alpha,
                                            seed=cfg.seed + index).train()
            teacher = student_lora.BaseView(student)
        else:
            student = trainable_copy(teacher_unet)
            teacher = freeze(teacher_unet, engine.half_dtype)
        loss = ProgressiveLoss(teacher, bundle.schedule, teacher_card.prediction_type,
                               teacher_card.guidance_embedding, steps, teacher_card.w_min, teacher_card.w_max,
                               engine.autocast, cfg.w_power, cfg.prediction_type)
        result = engine.train_phase(index, f"steps-{steps}", student, loss, data)
        card = progressive_card(bundle.card, bundle.source, teacher_card, teacher_source, steps, cfg,
                                result.summary, data.summary())
        if cfg.lora_rank:
            from .. import student_lora

            engine.on_main(student_lora.save_adapter, adapter_path(cfg.output, steps), result.model, card)
            result.model = student_lora.fuse(result.model)
        engine.on_main(save_bundle, path, TorchComponents(components.text_encoder, result.model, components.vae),
                       scheduler_config, bundle.tokenizer_files, card, overwrite=True)
        paths.append(path)
        teacher_unet, teacher_card, teacher_source = result.model, card, str(path)
    return paths

"""Settings of a distillation run: one JSON-serialisable dataclass, recorded in every card.

The same :class:`DistillConfig` drives both stages (the CLI fills it, the Python API takes it);
fields that only one stage reads say so. :meth:`DistillConfig.check` rejects impossible settings
with one-line messages before any model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

from ..guidance import STUDENT_W_SCALE
from ..schedule import PREDICTION_TYPES, trailing_timesteps

MIXED_PRECISION = ("no", "fp16", "bf16")

DEFAULT_W_RANGE = (1.0, 13.0)
"""Stage-1 default ``[w_min, w_max]``: Stable Diffusion's common guidance scales 2 to 14."""

DEFAULT_GUIDANCE_LR_SCALE = 100.0
"""Stage-1 default learning-rate multiplier of the zero-initialised guidance input (measured on the
demo teacher: see docs/training.md, "Guidance fidelity")."""

DEFAULT_EDGE_WEIGHT = 16.0
"""The tiny decoder's edge-term weight: the best of 0, 1, 4, 8, 16 on the demo
(benchmarks/results/decoder-demo/trials); not measured on Stable-Diffusion-size VAEs."""

RUN_ONLY_FIELDS = ("output", "cache_dir", "resume", "overwrite", "progress", "checkpoint_every", "log_every")
"""Fields that may change between an interrupted run and its ``--resume``; all others must match
(the run folder may have moved, and checkpoint/log frequency does not change the result)."""

STAGE_FIELDS = {"guidance": ("w_min", "w_max", "prediction_type", "guidance_embedding_dim",
                             "guidance_embedding_scale", "guidance_lr_scale", "loss_weighting", "w_power",
                             "init_student"),
                "progressive": ("start_steps", "target_steps", "prediction_type", "w_power"),
                "decoder": ("decoder_students", "student_w", "feature_weight", "encoder_weight", "edge_weight",
                            "samples_per_student", "tiny_width")}
"""Fields only some stages read (left out of the other stages' cards)."""


@dataclass
class DistillConfig:
    """Everything a run needs. ``model`` is the teacher (stage 1) or the stage-1 student (stage 2)."""

    model: str
    output: str
    data: Optional[str] = None
    """Folder with manifest.jsonl or manifest.csv (images + captions)."""
    prompts: Optional[str] = None
    """Text file, one prompt per line: training latents are sampled from the (guided) model."""
    shards: Optional[str] = None
    """webdataset tar shards (a folder of ``*.tar`` or a brace pattern), streamed: see
    :mod:`ane_diffusion.distill.data.streams`."""
    shuffle_buffer: int = 1000
    """Samples in the stream's shuffle buffer (``shards`` only)."""
    bad_data: str = "refuse"
    """A bad sample in a shard (corrupt image, no caption): ``refuse`` (stop, naming shard and key)
    or ``skip`` (warn and go on)."""
    cache_dir: Optional[str] = None
    """Latent and text-embedding cache (default ``OUTPUT/cache``); share it between stages."""
    resolution: Optional[int] = None
    """Image size in pixels (default: the model's)."""
    sample_steps: int = 25
    sample_w: Optional[float] = None
    """w of the DDIM samples made from ``prompts`` (default: the card's default_w)."""
    samples_per_prompt: int = 1

    # stage 1 only
    w_min: float = DEFAULT_W_RANGE[0]
    w_max: float = DEFAULT_W_RANGE[1]
    prediction_type: str = "v_prediction"
    """The student's output parameterisation. Stage 1 and stage 2 alike: a stage-2 run whose input
    student has another one switches in its first phase (an epsilon stage-1 student gives v students)."""
    guidance_embedding_dim: int = 256
    guidance_embedding_scale: float = STUDENT_W_SCALE
    """w is multiplied by this before the sinusoidal embedding (recorded in the card): see
    :data:`ane_diffusion.guidance.STUDENT_W_SCALE`."""
    guidance_lr_scale: float = DEFAULT_GUIDANCE_LR_SCALE
    """The new guidance input (``time_embedding.cond_proj``) learns at ``lr x guidance_lr_scale``.
    It starts at zero and must grow to O(1) weights while the copied teacher weights only move a
    little: at the shared fine-tuning lr the student barely responds to w (issue 11)."""
    loss_weighting: str = "truncated_snr"
    """Per-sample weight of the x-space error: a key of ``distill.targets.LOSS_WEIGHTINGS``."""
    init_student: Optional[str] = None
    """A guidance-distilled student (normally of the same teacher; not checked) to start from instead
    of the teacher's UNet, to continue a run with another w range or parameterisation. Its guidance
    embedding size and scale must match this run's."""

    # stages 1 and 2
    w_power: float = 1.0
    """How w is drawn in training: ``w_min + (w_max - w_min) u ** w_power`` (1: uniform; > 1: more
    draws near ``w_min``): :func:`ane_diffusion.distill.guidance_weights.draw_guidance_weights`."""

    # stage 2 only
    start_steps: Optional[int] = None
    """Steps the stage-2 input model samples in (default: its card's ``steps``)."""
    target_steps: int = 1

    # stage 3 (tiny decoder) only
    decoder_students: Optional[list] = None
    """Bundles whose samples the tiny decoder also trains on (default: ``model``; [] for none)."""
    student_w: Optional[list] = None
    """Guidance weights the students sample at, taken in turn over the captions (caption i at
    ``student_w[i % len]``; default: each student's card ``default_w``). The decoder then sees the
    latents of the whole w range users sample, not only the default's."""
    feature_weight: float = 1.0
    """Weight of the VAE-encoder feature term (see :mod:`ane_diffusion.distill.decoder`)."""
    encoder_weight: float = 1.0
    """Weight of the tiny encoder's latent MSE."""
    edge_weight: float = DEFAULT_EDGE_WEIGHT
    """Weight of the decoder's edge (image-gradient MSE) term (see :mod:`ane_diffusion.distill.decoder`)."""
    samples_per_student: Optional[int] = None
    """Student samples per ``decoder_students`` model (default: one per training example)."""
    tiny_width: Optional[int] = None
    """Channels of every level of the tiny autoencoder (default: :func:`ane_diffusion.decoders.tiny_config`'s rule)."""

    # optimisation (per phase in stage 2)
    updates: int = 1000
    batch_size: int = 4
    """Per process and micro-batch: the effective batch is batch_size x grad_accum x processes."""
    grad_accum: int = 1
    lr: float = 1e-5
    warmup: int = 0
    weight_decay: float = 0.0
    """0 by default: the student starts at the teacher, decay would only pull it away."""
    max_grad_norm: float = 1.0
    ema_decay: Optional[float] = None
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    lora_rank: int = 0
    """0: fine-tune the whole UNet; R >= 1: a LoRA student (rank-R adapters on the attention
    projections, the guidance projection in full; :mod:`ane_diffusion.student_lora`)."""
    lora_alpha: Optional[float] = None
    """LoRA scale numerator: adapters add (alpha / rank) B A (default alpha = rank, scale 1)."""

    # run control
    checkpoint_every: int = 500
    log_every: int = 10
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DistillConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def settings_for(self, stage: str) -> dict:
        """The settings a card of ``stage`` records (without the other stage's fields)."""
        other = {f for name, names in STAGE_FIELDS.items() if name != stage for f in names}
        other -= set(STAGE_FIELDS.get(stage, ()))
        return {k: v for k, v in self.to_dict().items() if k not in other}

    def training_settings(self) -> dict:
        """The fields an interrupted run and its resumption must share."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_ONLY_FIELDS}

    def check(self, stage: str) -> "DistillConfig":
        """Raise ValueError (one line) for settings that cannot work; returns self."""
        if sum(x is not None for x in (self.data, self.prompts, self.shards)) != 1:
            raise ValueError("give exactly one of --data FOLDER, --shards SHARDS or --prompts FILE")
        if self.bad_data not in ("refuse", "skip"):
            raise ValueError(f"--bad-data must be refuse or skip, got {self.bad_data!r}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"--shuffle-buffer must be >= 1, got {self.shuffle_buffer}")
        positive = {"updates": self.updates, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "checkpoint_every": self.checkpoint_every, "log_every": self.log_every,
                    "sample_steps": self.sample_steps, "samples_per_prompt": self.samples_per_prompt}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.resolution is not None:
            from ..checks import MAX_IMAGE_SIDE

            if not 0 < self.resolution <= MAX_IMAGE_SIDE:
                raise ValueError(f"--resolution must be in 1..{MAX_IMAGE_SIDE}, got {self.resolution}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.warmup < self.updates:
            raise ValueError(f"--warmup must be in [0, updates), got {self.warmup}")
        if not (math.isfinite(self.w_power) and self.w_power > 0):
            raise ValueError(f"--w-power must be a finite number > 0, got {self.w_power}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"--max-grad-norm must be positive, got {self.max_grad_norm}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be in (0, 1), got {self.ema_decay}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"--mixed-precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.lora_rank < 0:
            raise ValueError(f"--lora-rank must be >= 0 (0: full fine-tune), got {self.lora_rank}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        if stage == "guidance":
            self._check_guidance()
        elif stage == "progressive":
            self._check_prediction_type()
            if self.start_steps is not None:
                halving_schedule(self.start_steps, self.target_steps)
        elif stage == "decoder":
            if self.samples_per_student is not None and self.samples_per_student < 1:
                raise ValueError(f"--samples-per-student must be >= 1, got {self.samples_per_student}")
            if self.student_w is not None and (not self.student_w or any(not math.isfinite(w) or w < 0
                                                                          for w in self.student_w)):
                raise ValueError(f"--student-w must list finite weights >= 0, got {self.student_w}")
            if self.tiny_width is not None and self.tiny_width < 1:
                raise ValueError(f"--width must be >= 1 channel, got {self.tiny_width}")
            for name in ("feature_weight", "encoder_weight", "edge_weight"):
                if getattr(self, name) < 0:
                    raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        else:
            raise ValueError(f"unknown stage {stage!r}")
        return self

    def _check_prediction_type(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"--prediction-type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")

    def _check_guidance(self) -> None:
        if self.w_min > self.w_max:
            raise ValueError(f"--w-min {self.w_min} is greater than --w-max {self.w_max}")
        if self.w_min < 0:
            raise ValueError(f"--w-min must be >= 0 (w = guidance_scale - 1), got {self.w_min}")
        self._check_prediction_type()
        from .targets import LOSS_WEIGHTINGS

        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"--loss-weighting must be one of {tuple(LOSS_WEIGHTINGS)}, got {self.loss_weighting!r}")
        if self.guidance_lr_scale <= 0:
            raise ValueError(f"--guidance-lr-scale must be positive, got {self.guidance_lr_scale}")
        if not self.guidance_embedding_scale > 0 or not math.isfinite(self.guidance_embedding_scale):
            raise ValueError(f"--guidance-embedding-scale must be a finite number > 0, got "
                             f"{self.guidance_embedding_scale}")
        if self.init_student and self.lora_rank:
            raise ValueError("--init-student continues a full fine-tune; it cannot be combined with --lora-rank")
        if self.guidance_embedding_dim < 2:
            raise ValueError(f"--guidance-embedding-dim must be >= 2, got {self.guidance_embedding_dim}")


def halving_schedule(start_steps: int, target_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """Student step counts of the stage-2 phases: ``start/2, start/4, ..., target``.

    Raises ValueError when the target cannot be reached by halving, or when a student's trailing
    grid is not contained in its teacher's (then "two teacher steps" would not line up).
    """
    if target_steps < 1:
        raise ValueError(f"--target-steps must be >= 1, got {target_steps}")
    if start_steps > num_train_timesteps:
        raise ValueError(f"--start-steps must be <= {num_train_timesteps}, got {start_steps}")
    phases, steps = [], start_steps
    while steps > target_steps and steps % 2 == 0:
        steps //= 2
        phases.append(steps)
    if steps != target_steps or not phases:
        raise ValueError(f"--target-steps {target_steps} is not reachable by halving --start-steps {start_steps}")
    for student in phases:
        teacher_grid = trailing_timesteps(2 * student, num_train_timesteps)
        if not (teacher_grid[::2] == trailing_timesteps(student, num_train_timesteps)).all():
            raise ValueError(f"the {student}-step grid is not every other point of the {2 * student}-step grid")
    return phases

"""The model card ``ane_diffusion.json``: what a bundle is and how to sample it.

A card travels with every bundle the project writes (teachers, distilled students, Core ML
exports). Bundles without one (plain diffusers folders, LCM students) get a card inferred from
their configs by :func:`infer_card`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

CARD_NAME = "ane_diffusion.json"
CARD_VERSION = 1

KINDS = ("teacher", "guidance-distilled", "progressive", "lcm")
"""``teacher``: needs classifier-free guidance (two evaluations a step); the others take w as
an input (one evaluation a step)."""


class CardError(ValueError):
    """A card is missing a field, or holds one that makes no sense."""


@dataclass
class ModelCard:
    kind: str = "teacher"
    prediction_type: str = "epsilon"
    steps: Optional[int] = None
    """Steps the student was distilled for (None: any step count, e.g. a teacher)."""
    w_min: float = 0.0
    w_max: float = 14.0
    default_w: float = 6.5
    """Paper convention: guidance_scale = 1 + w (see :mod:`ane_diffusion.guidance`)."""
    guidance_embedding_dim: Optional[int] = None
    guidance_embedding_scale: float = 1000.0
    """w is multiplied by this before the sinusoidal embedding (:mod:`ane_diffusion.guidance`): 1000
    for LCM students and cards written before the field existed, ``STUDENT_W_SCALE`` for students
    distilled since."""
    recommended_sampler: str = "ddim"
    recommended_steps: int = 4
    teacher: Optional[str] = None
    latent_range: Optional[dict] = None
    """Per-channel bounds of the training latents (:class:`~ane_diffusion.latent_range.LatentRange`
    as a dict): what ``--clamp`` clips each step's x estimate to. None: not measured."""
    lineage: list = field(default_factory=list)
    training: dict = field(default_factory=dict)
    description: str = ""
    format_version: int = CARD_VERSION

    @property
    def is_student(self) -> bool:
        return self.kind != "teacher"

    @property
    def guidance_embedding(self):
        """The student's :class:`~ane_diffusion.guidance.GuidanceEmbedding`; None for a teacher."""
        from .guidance import GuidanceEmbedding

        if not self.guidance_embedding_dim:
            return None
        return GuidanceEmbedding(int(self.guidance_embedding_dim), float(self.guidance_embedding_scale))

    @property
    def clamp_range(self):
        """The card's :class:`~ane_diffusion.latent_range.LatentRange`; None when it records none."""
        from .latent_range import LatentRange

        return None if self.latent_range is None else LatentRange.from_dict(self.latent_range)

    def _check_types(self) -> None:
        """Each field holds its type: a card with ``"default_w": "3"`` is refused, not half-used."""
        import math
        import numbers

        def fail(name: str, wanted: str) -> None:
            raise CardError(f"card field {name} must be {wanted}, got {getattr(self, name)!r}")

        for name in ("kind", "prediction_type", "recommended_sampler", "description"):
            if not isinstance(getattr(self, name), str):
                fail(name, "a string")
        for name in ("w_min", "w_max", "default_w", "guidance_embedding_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                fail(name, "a finite number")
        for name, optional in (("steps", True), ("guidance_embedding_dim", True), ("recommended_steps", False),
                               ("format_version", False)):
            value = getattr(self, name)
            if not (value is None and optional) and (isinstance(value, bool) or not isinstance(value, int)):
                fail(name, "a whole number" + (" or null" if optional else ""))
        if self.teacher is not None and not isinstance(self.teacher, str):
            fail("teacher", "a string or null")
        if not isinstance(self.lineage, list):
            fail("lineage", "a list")
        if not isinstance(self.training, dict):
            fail("training", "an object")

    def validate(self) -> "ModelCard":
        from .schedule import PREDICTION_TYPES

        self._check_types()
        if self.kind not in KINDS:
            raise CardError(f"card kind {self.kind!r} is not one of {KINDS}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise CardError(f"card prediction_type {self.prediction_type!r} is not one of {PREDICTION_TYPES}")
        if self.is_student and not self.guidance_embedding_dim:
            raise CardError(f"a {self.kind} card needs guidance_embedding_dim")
        if self.guidance_embedding_scale <= 0:
            raise CardError(f"card guidance_embedding_scale must be > 0, got {self.guidance_embedding_scale}")
        if self.w_min > self.w_max:
            raise CardError(f"card w range is empty: [{self.w_min}, {self.w_max}]")
        if self.steps is not None and self.steps < 1:
            raise CardError(f"card steps must be >= 1, got {self.steps}")
        if self.recommended_steps < 1:
            raise CardError(f"card recommended_steps must be >= 1, got {self.recommended_steps}")
        from .latent_range import LatentRangeError

        try:
            self.clamp_range
        except LatentRangeError as exc:
            raise CardError(f"card {exc}") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise CardError(f"unknown card fields: {', '.join(unknown)}")
        return cls(**data).validate()

    def save(self, folder: Path) -> Path:
        path = Path(folder) / CARD_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> "ModelCard":
        path = Path(folder) / CARD_NAME
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CardError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
        if not isinstance(data, dict):
            raise CardError(f"{path} must hold a JSON object")
        return cls.from_dict(data)


def infer_card(unet_config: dict, scheduler_config: dict) -> ModelCard:
    """A card for a bundle that has none: a teacher, or an LCM-style student if the UNet has a
    guidance input (``time_cond_proj_dim``)."""
    prediction = scheduler_config.get("prediction_type", "epsilon")
    dim = unet_config.get("time_cond_proj_dim")
    if dim:
        return ModelCard(kind="lcm", prediction_type=prediction, steps=None, w_min=0.0, w_max=15.0,
                         default_w=7.5, guidance_embedding_dim=int(dim), recommended_sampler="lcm",
                         recommended_steps=4, description="inferred: UNet with a guidance input").validate()
    return ModelCard(kind="teacher", prediction_type=prediction, recommended_sampler="dpmpp-2m",
                     recommended_steps=20, default_w=6.5, description="inferred: guided teacher").validate()

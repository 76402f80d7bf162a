"""Which mixed-precision settings a device can train with, checked before anything is written.

Training keeps float32 master weights (the student and its optimiser state); ``fp16`` / ``bf16``
run the forward passes under autocast (accelerate's), and fp16 scales the loss (a grad scaler).
What each device supports (checked by :func:`check_precision`):

* CUDA: fp16; bf16 on GPUs that support it (Ampere or later).
* MPS: fp16 and bf16 where PyTorch has autocast on MPS (2.5 or later); bf16 needs macOS 14 or later.
* CPU: bf16 only (CPU autocast's type). fp16 is refused: there is no grad scaler on the CPU and
  float16 matmuls there are slow emulations.

:func:`check_precision` raises :class:`PrecisionError` (one line) for the unsupported cells.
"""

from __future__ import annotations

MIXED_PRECISION = ("no", "fp16", "bf16")


class PrecisionError(ValueError):
    """The device cannot train with the requested precision (one-line message)."""


def _autocast_available(device_type: str) -> bool:
    import torch

    check = getattr(torch.amp, "is_autocast_available", None)
    return bool(check(device_type)) if check is not None else device_type in ("cuda", "cpu")


def _mps_bf16() -> bool:
    import torch

    newer = getattr(torch.backends.mps, "is_macos_or_newer", None)
    return bool(newer(14, 0)) if newer is not None else False


def default_device_type() -> str:
    """The device type accelerate will pick: ``cuda``, else ``mps``, else ``cpu`` (``cpu`` too when
    ``ACCELERATE_USE_CPU`` is set)."""
    import os

    import torch

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def check_precision(mixed_precision: str, device) -> None:
    """Raise :class:`PrecisionError` when ``device`` (a torch.device or its type name) cannot train
    with ``mixed_precision`` (``"no"``, ``"fp16"`` or ``"bf16"``); return None otherwise."""
    import torch

    kind = getattr(device, "type", str(device))
    if mixed_precision not in MIXED_PRECISION:
        raise PrecisionError(f"--mixed-precision must be one of {MIXED_PRECISION}, got {mixed_precision!r}")
    if mixed_precision == "no":
        return
    if kind == "cpu" and mixed_precision == "fp16":
        raise PrecisionError("--mixed-precision fp16 needs a CUDA or MPS device; on the CPU use bf16 or no")
    if kind == "cuda" and mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise PrecisionError(f"--mixed-precision bf16: {torch.cuda.get_device_name()} has no bf16 support; use fp16")
    if kind == "mps":
        if not _autocast_available("mps"):
            raise PrecisionError(f"--mixed-precision {mixed_precision} on MPS needs PyTorch >= 2.5 "
                                 f"(this is {torch.__version__}); use no")
        if mixed_precision == "bf16" and not _mps_bf16():
            raise PrecisionError("--mixed-precision bf16 on MPS needs macOS 14 or later; use fp16")
    if kind not in ("cpu", "cuda", "mps"):
        raise PrecisionError(f"--mixed-precision {mixed_precision} is not supported on {kind} devices; use no")

"""How many CPU threads torch uses for generation: a policy that suits small machines, overridable.

PyTorch's default is one intra-op thread per core. For a small network (the embedded demo model,
tests' tiny models) the work per operation is too little to share: the threads spin-wait on each
other, and on a busy 2-core machine the first image took ~40x longer than with one thread
(issue 15; ``benchmarks/first_image.py`` measures it). For a full-size model (SD 1.5 at 512 px)
the cores do pay off. So, in this order:

1. an explicit count (``--threads N``, ``TorchBackend(threads=N)``);
2. the ``ANE_DIFFUSION_THREADS`` environment variable;
3. ``OMP_NUM_THREADS`` set: torch already follows it, nothing is changed;
4. a small model (UNet work per call below :data:`SMALL_WORK`): one thread;
5. otherwise torch's default.
"""

from __future__ import annotations

import os
from typing import Optional

ENV = "ANE_DIFFUSION_THREADS"
SMALL_WORK = 1e8
"""Threshold on :func:`unet_work`: the demo model is ~1e6, SD 1.5 at 512 px ~1.6e10."""


def unet_work(configs: dict, height: Optional[int] = None, width: Optional[int] = None) -> float:
    """A size proxy of one UNet call: latent pixels x sum of squared channel widths (unitless)."""
    unet, vae = configs["unet"], configs["vae"]
    factor = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    size = int(unet.get("sample_size", 64))
    latent = (height // factor if height else size) * (width // factor if width else size)
    return float(latent * sum(int(c) ** 2 for c in unet["block_out_channels"]))


def planned_threads(bundle, requested: Optional[int] = None) -> Optional[int]:
    """The thread count the policy picks for ``bundle`` (None: leave torch's default)."""
    if requested is not None:
        return _positive(requested, "--threads")
    if os.environ.get(ENV):
        return _positive(os.environ[ENV], ENV)
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    configs = getattr(bundle, "configs", None) or {}
    if "unet" in configs and "vae" in configs and unet_work(configs) < SMALL_WORK:
        return 1
    return None


def apply_thread_policy(torch, bundle, requested: Optional[int] = None) -> int:
    """Set torch's intra-op threads per :func:`planned_threads`; returns the count in force."""
    threads = planned_threads(bundle, requested)
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _positive(value, where: str) -> int:
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise ValueError(f"{where} must be a whole number >= 1, got {value!r}")
    return count

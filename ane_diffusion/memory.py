"""Keep freed memory in the process instead of handing it back to the kernel (Linux, glibc).

PyTorch frees and re-allocates large activation buffers on every step. glibc serves buffers
over its mmap threshold with fresh ``mmap`` calls and returns them with ``munmap``, so each step
page-faults its working set in again. On virtual machines where page faults are expensive this
dominates: measured here, one training step of the demo UNet took 9-11 s that way and 0.2 s with
the thresholds raised. Entry points (the CLI, the demo recipe, the test suite) call
:func:`keep_freed_memory` once at start-up; elsewhere (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ONE_GIB = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _ONE_GIB)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))

"""One line per conversion stage and component, with its duration.

    [Unet] load       0.1 s
    [Unet] trace      0.4 s
    [Unet] convert    5.0 s  float16 (sin/cos embeddings float32), split_einsum
    [Unet] compress   6.5 s  6-bit k-means palettization (one table per tensor): 2.5 MB -> 1.2 MB
    [Unet] save       0.2 s  Unet.mlpackage 1.2 MB

Every finished stage is also kept in ``Progress.events`` (component, stage, seconds, detail), and
an optional ``callback(kind, event)`` is called with ``kind`` ``"start"`` / ``"end"`` (the
benchmark uses it to measure peak memory per stage).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Optional


def human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"


class Progress:
    def __init__(self, stream=None, enabled: bool = True, callback: Optional[Callable[[str, dict], None]] = None,
                 library_bars: bool = False):
        self.stream = stream
        self.enabled = enabled
        self.library_bars = library_bars
        """Show coremltools' own tqdm bars (its passes, ops) besides the stage lines."""
        self.callback = callback
        self.events: list[dict] = []

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream or sys.stderr, flush=True)

    @contextlib.contextmanager
    def stage(self, component: str, stage: str):
        """Time a stage; the body may set ``info["detail"]`` (printed after the duration)."""
        info: dict = {"component": component, "stage": stage, "detail": ""}
        if self.callback:
            self.callback("start", dict(info))
        start = time.perf_counter()
        yield info
        info["seconds"] = time.perf_counter() - start
        self.events.append(info)
        if self.callback:
            self.callback("end", dict(info))
        detail = f"  {info['detail']}" if info.get("detail") else ""
        self._print(f"[{component}] {stage:<9}{info['seconds']:7.1f} s{detail}")

    def note(self, component: str, message: str) -> None:
        self.events.append({"component": component, "stage": "note", "detail": message, "seconds": 0.0})
        self._print(f"[{component}] {message}")

"""File names read from files (contracts, manifests, checkpoint states) must stay inside their folder.

A contract saying ``"vocab": "../outside/vocab.json"`` or ``"/etc/passwd"`` must not make the
project read (or later overwrite) a file elsewhere. Every file name the project reads from a file
goes through :func:`inside`: a non-empty relative name, no ``..`` part, no absolute path or drive,
and (unless ``subfolders``) no separator at all. The check is on the name, not on where symbolic
links inside the folder point (a folder's owner may link its own files).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable


def inside(folder, name, what: str, error: Callable[[str], Exception] = ValueError, subfolders: bool = False) -> Path:
    """``folder / name`` when ``name`` is a plain file name (with ``subfolders``, a relative path below
    ``folder``); otherwise ``error("<what> ... must be a plain file name inside <folder>")`` is raised."""
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        raise error(f"{what} {name!r} must be a non-empty file name")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    escapes = posix.is_absolute() or windows.is_absolute() or bool(windows.drive) or ".." in windows.parts
    nested = len(windows.parts) != 1
    if escapes or (nested and not subfolders) or name in (".",):
        kind = "a relative path inside" if subfolders else "a plain file name inside"
        raise error(f"{what} {name!r} must be {kind} {folder}")
    return Path(folder) / name


__all__ = ["inside"]

"""Atomic outputs: everything is written to a temporary sibling and renamed when complete,
so an interrupted or failed run never leaves a half-written file or folder behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


class OutputError(OSError):
    """An output path cannot be written (missing parent, not writable, already taken)."""


def current_umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(path: Path) -> None:
    """Give a finished temporary file or folder the mode a plain ``open`` / ``mkdir`` would have
    (0666 / 0777 minus the umask): ``mkstemp`` / ``mkdtemp`` make them 0600 / 0700, private to the
    owner, which outputs must not keep. Folders inside a folder output are left as created."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~current_umask())


def _check_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: folder {parent} is not writable")


@contextlib.contextmanager
def atomic_file(path: os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    _check_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        publish_mode(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; move it to ``path`` on success.

    An existing ``path`` is replaced only with ``overwrite``; otherwise it is an error.
    """
    path = Path(path)
    _check_parent(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists (choose another path or allow overwriting)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        publish_mode(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

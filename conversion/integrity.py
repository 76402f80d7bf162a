"""What ``convert`` wrote, recorded and re-checked: sizes and SHA-256 of every file of every package.

Each component's record in the contract (``converter.components.<Name>``) gets an optional
``"content"`` map, ``{"Unet.mlpackage/Data/com.apple.CoreML/weights/weight.bin": {"bytes": n,
"sha256": hex}, ...}`` (readers that do not know it, such as the Swift package, ignore it). Then:

* a ``convert`` re-run converts again a component whose files no longer match instead of reporting
  it "already converted" (full check: sizes and hashes);
* ``verify`` names damaged and missing components and fails (full check);
* the Core ML backend refuses a package whose files are missing or changed size (sizes only: hashing
  a 1.7 GB UNet on every ``generate`` would cost seconds).

Exports written before these records exist are checked for their packages' presence only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def package_content(folder: Path, packages: list[str]) -> dict[str, dict]:
    """``{"<package>/<relative path>": {"bytes", "sha256"}}`` of every file of ``packages`` in ``folder``."""
    content = {}
    for package in packages:
        root = Path(folder) / package
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            key = path.relative_to(folder).as_posix()
            content[key] = {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    return content


def problems(folder, record: dict, hashes: bool = True) -> list[str]:
    """What no longer matches ``record`` (a contract component record) in ``folder``: missing packages,
    missing files, other sizes, other content (with ``hashes``). Empty when intact."""
    folder = Path(folder)
    found = [f"{name} is missing" for name in record.get("files") or [] if not (folder / name).exists()]
    if found:
        return found
    for key, expected in sorted((record.get("content") or {}).items()):
        path = folder / key
        if not path.is_file():
            found.append(f"{key} is missing")
        elif path.stat().st_size != expected.get("bytes"):
            found.append(f"{key} has {path.stat().st_size} bytes, {expected.get('bytes')} were written")
        elif hashes and sha256_of(path) != expected.get("sha256"):
            found.append(f"{key} changed since it was written (SHA-256 differs)")
    return found


def summary(found: list[str], limit: int = 2) -> Optional[str]:
    """The first ``limit`` problems joined for a one-line message (None when there are none)."""
    if not found:
        return None
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return "; ".join(found[:limit]) + more


__all__ = ["package_content", "problems", "sha256_of", "summary"]

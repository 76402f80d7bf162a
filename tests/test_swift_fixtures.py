"""The Swift bridge's golden vectors must be what the Python package computes today.

``swift_bridge/make_fixtures.py`` writes them into ``swift_bridge/Tests/ANEDiffusionTests/Fixtures``;
the Swift tests replay them (they run separately: ``cd swift_bridge && swift test``). This test
regenerates them into a temporary folder and fails when the committed files differ, i.e. when
the Python reference changed and the fixtures (and maybe the Swift code) were not updated.

Floats are compared to 1e-5 relative (+1e-6 absolute): numpy's float32 sin/tanh/exp use
CPU-specific SIMD code, so another machine may differ in the last float32 bit. Everything else
(token ids, timesteps, shapes, integers, strings, the tokenizer files) must match exactly.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "swift_bridge" / "make_fixtures.py"
COMMITTED = ROOT / "swift_bridge" / "Tests" / "ANEDiffusionTests" / "Fixtures"
REGENERATE = "python swift_bridge/make_fixtures.py"


def _differences(expected, actual, path="$"):
    """Paths where two JSON values differ (floats within tolerance count as equal)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return [] if expected is actual else [f"{path}: {actual!r} != {expected!r}"]
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        if isinstance(expected, int) and isinstance(actual, int):
            return [] if expected == actual else [f"{path}: {actual} != {expected}"]
        if math.isclose(actual, expected, rel_tol=1e-5, abs_tol=1e-6):
            return []
        return [f"{path}: {actual!r} != {expected!r}"]
    if type(expected) is not type(actual):
        return [f"{path}: {type(actual).__name__} != {type(expected).__name__}"]
    if isinstance(expected, dict):
        if expected.keys() != actual.keys():
            return [f"{path}: keys {sorted(actual)} != {sorted(expected)}"]
        return [d for key in expected for d in _differences(expected[key], actual[key], f"{path}.{key}")]
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return [f"{path}: length {len(actual)} != {len(expected)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in _differences(e, a, f"{path}[{i}]")]
    return [] if expected == actual else [f"{path}: {actual!r} != {expected!r}"]


def _files(folder: Path) -> set:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_fixtures_are_up_to_date(tmp_path):
    out = tmp_path / "fixtures"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    assert _files(out) == _files(COMMITTED), f"fixture files changed; run `{REGENERATE}`"
    problems = []
    for name in sorted(_files(out)):
        fresh, committed = out / name, COMMITTED / name
        if name.endswith(".json") and not name.startswith("tokenizer/"):
            diffs = _differences(json.loads(committed.read_text()), json.loads(fresh.read_text()))
            problems += [f"{name} {d}" for d in diffs[:5]]
        elif fresh.read_bytes() != committed.read_bytes():
            problems.append(f"{name} differs")
    assert not problems, f"stale Swift fixtures; run `{REGENERATE}`:\n" + "\n".join(problems[:20])


def test_fixtures_stay_small():
    total = sum((COMMITTED / name).stat().st_size for name in _files(COMMITTED))
    assert total < 2_000_000, f"Swift fixtures are {total / 1e6:.2f} MB; keep them under 2 MB"


def test_difference_checker():
    assert _differences({"a": [1, 2.0, "x"]}, {"a": [1, 2.0 + 1e-9, "x"]}) == []
    assert _differences({"a": [1]}, {"a": [2]}) == ["$.a[0]: 2 != 1"]
    assert _differences([0.5], [0.6]) and _differences([True], [1]) and _differences({"a": 1}, {"b": 1})

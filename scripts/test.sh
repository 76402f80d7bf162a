#!/usr/bin/env bash
# The project's test command: install with the test extras (pinned), run pytest, then build and
# test swift_bridge/ if `swift` is on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]" -c constraints.txt
python -m pytest -q -p no:cacheprovider "$@"
if command -v swift >/dev/null 2>&1; then
    (cd swift_bridge && swift build && swift test)
else
    echo "swift not found: skipping swift_bridge/ (install a Swift toolchain to test it)"
fi

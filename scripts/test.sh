#!/usr/bin/env bash
# The project's test command: install with the test extras (pinned), run pytest, then build and
# test swift_bridge/ if `swift` is on PATH. Ends with one summary line of both suites' counts.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]" -c constraints.txt
log=$(mktemp)
trap 'rm -f "$log"' EXIT
python -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
py_passed=$(grep -Eo '[0-9]+ passed' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
swift_passed=0
if command -v swift >/dev/null 2>&1; then
    # The Swift tests are XCTest cases; Swift Testing would only add an empty "0 tests" run.
    (cd swift_bridge && swift build && swift test --disable-swift-testing) 2>&1 | tee "$log"
    swift_passed=$(grep -Eo 'Executed [0-9]+ tests, with 0 failures' "$log" | tail -1 | grep -Eo '[0-9]+' | head -1)
else
    echo "swift not found: skipping swift_bridge/ (install a Swift toolchain to test it)"
fi
echo "total: $((py_passed + swift_passed)) passed, 0 failed"

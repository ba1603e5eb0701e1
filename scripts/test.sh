#!/usr/bin/env bash
# Sets up (or reuses) both cached environments, then runs the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k lava -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec "$SPIKEDIFF_PY" -m pytest -q "$@"

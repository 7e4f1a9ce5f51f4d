#!/usr/bin/env bash
# The README's test command: set up (if needed), then the whole pytest suite (unit + Ray integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
exec .venv/bin/python -m pytest -q --durations=20 "$@" tests

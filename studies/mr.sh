#!/usr/bin/env bash
# Reproduce studies/results/mr: layer curves, CKA, baselines and a recommendation on MR
# with the packaged minilm and smollm2 models. Extraction is cached ($AUTOLAYER_HOME), so a
# re-run recomputes nothing that is already there. CPU time on this 2-core machine: see
# studies/results/mr/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
A=.venv/bin/autolayer
OUT=studies/results/mr
DATA=../shared/data/mr
mkdir -p "$OUT"
for split in train test; do
  $A extract -m minilm -d "$DATA" --split "$split" > /dev/null
  $A extract -m smollm2 -d "$DATA" --split "$split" > /dev/null
done
$A score -m minilm,smollm2 -d "$DATA" --json "$OUT/layers.json" --plot "$OUT/layers.png" | tee "$OUT/layers.txt"
$A complementarity -m minilm,smollm2 -d "$DATA" --json "$OUT/cka.json" --plot "$OUT/cka.png" | tee "$OUT/cka.txt"
.venv/bin/python studies/baselines.py --dataset "$DATA" --models minilm,smollm2 --json "$OUT/baselines.json" | tee "$OUT/baselines.txt"
$A recommend -d "$DATA" --models minilm,smollm2 --n-trials 30 -o "$OUT/recommend" | tee "$OUT/recommend.txt"
$A apply "$OUT/recommend/recommendation.yaml" -d "$DATA" -o "$OUT/model" | tee "$OUT/apply.txt"

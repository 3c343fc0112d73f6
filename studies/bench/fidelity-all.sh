#!/usr/bin/env bash
# Issue 12's per-set runs of studies/bench/fidelity.py, one after the other, four zoo models.
# Each run resumes (arms already in its JSON are skipped), so a stopped queue restarts here.
#   WORK=/work/fidelity-work bash studies/bench/fidelity-all.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${WORK:-/tmp/fidelity-work}
results=${RESULTS:-studies/bench/results}
run() {
    HF_HUB_OFFLINE=1 ${PYTHON:-.venv/bin/python} studies/bench/fidelity.py \
        --models minilm,mpnet,smollm2,gemma3 --work-dir "$work/$1" \
        --json "$results/fidelity-$1.json" "${@:2}"
}
run sst2 --dataset ../shared/data/sst2 --max-train-samples 20000 --max-length 256
run mr --dataset ../shared/data/mr --max-length 256 --arms brute_force --rerun
run r8 --dataset ../shared/data/r8 --max-length 128
run r52 --dataset ../shared/data/r52 --max-length 128

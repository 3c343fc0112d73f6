"""Benchmark: search throughput (trials/min) on cached embeddings, with and without pruning.

Both studies run in one process on the same prepared candidates (extraction is cached and
excluded), with the same seed and budget; the ratio is what the median pruner buys.

    .venv/bin/python studies/bench/search.py --dataset ../shared/data/mr --models minilm,smollm2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from autolayer import pipeline
from autolayer.budgets import Budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--models", default="minilm")
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    prepared = pipeline.prepare(args.dataset, args.models.split(","))
    results = {}
    for prune in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = pipeline.search(
                prepared, output_dir=tmp, budget=Budget(n_trials=args.n_trials), prune=prune
            )
            minutes = (time.perf_counter() - start) / 60
        trained = [t for t in result.trials if "infeasible" not in t.attrs]
        results["pruning" if prune else "no_pruning"] = {
            "trials": len(trained),
            "pruned": sum(t.state == "PRUNED" for t in trained),
            "minutes": minutes,
            "trials_per_min": len(trained) / minutes,
            "best_val": result.best.value,
        }
    a, b = results["no_pruning"], results["pruning"]
    for name, r in results.items():
        print(
            f"{name}: {r['trials']} trials ({r['pruned']} pruned) in {r['minutes']:.2f} min = "
            f"{r['trials_per_min']:.1f} trials/min, best validation {100 * r['best_val']:.1f}%"
        )
    print(f"pruning speed-up: {b['trials_per_min'] / a['trials_per_min']:.2f}x trials/min")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

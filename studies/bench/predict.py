"""Benchmark: inference time of a backbone cut at layer k versus the full backbone.

`predict` runs each backbone only up to its chosen layer; the target is time ∝ k / L.
Everything is measured in one run on the same texts.

    .venv/bin/python studies/bench/predict.py --model smollm2 --texts 200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from autolayer import zoo
from autolayer.data import load_dataset
from autolayer.sources.transformer import Backbone

REPO = Path(__file__).resolve().parents[2]


def time_encode(backbone: Backbone, texts: list[str], repeats: int) -> float:
    backbone.encode(texts[:16])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        backbone.encode(texts)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(REPO.parent / "shared" / "data" / "mr")
    texts = list(data.split("test").texts[:: max(1, len(data.split("test")) // args.texts)])[
        : args.texts
    ]
    source = zoo.resolve(args.model)
    full = Backbone(source, [-1])
    last = full.n_hidden_states - 1
    reference = time_encode(full, texts, args.repeats)
    rows = []
    for k in sorted({max(1, last // 6), last // 3, last // 2, 2 * last // 3, 5 * last // 6, last}):
        seconds = (
            reference if k == last else time_encode(Backbone(source, [k]), texts, args.repeats)
        )
        rows.append(
            {
                "layer": k,
                "seconds": seconds,
                "time_ratio": seconds / reference,
                "k_over_L": k / last,
            }
        )
        print(
            f"layer {k:>2}/{last}: {seconds:6.2f} s, "
            f"time {seconds / reference:.2f} of full, k/L {k / last:.2f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"model": args.model, "texts": len(texts), "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()

"""Benchmark: how recommend's cost grows with training size and pool size (issue 12).

Exhaustive vs multi-fidelity recommend (each from a cold cache, one after the other, never
beside another heavy job) on SST-2 training samples of 1k, 4k, 16k and all 67k sentences
with the four zoo models, and on 4k sentences with pools of 1, 2 and 4 models. Wall and CPU
seconds per run go to the JSON (runs already there are kept, so the script resumes), and
the two curves to a PNG.

    .venv/bin/python studies/bench/scaling.py --work-dir /work/scaling-work \\
        --json studies/bench/results/scaling-sst2.json --plot studies/bench/results/scaling-sst2.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import autolayer
from autolayer.fidelity import Fidelity
from autolayer.options import Options

sys.path.insert(0, str(Path(__file__).parent))
from fidelity import recommend_arm  # noqa: E402  (a sibling script, not a package)

MODELS = ("minilm", "smollm2", "mpnet", "gemma3")  # pools are prefixes: cheapest first
SIZES = (1000, 4000, 16000, None)  # None: the full 67,349 sentences
POOL_SIZE = 4000
ARMS = {"exhaustive": None, "multi_fidelity": Fidelity()}


def runs() -> list[tuple[str, int | None, int]]:
    """(key, training size, pool size) of every run, cheapest first."""
    out = [(f"size-{n or 'all'}", n, len(MODELS)) for n in SIZES]
    out += [(f"pool-{k}", POOL_SIZE, k) for k in (1, 2)]  # pool 4 at 4k is size-4000
    return sorted(out, key=lambda r: (r[1] or 10**9) * r[2])


def plot(results: dict, path: Path, n_full: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for arm, style in (("exhaustive", "o-"), ("multi_fidelity", "s--")):
        sizes = [(n or n_full, results.get(f"size-{n or 'all'}", {})) for n in SIZES]
        points = [(n, r[arm]["wall_seconds"]) for n, r in sizes if arm in r]
        if points:
            left.plot(*zip(*points, strict=True), style, label=arm.replace("_", "-"))
        pools = [(k, results.get(f"pool-{k}", {})) for k in (1, 2)]
        pools.append((len(MODELS), results.get(f"size-{POOL_SIZE}", {})))
        points = [(k, r[arm]["wall_seconds"]) for k, r in pools if arm in r]
        if points:
            right.plot(*zip(*points, strict=True), style, label=arm.replace("_", "-"))
    left.set(
        xscale="log",
        yscale="log",
        xlabel="SST-2 training sentences (4 models)",
        ylabel="recommend wall seconds",
    )
    right.set(
        xlabel=f"models in the pool ({POOL_SIZE:,} sentences)",
        ylabel="wall seconds",
        xticks=[1, 2, 4],
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(Path(__file__).parents[3] / "shared/data/sst2"))
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--plot", type=Path, required=True)
    parser.add_argument("--n-trials", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    full = autolayer.load_dataset(args.dataset)
    options = Options(max_length=args.max_length)
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    for key, size, pool in runs():
        data = full.subsample(size, seed=0) if size else full
        for arm, fidelity in ARMS.items():
            if arm in results.get(key, {}):
                continue
            root = args.work_dir / key / arm
            shutil.rmtree(root, ignore_errors=True)  # the bench's own cache: cold start
            models = list(MODELS[:pool])
            result = recommend_arm(
                data, models, fidelity, options, args.n_trials, root, apply=False
            )
            results.setdefault(key, {"n_train": len(data.split("train")), "models": models})
            results[key][arm] = result
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))
            print(key, arm, f"{result['wall_seconds']:.0f} s wall", flush=True)
            shutil.rmtree(root / "cache", ignore_errors=True)  # 67k × 4 models is ~11 GB
        plot(results, args.plot, len(full.split("train")))


if __name__ == "__main__":
    main()

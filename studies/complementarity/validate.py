"""Does a complementarity estimate predict what fusing two models gains? (issue 13)

For every pair of the zoo's four models on each benchmark set, the **measured** gain comes
from ``studies/bench/fidelity.py``'s brute-force arm (full training data, every operator ×
top-2 layers of both models; the pair's best configuration by validation minus the better
model's best single layer under the same head), on validation and on test. The
**estimates** are computed as the multi-fidelity screen would see them: a stratified sample
of the search-train rows (``--screen-size``), each model at its best layer by probe on that
sample, then :func:`autolayer.complementarity.estimate_pairs` and linear CKA (raw,
standardised, debiased).

The table gives Spearman ρ between each estimate and the measured gain, per set and pooled,
and how often a gain-type estimate gets the sign of the measured gain right.

    .venv/bin/python studies/complementarity/validate.py --work-dir /work/fidelity-work \
        --out studies/results/complementarity
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

import autolayer
from autolayer import pipeline
from autolayer.cka import linear_cka
from autolayer.complementarity import estimate_pairs
from autolayer.options import Options
from autolayer.probe import probe_layers
from autolayer.sampling import stratified_rows

ROOT = Path(__file__).resolve().parents[2]
# How studies/bench/fidelity-all.sh ran each set (the caches are keyed by these).
SETS = {
    "sst2": {"max_train_samples": 20000, "max_length": 256},
    "mr": {"max_length": 256},
    "r8": {"max_length": 128},
    "r52": {"max_length": 128},
}
GAIN_LIKE = ("gain", "oracle_gain")  # estimates whose sign is a predicted sign
ESTIMATES = (
    "gain",
    "oracle_gain",
    "disagreement",
    "double_fault",
    "q_statistic",
    "cka",
    "cka_standardised",
    "cka_debiased",
)


def pairs_of(
    name: str, work: Path, screen_size: int, results: Path, screen_only: bool = False
) -> list[dict]:
    """Estimates and measured gains of every pair on one set. ``screen_only``: embed only
    the screen's rows (when the exhaustive arm's cache of the whole train split is gone),
    in their own batches, so values may differ from the whole split's in the last digits."""
    bench = json.loads((results / f"fidelity-{name}.json").read_text())["brute_force"]
    settings = SETS[name]
    data = autolayer.load_dataset(ROOT.parent / "shared" / "data" / name)
    if "max_train_samples" in settings:
        data = data.subsample(settings["max_train_samples"], seed=0)
    options = Options(
        max_length=settings["max_length"], cache_dir=work / name / "exhaustive" / "cache"
    )
    train, _ = data.train_validation(size=options.validation_size, seed=options.seed)
    y_train = data.split("train").labels[train]
    pick = stratified_rows(y_train, screen_size, options.seed, per_class=1)
    screen, y = train[pick], y_train[pick]
    features = {}
    for model in bench["singles"]:
        if screen_only:
            x = np.asarray(pipeline.embed(model, data, "train", options, rows=screen).array)
        else:
            x = np.asarray(pipeline.embed(model, data, "train", options).array[screen])
        best = probe_layers(x, y, seed=options.seed).best_layer
        features[model] = x[:, best]
    out = []
    for estimate, measured in zip(
        estimate_pairs(features, y, seed=options.seed), bench["pairs"], strict=True
    ):
        a, b = estimate.models
        assert [a, b] == measured["pair"], (estimate.models, measured["pair"])
        singles = [bench["singles"][m] for m in (a, b)]
        xa, xb = features[a], features[b]
        out.append(
            {
                "set": name,
                "embedded": "screen rows" if screen_only else "train split",
                **estimate.as_dict(),
                "cka": linear_cka(xa, xb),
                "cka_standardised": linear_cka(_standardised(xa), _standardised(xb)),
                "cka_debiased": linear_cka(xa, xb, debiased=True),
                "measured_val": measured["val_accuracy"] - max(s["val_accuracy"] for s in singles),
                "measured_test": measured["test_accuracy"]
                - max(singles, key=lambda s: s["val_accuracy"])["test_accuracy"],
            }
        )
    return out


def _standardised(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)


def table(rows: list[dict], target: str) -> list[str]:
    """Markdown rows: Spearman ρ per set and pooled, and sign agreement of gain estimates."""
    sets = sorted({r["set"] for r in rows}, key=list(SETS).index)
    lines = [
        f"| estimate | {' | '.join(sets)} | pooled ({len(rows)} pairs) | sign agreement |",
        "|---" * (len(sets) + 3) + "|",
    ]
    for est in ESTIMATES:
        per = [_rho([r for r in rows if r["set"] == s], est, target) for s in sets]
        pooled = _rho(rows, est, target)
        sign = "—"
        if est in GAIN_LIKE:
            agree = sum(np.sign(r[est]) == np.sign(r[target]) for r in rows)
            sign = f"{agree}/{len(rows)}"
        cells = " | ".join(f"{v:+.2f}" for v in per)
        lines.append(f"| {est} | {cells} | {pooled:+.2f} | {sign} |")
    return lines


def _rho(rows: list[dict], est: str, target: str) -> float:
    return float(spearmanr([r[est] for r in rows], [r[target] for r in rows]).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True, help="fidelity-all.sh's WORK")
    parser.add_argument("--results", type=Path, default=ROOT / "studies/bench/results")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--screen-size", type=int, default=2000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--screen-only", action="store_true", help="embed only the screen's rows of each set"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the other sets' rows of --out's validation.json"
    )
    args = parser.parse_args()
    sets = args.sets.split(",")
    rows = []
    if args.keep and (args.out / "validation.json").exists():
        kept = json.loads((args.out / "validation.json").read_text())
        rows = [r for r in kept if r["set"] not in sets]
    for name in sets:
        if (args.results / f"fidelity-{name}.json").exists():
            rows += pairs_of(name, args.work_dir, args.screen_size, args.results, args.screen_only)
    rows.sort(key=lambda r: list(SETS).index(r["set"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validation.json").write_text(json.dumps(rows, indent=1))
    lines = []
    for target in ("measured_val", "measured_test"):
        lines += [f"Spearman ρ with the {target.split('_')[1]} gain", "", *table(rows, target), ""]
    (args.out / "validation.md").write_text("\n".join(lines))
    print("\n".join(lines))
    scatter(rows, args.out / "validation.png")


def scatter(rows: list[dict], path: Path) -> None:
    """Measured validation gain against the concat probe gain and against CKA, per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, est, label in (
        (axes[0], "gain", "predicted gain: probe on both − better alone (pt)"),
        (axes[1], "cka_standardised", "linear CKA, standardised features"),
    ):
        for name in SETS:
            mine = [r for r in rows if r["set"] == name]
            if mine:
                scale = 100 if est == "gain" else 1
                ax.scatter(
                    [scale * r[est] for r in mine],
                    [100 * r["measured_val"] for r in mine],
                    label=name,
                )
        ax.set(xlabel=label)
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0].axvline(0, color="k", lw=0.5)
    axes[0].set(ylabel="measured gain of the best fusion, validation (pt)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

"""Benchmark: autolayer's batched probe vs sklearn LogisticRegression fitted layer by layer.

Both score every layer of one array [N, L+1, D] on the same stratified folds; the script prints
each wall time, their ratio and the accuracy gap, all measured in this one run.

    .venv/bin/python studies/bench/probe.py --synthetic
    .venv/bin/python studies/bench/probe.py --embeddings X.npy --labels y.npy
    .venv/bin/python studies/bench/probe.py --model smollm2 --dataset ../shared/data/mr
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from autolayer.probe import probe_layers


def load_arrays(embeddings: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Cached embeddings [N, L+1, D] and labels [N] from two .npy files."""
    return np.load(embeddings), np.load(labels, allow_pickle=False)


def cached(model: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Every layer of ``model`` on the dataset's train split, from autolayer's cache."""
    import autolayer

    data = autolayer.load_dataset(dataset)
    return np.asarray(autolayer.extract(model, data, "train").array), data.split("train").labels


def synthetic(
    n: int = 5000, layers: int = 31, width: int = 576, classes: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Embedding-like data [n, layers, width] float32 and labels [n].

    Features are rotated with a power-law spectrum (strongly correlated, as real embeddings)
    plus an offset; the class signal rises and falls with depth, peaking at 60%, so layers
    range from chance to about 90% accuracy.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(classes, size=n)
    spectrum = 1.0 / np.sqrt(1.0 + np.arange(width))
    rotation = np.linalg.qr(rng.normal(size=(width, width)))[0]
    means = 0.1 * rng.normal(size=(classes, width)) * spectrum
    strength = np.exp(-(((np.linspace(0, 1, layers) - 0.6) / 0.3) ** 2))
    X = np.empty((n, layers, width), dtype=np.float32)
    for layer in range(layers):
        noise = rng.normal(size=(n, width)) * spectrum
        X[:, layer] = (noise + strength[layer] * means[y]) @ rotation + 2.0
    return X, y


def sklearn_layerwise(
    X: np.ndarray, y: np.ndarray, n_folds: int, seed: int
) -> tuple[np.ndarray, int]:
    """Mean CV accuracy per layer [L+1] of StandardScaler + LogisticRegression(max_iter=1000)
    fitted layer by layer, and how many of the fits stopped at max_iter."""
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    accuracy = np.zeros(X.shape[1])
    unconverged = 0
    for train, test in folds.split(np.zeros(len(y)), y):
        for layer in range(X.shape[1]):
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                model.fit(X[train, layer], y[train])
            unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
            accuracy[layer] += model.score(X[test, layer], y[test]) / n_folds
    return accuracy, unconverged


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run both probes on the same folds, print the comparison."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.embeddings is not None and args.labels is None:
        parser.error("--embeddings needs --labels")
    if args.synthetic:
        X, y = synthetic(args.n, args.layers, args.width, args.classes, args.seed)
        source = "synthetic"
    elif args.model:
        X, y = cached(args.model, args.dataset)
        source = f"{args.model} on {args.dataset} (train)"
    else:
        X, y = load_arrays(args.embeddings, args.labels)
        source = str(args.embeddings)
    print(f"data: {source}, X {list(X.shape)} {X.dtype}, {len(np.unique(y))} classes")
    if args.threads:  # the same limit for torch and for sklearn/numpy's BLAS and OpenMP pools
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, CUDA: {torch.cuda.is_available()}")

    start = time.perf_counter()
    scores = probe_layers(X, y, n_folds=args.folds, seed=args.seed)
    ours = time.perf_counter() - start
    print(f"autolayer probe_layers ({scores.n_folds} folds, all layers): {ours:.1f} s")

    start = time.perf_counter()
    reference, unconverged = sklearn_layerwise(X, y, scores.n_folds, args.seed)
    theirs = time.perf_counter() - start
    fits = scores.n_folds * X.shape[1]
    print(
        f"sklearn LogisticRegression(max_iter=1000), layer by layer: {theirs:.1f} s "
        f"({fits} fits, {unconverged} hit max_iter)"
    )

    gap = np.abs(scores.accuracy - reference) * 100
    print(f"speed ratio: {theirs / ours:.1f}x")
    print(f"mean |delta accuracy|: {gap.mean():.2f} points (max {gap.max():.2f})")
    print(f"best layer: autolayer {scores.best_layer}, sklearn {int(np.argmax(reference))}")
    for layer, (mine, ref) in enumerate(zip(scores.accuracy, reference, strict=True)):
        print(f"  layer {layer:2d}  autolayer {mine:.4f}  sklearn {ref:.4f}")


def _parser() -> argparse.ArgumentParser:
    """Command-line options: real .npy inputs or --synthetic with its shape."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", type=Path, help=".npy array [N, L+1, D]")
    source.add_argument("--synthetic", action="store_true", help="generate embedding-like data")
    source.add_argument("--model", help="zoo model whose cached train embeddings to probe")
    parser.add_argument("--dataset", default="../shared/data/mr", help="with --model")
    parser.add_argument("--labels", type=Path, help=".npy labels [N] (with --embeddings)")
    parser.add_argument("--n", type=int, default=5000, help="synthetic rows")
    parser.add_argument("--layers", type=int, default=31, help="synthetic hidden states (L+1)")
    parser.add_argument("--width", type=int, default=576, help="synthetic width D")
    parser.add_argument("--classes", type=int, default=2, help="synthetic classes")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, help="CPU threads for every library (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


if __name__ == "__main__":
    main()

"""Benchmark: batched feature-space CKA of all layer pairs vs a naive per-pair Gram-matrix loop.

The naive loop builds two N×N Gram matrices per pair, so it is timed on a few pairs and
extrapolated to all of them (the output says so); the values of those pairs give the max |Δ|.

    .venv/bin/python studies/bench/cka.py --synthetic
    .venv/bin/python studies/bench/cka.py --embeddings A.npy B.npy
    .venv/bin/python studies/bench/cka.py --models smollm2,mpnet --dataset ../shared/data/mr
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from autolayer.cka import cka_grid


def load_pair(a: Path, b: Path) -> tuple[np.ndarray, np.ndarray]:
    """Two cached embedding arrays [N, La, Da], [N, Lb, Db] of the same texts from .npy files."""
    return np.load(a), np.load(b)


def cached_pair(models: str, dataset: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` train rows of two models, every layer, from autolayer's cache."""
    import autolayer

    data = autolayer.load_dataset(dataset)
    a, b = (autolayer.extract(m, data, "train").array[:n] for m in models.split(","))
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


def synthetic_pair(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two related 'models' [n, 31, 576] and [n, 13, 768] float32 sharing a 32-d latent.

    Deeper layers carry more of the latent, so CKA varies across pairs; an offset of 5 makes
    centring matter, as with decoder activations.
    """
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 32))

    def model(layers: int, width: int) -> np.ndarray:
        out = np.empty((n, layers, width), dtype=np.float32)
        for layer in range(layers):
            share = 2.0 * (layer + 1) / layers
            mix = rng.normal(size=(32, width)) / np.sqrt(32)
            out[:, layer] = share * latent @ mix + rng.normal(size=(n, width)) + 5.0
        return out

    return model(31, 576), model(13, 768)


def naive_cka(X: np.ndarray, Y: np.ndarray, debiased: bool) -> float:
    """CKA of one pair from its N×N Gram matrices in float64 (the textbook formulas)."""
    K = X.astype(np.float64) @ X.T.astype(np.float64)
    L = Y.astype(np.float64) @ Y.T.astype(np.float64)
    hsic = _unbiased_hsic if debiased else _biased_hsic
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def _biased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """tr(KHLH) / (n−1)², with H the centring matrix applied by row and column means."""
    Kc = K - K.mean(0) - K.mean(1)[:, None] + K.mean()
    Lc = L - L.mean(0) - L.mean(1)[:, None] + L.mean()
    return float((Kc * Lc).sum()) / (len(K) - 1) ** 2


def _unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. 2012's unbiased HSIC on Gram matrices with zeroed diagonals."""
    n = len(K)
    K, L = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    k_rows, l_rows = K.sum(1), L.sum(1)
    value = (
        (K * L).sum()
        + k_rows.sum() * l_rows.sum() / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (k_rows @ l_rows)
    )
    return float(value) / (n * (n - 3))


def main(argv: list[str] | None = None) -> None:
    """Time cka_grid (full, minibatch) and the naive loop on sampled pairs; print the gaps."""
    args = _parser().parse_args(argv)
    if args.synthetic:
        A, B = synthetic_pair(args.n, args.seed)
        source = "synthetic"
    elif args.models:
        A, B = cached_pair(args.models, args.dataset, args.n)
        source = f"{args.models.replace(',', ' x ')} on {args.dataset} (first {args.n} train rows)"
    else:
        A, B = load_pair(*args.embeddings)
        source = " x ".join(map(str, args.embeddings))
    pairs = A.shape[1] * B.shape[1]
    print(f"data: {source}, A {list(A.shape)} {A.dtype}, B {list(B.shape)} {B.dtype}")
    if args.threads:  # the same limit for torch and for sklearn/numpy's BLAS and OpenMP pools
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, CUDA: {torch.cuda.is_available()}")

    grids, took = {}, {}
    for debiased in (False, True):
        start = time.perf_counter()
        grids[debiased] = cka_grid(A, B, debiased=debiased)
        took[debiased] = time.perf_counter() - start
        print(f"cka_grid debiased={debiased}: {took[debiased]:.1f} s for all {pairs} pairs")
    start = time.perf_counter()
    batched = cka_grid(A, B, batch_size=args.batch_size)
    gap = np.abs(batched - grids[False]).max()
    print(
        f"cka_grid batch_size={args.batch_size}: {time.perf_counter() - start:.1f} s, "
        f"max |delta| vs full {gap:.1e}"
    )

    rng = np.random.default_rng(args.seed)
    sample = rng.choice(pairs, size=min(args.naive_pairs, pairs), replace=False)
    for debiased in (False, True):
        start = time.perf_counter()
        naive = [naive_cka(A[:, p // B.shape[1]], B[:, p % B.shape[1]], debiased) for p in sample]
        per_pair = (time.perf_counter() - start) / len(sample)
        gap = np.abs(np.array(naive) - grids[debiased].ravel()[sample]).max()
        print(
            f"naive Gram loop debiased={debiased}: {per_pair:.2f} s/pair, timed on "
            f"{len(sample)} of {pairs} pairs, extrapolated {per_pair * pairs:.0f} s for all; "
            f"max |delta| on those pairs {gap:.1e}"
        )
        ratio = per_pair * pairs / took[debiased]
        print(f"  speed ratio (extrapolated naive / cka_grid): {ratio:.0f}x")
    print("biased CKA grid (rows: layers of A, every 5th; columns: layers of B, every 3rd):")
    print(np.array2string(grids[False][::5, ::3], precision=3, suppress_small=True))


def _parser() -> argparse.ArgumentParser:
    """Command-line options: two real .npy arrays or --synthetic."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", type=Path, nargs=2, metavar=("A.npy", "B.npy"))
    source.add_argument("--synthetic", action="store_true", help="generate two related models")
    source.add_argument("--models", help="two zoo models A,B whose cached train rows to compare")
    parser.add_argument("--dataset", default="../shared/data/mr", help="with --models")
    parser.add_argument("--n", type=int, default=5000, help="rows (synthetic or cached)")
    parser.add_argument("--batch-size", type=int, default=1000, help="rows per minibatch run")
    parser.add_argument("--naive-pairs", type=int, default=6, help="pairs timed naively")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, help="CPU threads for every library (default: torch's)"
    )
    return parser


if __name__ == "__main__":
    main()

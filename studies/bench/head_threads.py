"""MLP head training time alone and beside a competing CPU job, with torch threads 1 vs all
(issue 31: a 166k-parameter head took 148 s for ~20 epochs while another job used the other
core). Each setting fits ``make_head("mlp", ...)`` on synthetic features (``val=None``: no
early stopping) with 1 thread and with every thread, alone and beside a single-threaded
matmul loop pinned to the last CPU (started and killed here), the fit's own thread rule
(:func:`autolayer.heads.modules.head_threads`) switched off. It prints seconds per epoch
(a fit stops after the epoch that passes ``--cap`` seconds), the ratio beside / alone, the
thread count the rule picks, and how much of a small trial's epoch goes to scoring a large
validation split; the JSON keeps every number.

    .venv/bin/python studies/bench/head_threads.py

Run it unpinned on an otherwise quiet machine (a few minutes on 2 cores; 12 with a job
already on one core, whose every all-thread fit is then "beside"): a process already on the
CPU is part of "alone" (the JSON keeps the load average at the start).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autolayer.heads import make_head, modules

OUT = Path(__file__).parent / "results" / "head_threads.json"
# (rows, input dims, width, classes, epochs): the 166k head first, then wider heads,
# more rows and several models concatenated
SETTINGS = [
    (3000, (384,), 256, 2, 10),
    (3000, (384,), 1024, 20, 10),
    (3000, (1024,), 256, 20, 10),
    (3000, (1024,), 1024, 2, 5),
    (3000, (384, 1024), 1024, 20, 5),
    (3000, (1024, 2048, 4096), 1024, 20, 2),
    (20000, (384,), 256, 20, 3),
    (20000, (1024,), 1024, 2, 2),
]
# (train rows, validation rows, input dim, width): a small rung's trial on a large split
CADENCE = [(1000, 6000, 384, 256), (1000, 6000, 1024, 1024), (3000, 6000, 384, 256)]
SPIN = (
    "import os, numpy as np\n"
    "os.sched_setaffinity(0, {%d})\n"
    "a = np.random.rand(512, 512)\n"
    "while True:\n"
    "    a = a @ a\n"
    "    a /= np.abs(a).max()\n"
)


@contextmanager
def competitor(core: int) -> Iterator[None]:
    """A single-threaded matmul loop pinned to ``core`` for the duration (another job)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["OPENBLAS_NUM_THREADS"] = "1"
    process = subprocess.Popen([sys.executable, "-c", SPIN % core], env=env)
    time.sleep(1.0)  # past numpy's import: the loop is spinning
    try:
        yield
    finally:
        process.kill()
        process.wait()


def features(rows: int, dims: tuple[int, ...], classes: int, seed: int) -> tuple[list, Any]:
    """Gaussian features ``[rows, D_i]`` with a weak class signal, and their labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    xs = [rng.standard_normal((rows, d), dtype=np.float32) for d in dims]
    for x in xs:
        x[:, :classes] += y[:, None] == np.arange(classes)
    return xs, y


def params(width: int, epochs: int) -> dict[str, Any]:
    return {"width": width, "hidden": 256, "lr": 1e-3, "epochs": epochs}


def capped(cap: float) -> tuple[Callable[[int, float], bool], list[int]]:
    """An ``on_epoch`` that stops a fit after the epoch that passes ``cap`` seconds from
    now, and the list of the epochs it saw."""
    seen, start = [], time.perf_counter()

    def on_epoch(epoch: int, score: float) -> bool:
        seen.append(epoch)
        return time.perf_counter() - start > cap

    return on_epoch, seen


def epoch_seconds(
    setting: tuple, threads: int, data: tuple[list, Any], repeats: int, cap: float
) -> tuple[float, int]:
    """The fastest of ``repeats`` fits' wall seconds per epoch with ``threads`` torch
    threads (each fit stopped after the epoch that passes ``cap`` seconds), and the head's
    learned scalars."""
    width, epochs = setting[2], setting[4]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = float("inf")
        for _ in range(repeats):
            head, (on_epoch, ran) = make_head("mlp", params(width, epochs)), capped(cap)
            start = time.perf_counter()
            fit = head.fit(*data, device="cpu", on_epoch=on_epoch)
            best = min(best, (time.perf_counter() - start) / len(ran))
    finally:
        torch.set_num_threads(previous)
    return best, fit.n_parameters


def threads_table(
    all_threads: int, core: int, args: argparse.Namespace, rule_below: int
) -> list[dict]:
    """Every setting × threads (1, all) × (alone, beside the competitor), and the threads
    the fit's rule gives the head (one below ``rule_below`` parameters)."""
    repeats, cap = args.repeats, args.cap
    out = []
    for setting in SETTINGS:
        data = features(setting[0], setting[1], setting[3], seed=0)
        keys = ("rows", "dims", "width", "classes", "epochs")
        row: dict[str, Any] = dict(zip(keys, setting, strict=True))
        for threads in sorted({1, all_threads}):
            row[f"alone_{threads}"], n = epoch_seconds(setting, threads, data, repeats, cap)
            with competitor(core):
                row[f"beside_{threads}"], _ = epoch_seconds(setting, threads, data, repeats, cap)
        row["n_parameters"], row["rule_threads"] = n, 1 if n < rule_below else all_threads
        out.append(row)
        print_row(row, all_threads)
    return out


def print_row(row: dict[str, Any], all_threads: int) -> None:
    cells = []
    for threads in sorted({1, all_threads}):
        alone, beside = row[f"alone_{threads}"], row[f"beside_{threads}"]
        cells.append(f"{alone:6.3f} {beside:6.3f} {beside / alone:6.2f}x")
    dims = "+".join(map(str, row["dims"]))
    shape = f"{row['rows']:>6} {dims:>14} {row['width']:>5} {row['classes']:>3}"
    print(f"{shape} {row['n_parameters']:>10,} | {' | '.join(cells)} | {row['rule_threads']}")


def timed(method: Callable, spent: list[float]) -> Callable:
    """``method``, adding each call's wall seconds to ``spent[0]``."""

    def wrapper(*args: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args)
        finally:
            spent[0] += time.perf_counter() - start

    return wrapper


def cadence_table() -> list[dict[str, Any]]:
    """Per epoch of a trial's fit (1 thread): seconds in all vs scoring the validation
    split, which the fit does after every epoch."""
    out = []
    torch.set_num_threads(1)
    for n_train, n_val, dim, width in CADENCE:
        x, y = features(n_train + n_val, (dim,), 2, seed=1)
        head, spent, epochs = make_head("mlp", params(width, 10)), [0.0], 10
        head._score = timed(head._score, spent)  # an instance attribute: this fit's calls
        start = time.perf_counter()
        head.fit([x[0][:n_train]], y[:n_train], [x[0][n_train:]], y[n_train:], stop_early=False)
        row = {"train_rows": n_train, "val_rows": n_val, "dim": dim, "width": width}
        row |= {"epoch_seconds": (time.perf_counter() - start) / epochs}
        row["score_seconds"] = spent[0] / epochs
        out.append(row)
        share = row["score_seconds"] / row["epoch_seconds"]
        print(
            f"{n_train:>6} {n_val:>6} {dim:>5} {width:>5} | {row['epoch_seconds']:.3f} s, "
            f"scoring {row['score_seconds']:.3f} s ({share:.0%})"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="fits per cell; the fastest")
    parser.add_argument("--cap", type=float, default=15.0, help="seconds; then the fit stops")
    parser.add_argument("--json", type=Path, default=OUT)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as they are measured
    all_threads, core = torch.get_num_threads(), max(os.sched_getaffinity(0))
    load = os.getloadavg()
    print(f"torch threads {all_threads}, competitor on CPU {core}, load average {load[0]:.2f}")
    rule_below, modules.ONE_THREAD_BELOW = modules.ONE_THREAD_BELOW, 0  # the rule off
    epoch_seconds(SETTINGS[0], 1, features(*SETTINGS[0][:2], 2, seed=0), 1, args.cap)  # warm up
    print("seconds per epoch:      1 thread alone, beside, ratio | all threads | rule's threads")
    print("  rows           dims width cls     params |")
    table = threads_table(all_threads, core, args, rule_below)
    print("train    val   dim width | one epoch of a trial's fit (1 thread, alone)")
    cadence = cadence_table()
    result = {
        "torch_threads": all_threads,
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
        "competitor_cpu": core,
        "rule_one_thread_below": rule_below,
        "seconds_per_epoch": table,
        "cadence": cadence,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

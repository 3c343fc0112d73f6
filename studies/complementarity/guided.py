"""Guided vs unguided search: trials needed to come within 0.3 pt of brute force (issue 13).

For one benchmark set, the candidates are prepared once from the exhaustive arm's cache of
``studies/bench/fidelity.py`` (same validation split as its brute force), then the search
runs ``--n-trials`` trials per seed twice: unguided (TPE from its own random start) and
guided (the best model alone and the pairs with the largest predicted gain enqueued first,
as ``recommend`` does). The seed changes the sampler and the heads' initialisation, not the
split. A run's curve is the best validation accuracy after each trained trial; "trials to
target" is the first trial whose best is within 0.3 pt of brute force's best (censored at
``--n-trials`` when never). With ``--stop-at-target`` a run ends at that trial, which is
all "trials to target" needs (its curve is then cut there). Resumes: finished runs are kept
in the JSON. Two processes may
share the JSON, one per arm (``--arms guided`` beside ``--arms unguided``, each on its own
core): each run is merged into it under a lock.

    .venv/bin/python studies/complementarity/guided.py --set mr --work-dir /work/fidelity-work \
        --out studies/results/complementarity
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import tempfile
from pathlib import Path

import numpy as np
import optuna

import autolayer
from autolayer import pipeline
from autolayer.budgets import Budget
from autolayer.options import Options
from autolayer.search import counts

ROOT = Path(__file__).resolve().parents[2]
SETS = {  # as studies/bench/fidelity-all.sh ran them
    "sst2": {"max_train_samples": 20000, "max_length": 256},
    "mr": {"max_length": 256},
    "r8": {"max_length": 128},
    "r52": {"max_length": 128},
}
MODELS = ("minilm", "mpnet", "smollm2", "gemma3")
MARGIN = 0.003


def curve(study: optuna.Study) -> list[float]:
    """Best validation accuracy after each trained trial (pruned ones count, as in the budget)."""
    best, out = -np.inf, []
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for trial in sorted(study.get_trials(states=done), key=lambda t: t.number):
        if not counts(trial.user_attrs):
            continue
        if trial.state == optuna.trial.TrialState.COMPLETE:
            best = max(best, trial.value)
        out.append(float(best))
    return out


def trials_to(values: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(values) if v >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", required=True, choices=list(SETS))
    parser.add_argument("--work-dir", type=Path, required=True, help="fidelity-all.sh's WORK")
    parser.add_argument("--results", type=Path, default=ROOT / "studies/bench/results")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n-trials", type=int, default=40)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arms", default="unguided,guided", help="the arms this process runs")
    parser.add_argument(
        "--stop-at-target", action="store_true", help="end a run at its first trial on target"
    )
    args = parser.parse_args()
    arms = [{"unguided": False, "guided": True}[a] for a in args.arms.split(",")]
    bench = json.loads((args.results / f"fidelity-{args.set}.json").read_text())
    target = bench["brute_force"]["val_accuracy"] - MARGIN
    settings = SETS[args.set]
    data = autolayer.load_dataset(ROOT.parent / "shared" / "data" / args.set)
    if "max_train_samples" in settings:
        data = data.subsample(settings["max_train_samples"], seed=0)
    options = Options(
        max_length=settings["max_length"],
        cache_dir=args.work_dir / args.set / "exhaustive" / "cache",
    )
    prepared = pipeline.prepare(data, list(MODELS), options=options)
    path = args.out / f"guided-{args.set}.json"
    for seed in range(args.seeds):
        for guide in arms:
            key = f"{'guided' if guide else 'unguided'}-{seed}"
            if key in merged(path):
                continue
            seeded = dataclasses.replace(prepared, options=dataclasses.replace(options, seed=seed))
            stop = [_stop_at(target)] if args.stop_at_target else []
            with tempfile.TemporaryDirectory() as tmp:
                result = pipeline.search(
                    seeded,
                    output_dir=tmp,
                    budget=Budget(n_trials=args.n_trials),
                    guide=guide,
                    callbacks=stop,
                )
                study = optuna.load_study(study_name=result.study_name, storage=result.storage)
                values = curve(study)
            merged(path, {key: values})
            print(key, trials_to(values, target), f"best {100 * values[-1]:.2f}", flush=True)
    runs = merged(path)
    if any(f"{kind}-{s}" not in runs for kind in ("unguided", "guided") for s in range(args.seeds)):
        return  # the other arm's process summarises
    summary = {
        kind: [trials_to(runs[f"{kind}-{s}"], target) for s in range(args.seeds)]
        for kind in ("unguided", "guided")
    }
    print(f"target {100 * target:.2f} (brute force best − {100 * MARGIN:.1f} pt): {summary}")
    plot(runs, target, args.set, args.n_trials, args.out / f"guided-{args.set}.png")


def _stop_at(target: float):
    """An Optuna callback that stops the study at its first completed trial on target."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE and trial.value >= target:
            study.stop()

    return callback


def merged(path: Path, new: dict | None = None) -> dict:
    """The runs in ``path``, with ``new`` merged in and written (under a lock, so one process
    per arm can share the file without losing the other's runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / f"{path.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = json.loads(path.read_text()) if path.exists() else {}
        if new:
            runs.update(new)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(runs, indent=1))
            tmp.replace(path)
        return runs


def plot(runs: dict, target: float, name: str, n_trials: int, path: Path) -> None:
    """Left: each seed's best-so-far curve per arm (cut where a run stopped at the target).
    Right: the share of seeds on target after each number of trials, the comparison the
    issue's target is about."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    trials = np.arange(1, n_trials + 1)
    for kind, colour in (("unguided", "tab:blue"), ("guided", "tab:orange")):
        curves = [v for k, v in runs.items() if k.startswith(f"{kind}-")]
        for i, c in enumerate(curves):
            label = kind if i == 0 else None
            pct = 100 * np.asarray(c)
            left.plot(np.arange(1, len(c) + 1), pct, color=colour, alpha=0.5, lw=1, label=label)
        reached = [trials_to(c, target) or np.inf for c in curves]
        share = [np.mean([r <= n for r in reached]) for n in trials]
        right.step(trials, share, where="post", color=colour, lw=2, label=kind)
    left.axhline(100 * target, color="k", ls="--", lw=1, label="brute force best − 0.3 pt")
    left.set(xlabel="trials trained", ylabel="best validation accuracy %", title=name)
    right.set(xlabel="trials trained", ylabel="share of seeds on target", ylim=(-0.05, 1.05))
    right.set_title(f"{name}: within 0.3 pt of brute force")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

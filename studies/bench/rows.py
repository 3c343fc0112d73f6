"""Benchmark: the data-fidelity search (issue 31) against the all-rows search, in one run.

For one benchmark set, from the whole-split cache ``baselines.py`` reads (``W/<set>/cache``,
filled by ``warm_cache.py``: the recommend arms' CPU is then the screen's probes, TF-IDF and
the search, not forward passes), two ``recommend`` runs of the same pool (the four zoo
models + ``tfidf``, 30 trials, the default space) one after the other in this process, each
applied on the whole test split:

- ``all_rows``: ``Fidelity(rungs=None)``: every trial's head on every search-train row (the
  multi-fidelity recommend before issue 31);
- ``rungs``: ``Fidelity()``: trials climb rungs of rows (1,000, ×3 per rung, up to all),
  promoted by Optuna's successive halving.

Each arm records its stages' CPU (``time.process_time``: all threads), the chosen
configuration, validation and test accuracy, and the rungs (rows, trials, CPU seconds).
The printed ratios are the search stage's CPU (target ≤ 20 %) and the whole recommend's;
accuracy differences in points. Arms already in the JSON are kept (a run resumes).

    taskset -c 0 .venv/bin/python studies/bench/rows.py --set mr
    (JSON: studies/bench/results/rows-<set>.json)
    .venv/bin/python studies/bench/rows.py --table   # RESULTS.md's table
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from baselines import (
    MODELS,
    RESULTS,
    SETS,
    load_data,
    new_space,
    read_results,
    recommend_arm,
    run_settings,
    timed,
)

from autolayer.fidelity import Fidelity
from autolayer.options import Options

ARMS = {"all_rows": Fidelity(rungs=None), "rungs": Fidelity()}


def run(args: argparse.Namespace) -> None:
    """Run the arms missing from the JSON, writing it after each."""
    data = load_data(args.set, args)
    work = args.work_dir / args.set
    options = Options(max_length=SETS[args.set]["max_length"], cache_dir=work / "cache")
    settings = run_settings(args, options)
    path = args.json or RESULTS / f"rows-{args.set}.json"
    results = read_results(path, settings)
    results.update(dataset=args.set, n_train=len(data.split("train")), settings=settings)
    for name, fidelity in ARMS.items():
        if name in results:
            continue
        root = work / "rows" / name
        results[name] = timed(
            lambda root=root, fidelity=fidelity: recommend_arm(
                data, args.models, options, new_space(options), args.n_trials, root, fidelity
            )
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        print(name, json.dumps(results[name])[:300], flush=True)
    if all(name in results for name in ARMS):
        print(table([path]))


def _search_cpu(arm: dict) -> float:
    return next(s["cpu_seconds"] for s in arm["stages"] if s["name"] == "search")


def table(paths: list[Path]) -> str:
    """One row per set: search and recommend CPU of both arms, their ratio, accuracies."""
    lines = [
        "| set | search CPU s: all rows → rungs | ratio | recommend CPU s: all rows → rungs "
        "| ratio | val acc. % | test acc. % | chosen (rungs) |",
        "|---" * 8 + "|",
    ]
    for path in paths:
        r = json.loads(path.read_text())
        if not all(name in r for name in ARMS):
            continue
        a, b = r["all_rows"], r["rungs"]
        sa, sb = _search_cpu(a), _search_cpu(b)
        ra, rb = a["recommend_cpu_seconds"], b["recommend_cpu_seconds"]
        chosen = " + ".join(m if m == "tfidf" else f"{m} L{n}" for m, n in b["config"]["models"])
        lines.append(
            f"| {r['dataset']} | {sa:,.0f} → {sb:,.0f} | {sb / sa:.0%} | {ra:,.0f} → {rb:,.0f} "
            f"| {rb / ra:.0%} | {100 * a['val_accuracy']:.2f} → {100 * b['val_accuracy']:.2f} "
            f"| {100 * a['test_accuracy']:.2f} → {100 * b['test_accuracy']:.2f} "
            f"| {chosen} ({b['config']['head']}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS))
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    parser.add_argument("--work-dir", type=Path, default=Path("/work/bench-work"))
    parser.add_argument("--json", type=Path, help="default: results/rows-<set>.json")
    parser.add_argument("--n-trials", type=int, default=30)
    parser.add_argument("--models", type=lambda s: s.split(","), default=MODELS)
    parser.add_argument("--max-train-samples", type=int, help="smoke runs only")
    parser.add_argument("--max-test-samples", type=int, help="smoke runs only")
    args = parser.parse_args()
    if args.table:
        print(table(sorted(RESULTS.glob("rows-*.json"))))
        return
    if args.set is None:
        parser.error("--set is required unless --table")
    run(args)


if __name__ == "__main__":
    main()

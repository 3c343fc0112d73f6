"""Benchmark: multi-fidelity recommend vs exhaustive recommend vs brute force (issue 12).

One data set per run, every arm from a cold cache of its own (so each pays for its own
forward passes), all in one process one after the other, never beside another heavy job:

- **exhaustive**: ``recommend(fidelity=None)``: every layer of every model on every row;
- **multi-fidelity**: ``recommend()`` as shipped (screen, select, complete, search);
- **brute force**: every layer of every model on every row — the exhaustive arm's features,
  read from its cache, with that arm's measured extraction and probe CPU seconds added —
  then every pair × top-2 layers × 7 operators trained with the search's head protocol at
  one width and learning rate; the best on validation wins.

Compute is CPU seconds of this process (all threads: ``time.process_time``), forward passes
included; each arm's recommended configuration is applied (trained on train + validation)
and scored on the full test split. Arms already in the JSON are not re-run, so a long run
resumes where it stopped.

    .venv/bin/python studies/bench/fidelity.py --dataset ../shared/data/mr \
        --models minilm,mpnet,smollm2,gemma3 --json studies/bench/results/fidelity-mr.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import autolayer
from autolayer import pipeline
from autolayer.budgets import Budget
from autolayer.fidelity import Fidelity
from autolayer.fusion import OPERATORS
from autolayer.heads import make_head
from autolayer.options import Options
from autolayer.search import Space

WIDTH, LR = 256, 1e-3  # brute force's fixed head (the search also tunes these)


def recommend_arm(
    data, models, fidelity, options, n_trials, root: Path, apply=True, cache_dir=None
) -> dict:
    """CPU and wall seconds of one recommend run from a cold cache (or ``cache_dir``'s),
    and (``apply``) the test accuracy of its configuration."""
    options = Options(**{**options.results(), "cache_dir": cache_dir or root / "cache"})
    start, wall = time.process_time(), time.perf_counter()
    rec = pipeline.recommend(
        data,
        models,
        options=options,
        output_dir=root / "out",
        budget=Budget(n_trials=n_trials),
        fidelity=fidelity,
    )
    cpu, wall = time.process_time() - start, time.perf_counter() - wall
    out = {
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "stages": [s.__dict__ for s in rec.stages],
        "dropped": rec.dropped,
        "config": {
            "models": [[m.spec, m.layer] for m in rec.config.models],
            "operator": rec.config.head.params.get("operator"),
        },
        "val_accuracy": rec.config.validation.get(rec.config.metric),
    }
    if apply:
        applied = autolayer.apply(rec.config, data, root / "model", cache_dir=options.cache_dir)
        out["test_accuracy"] = applied.accuracy
    return out


def brute_force_arm(data, models, options, exhaustive: dict, root: Path) -> dict:
    """Every pair × top-2 layers × every operator on full extraction; best by validation.

    The features are the exhaustive arm's (``root``), whose extraction and probe CPU
    seconds are added: brute force needs exactly that extraction, and repeating it would
    only re-measure it. Each model's top-2 layers alone (one source, same head) are trained
    too, outside brute force's compute, and each pair's best configuration and each model's
    best layer are scored on test: the measured fusion gain per pair (issue 13).
    """
    options = Options(**{**options.results(), "cache_dir": root / "cache"})
    forward = sum(
        s["cpu_seconds"] for s in exhaustive["stages"] if s["name"] in ("extract", "probe")
    )
    prepared = pipeline.prepare(data, models, options=options, top_k=2)
    space = Space()

    def fit_params(operator):
        return {
            "operator": operator,
            "width": WIDTH,
            "hidden": space.hidden,
            "dropout": space.dropout,
            "lr": LR,
            "epochs": space.max_epochs,
            "patience": space.patience,
        }

    def fit(members, operator):
        """A head trained on the train rows, early-stopped on validation: (head, its fit)."""
        head = make_head("mlp", fit_params(operator))
        result = head.fit(
            [c.features(layer, "train") for c, layer in members],
            prepared.y_train,
            [c.features(layer, "val") for c, layer in members],
            prepared.y_val,
            seed=options.seed,
        )
        return head, result

    start = time.process_time()
    pairs = {}
    for a, b in itertools.combinations(prepared.candidates, 2):
        runs = [
            (fit([(a, la), (b, lb)], operator), [[a.name, la], [b.name, lb]], operator)
            for la, lb, operator in itertools.product(a.layers, b.layers, OPERATORS)
        ]
        pairs[(a.name, b.name)] = max(runs, key=lambda r: r[0][1].best_val_metric), runs
    cpu = forward + time.process_time() - start
    singles = {
        c.name: max(
            ((fit([(c, layer)], "concat"), [[c.name, layer]], None) for layer in c.layers),
            key=lambda r: r[0][1].best_val_metric,
        )
        for c in prepared.candidates
    }
    test = _test_features(data, prepared.candidates, options)

    def record(best) -> dict:
        (head, result), members, operator = best
        features = [test[name][layer] for name, layer in members]
        predicted = head.predict_proba(features).argmax(1)
        return {
            "models": members,
            "operator": operator,
            "val_accuracy": result.best_val_metric,
            "test_accuracy": float((predicted == data.split("test").labels).mean()),
        }

    def applied(best) -> float:
        """Test accuracy of a configuration retrained as ``apply`` does: train +
        validation rows, exactly best epoch + 1 epochs, no early stopping."""
        (_, result), members, operator = best
        params = {**fit_params(operator or "concat"), "epochs": result.best_epoch + 1}
        both = [
            _stack(c.features(layer, "train"), c.features(layer, "val"))
            for c, layer in ((by_name[m], layer) for m, layer in members)
        ]
        y = np.concatenate([prepared.y_train, prepared.y_val])
        final = make_head("mlp", params)
        final.fit(both, y, seed=options.seed)
        features = [test[name][layer] for name, layer in members]
        predicted = final.predict_proba(features).argmax(1)
        return float((predicted == data.split("test").labels).mean())

    by_name = {c.name: c for c in prepared.candidates}
    single = {name: record(best) for name, best in singles.items()}
    pair = [
        {
            **record(best),
            "pair": list(names),
            "runs": [[m, op, r.best_val_metric] for (_, r), m, op in runs],
        }
        for names, (best, runs) in pairs.items()
    ]
    winner = max(pair, key=lambda p: p["val_accuracy"])
    best_pair = pairs[tuple(winner["pair"])][0]
    return {
        "cpu_seconds": cpu,
        "extraction_and_probe_cpu_seconds": forward,
        "configurations": sum(len(p["runs"]) for p in pair),
        "config": {"models": winner["models"], "operator": winner["operator"]},
        "val_accuracy": winner["val_accuracy"],
        "test_accuracy": applied(best_pair),  # retrained like apply, as the recommendations are
        "test_accuracy_as_trained": winner["test_accuracy"],
        "pairs": pair,
        "singles": single,
        "note": "test_accuracy: the winner retrained on train + validation like apply; "
        "pairs and singles: heads as trained on train (early stopping on validation)",
    }


def _stack(train, val):
    """Train rows then validation rows (dense or sparse)."""
    from scipy.sparse import issparse, vstack

    return vstack([train, val], format="csr") if issparse(train) else np.concatenate([train, val])


def _test_features(data, candidates, options) -> dict[str, dict[int, np.ndarray]]:
    """Test embeddings of every candidate's kept layers (backbone cut at the deepest)."""
    out = {}
    for c in candidates:
        emb = pipeline.embed(c.name, data, "test", options, layers=sorted(c.layers))
        out[c.name] = {layer: np.asarray(emb.layer(layer)) for layer in c.layers}
    return out


def _commit() -> str:
    """The code an arm ran (arms of one set may run in different processes and sessions)."""
    here = Path(__file__).parent
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--n-trials", type=int, default=30)
    parser.add_argument("--screen-size", type=int, default=2000)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, help="caches of the arms (default: a temp dir)")
    parser.add_argument(
        "--arms", default="exhaustive,multi_fidelity,brute_force", help="which arms to run"
    )
    parser.add_argument("--rerun", action="store_true", help="re-run arms already in the JSON")
    args = parser.parse_args()
    data = autolayer.load_dataset(args.dataset)
    if args.max_train_samples:
        data = data.subsample(args.max_train_samples, seed=0)
    models = args.models.split(",")
    options = Options(max_length=args.max_length)
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    results.update(dataset=data.name, n_train=len(data.split("train")), models=models)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="fidelity-"))
    arms = {
        "exhaustive": lambda root: recommend_arm(data, models, None, options, args.n_trials, root),
        "multi_fidelity": lambda root: recommend_arm(
            data, models, Fidelity(screen_size=args.screen_size), options, args.n_trials, root
        ),
        "brute_force": lambda _root: brute_force_arm(
            data, models, options, results["exhaustive"], work / "exhaustive"
        ),
    }
    for name in args.arms.split(","):
        if name in results and not args.rerun:
            continue
        if name != "brute_force":
            shutil.rmtree(work / name, ignore_errors=True)  # the bench's own cache: cold start
        results[name] = {**arms[name](work / name), "commit": _commit()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(name, json.dumps({k: results[name][k] for k in ("cpu_seconds", "test_accuracy")}))
    if not all(k in results for k in arms):
        return
    mf, ex, bf = (results[k] for k in ("multi_fidelity", "exhaustive", "brute_force"))
    print(
        f"{data.name}: multi-fidelity {mf['cpu_seconds']:.0f} CPU s = "
        f"{100 * mf['cpu_seconds'] / ex['cpu_seconds']:.0f} % of exhaustive recommend "
        f"(target ≤ 40 %), {100 * mf['cpu_seconds'] / bf['cpu_seconds']:.0f} % of brute force "
        f"(target ≤ 25 %); test accuracy {100 * mf['test_accuracy']:.2f} % vs brute force "
        f"{100 * bf['test_accuracy']:.2f} % "
        f"({100 * (mf['test_accuracy'] - bf['test_accuracy']):+.2f} pt, target ≥ −0.5)"
    )


if __name__ == "__main__":
    main()

"""Benchmark: is ``recommend`` ever below the simple baselines? (issue 29)

For one benchmark set (full training split; SST-2: 20,000 sentences), every arm scored on
the full test split:

- ``tfidf_svm``: word 1–2-gram TF-IDF (sublinear tf) + ``LinearSVC``, C tuned by 5-fold
  CV over (0.01, 0.1, 1, 10) on the whole training split, and the untuned C = 1 figure;
- ``layers``: per zoo model its best layer (by probe on the search-train rows) and its
  last layer, each + standardised logistic regression fitted on the whole training split;
- ``new``: the multi-fidelity ``recommend`` (30 trials) in today's default space (heads
  mlp, linear, late; the baselines as guaranteed trials) over the four zoo models +
  ``tfidf``, applied on test: the chosen configuration, its validation score, latency and
  cost, the CPU of each stage, the one-standard-error reason and every baseline trial;
- ``old_space``: the same in the space before issue 29 (the MLP head only, no baseline
  trials), for the search's CPU with and without the new candidates.

Every arm reads the zoo models' rows from one whole-split cache, ``W/<set>/cache`` (``W``:
``--work-dir``, default /work/bench-work; filled beforehand, every layer of train and test,
by ``studies/bench/warm_cache.py``: run after it is complete), so the recommend
arms' CPU seconds are the search's, TF-IDF's and the probes', not forward passes. Each arm
records its CPU (``time.process_time``) and wall seconds. Arms already in the JSON are
kept, so a run resumes (an interrupted recommend arm starts over in a clean folder). The
table's better baseline is the higher of TF-IDF + SVM (tuned) and the best of every
model's best- and last-layer logistic regression.

    taskset -c 0 .venv/bin/python studies/bench/baselines.py --set r8
    (and --set r52, 20ng, mr, sst2; JSON: studies/bench/results/baselines-<set>.json)
    .venv/bin/python studies/bench/baselines.py --table   # RESULTS.md's table

A cheap smoke run (never into studies/bench/results):

    taskset -c 0 .venv/bin/python studies/bench/baselines.py --set mr --models minilm,tfidf \\
        --max-train-samples 600 --max-test-samples 600 --n-trials 4 \\
        --work-dir /tmp/h4-work --json /tmp/h4-work/baselines-mr.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import autolayer
from autolayer import pipeline, selection
from autolayer.budgets import Budget
from autolayer.fidelity import Fidelity
from autolayer.options import Options
from autolayer.probe import probe_layers
from autolayer.rungs import climbed
from autolayer.space import Space

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "studies" / "bench" / "results"
SETS = {  # as lexical.py and fidelity-all.sh ran them; 20ng new
    "mr": {"max_length": 256},
    "sst2": {"max_train_samples": 20000, "max_length": 256},
    "r8": {"max_length": 128},
    "r52": {"max_length": 128},
    "20ng": {"max_length": 128},
}
MODELS = ["minilm", "mpnet", "smollm2", "gemma3", "tfidf"]
SVM_CS = (0.01, 0.1, 1.0, 10.0)
MARGIN_SETS = {"r8", "r52", "20ng"}  # the target there: ≥ +0.3 pt over the better baseline
MARGIN_PT = 0.3
ARMS = ("tfidf_svm", "layers", "new", "old_space")


def tfidf_svm(data) -> dict:
    """Word 1–2-gram TF-IDF + linear SVM, C tuned by 5-fold CV on the whole training split
    (the vectoriser refitted in every fold), and the studies' untuned C = 1."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    train, test = data.split("train"), data.split("test")
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LinearSVC())
    grid = GridSearchCV(model, {"linearsvc__C": list(SVM_CS)}, cv=5, scoring="accuracy")
    grid.fit(list(train.texts), train.labels)
    cv = grid.cv_results_["mean_test_score"]
    untuned = model.set_params(linearsvc__C=1.0).fit(list(train.texts), train.labels)
    return {
        "test_accuracy": _accuracy(grid.predict(list(test.texts)), test.labels),
        "C": grid.best_params_["linearsvc__C"],
        "cv_accuracy": dict(zip(map(str, SVM_CS), cv.tolist(), strict=True)),
        "untuned_test_accuracy": _accuracy(untuned.predict(list(test.texts)), test.labels),
    }


def layer_baselines(data, models: list[str], options: Options) -> dict:
    """Per zoo model, its best layer by probe on the search-train rows (as the search sees
    them) and its last layer, each + logistic regression fitted on the whole training
    split: the baseline a user would try first with a sentence encoder."""
    train_rows, _ = data.train_validation(size=options.validation_size, seed=options.seed)
    y = data.split("train").labels
    out, fitted = {}, {}
    for model in (m for m in models if m != "tfidf"):
        full = pipeline.embed(model, data, "train", options)  # the shared whole-split cache
        scores = probe_layers(
            np.asarray(full.array[train_rows]), y[train_rows], seed=options.seed, max_examples=4000
        )
        for kind, layer in (("best", int(scores.best_layer)), ("last", full.array.shape[1] - 1)):
            if (model, layer) not in fitted:  # the best layer is often the last
                fitted[model, layer] = _layer_lr(model, data, options, full.layer(layer), layer)
            out[f"{model}:{kind}"] = {"layer": layer, "test_accuracy": fitted[model, layer]}
    return {"by_model": out}


def _layer_lr(model: str, data, options: Options, train: np.ndarray, layer: int) -> float:
    """Test accuracy of standardised logistic regression on one layer."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    test = pipeline.embed(model, data, "test", options, layers=[layer])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(train, data.split("train").labels)
    return _accuracy(clf.predict(test.layer(layer)), data.split("test").labels)


def _accuracy(predicted, truth) -> float:
    return float((np.asarray(predicted) == np.asarray(truth)).mean())


def new_space(options: Options) -> Space:
    """Today's default space."""
    return pipeline.default_space(options)


def old_space(options: Options) -> Space:
    """The space before issue 29: the MLP head only, no baseline trials."""
    return Space(heads=("mlp",), baselines=False)


def recommend_arm(
    data,
    models,
    options: Options,
    space: Space,
    n_trials: int,
    root: Path,
    fidelity: Fidelity = Fidelity(),  # noqa: B008 - frozen
) -> dict:
    """One multi-fidelity recommend in ``space`` from the shared cache, applied on test,
    in a clean folder ``root`` (a half-finished study of an interrupted run would resume
    and hide part of the search's CPU); ``fidelity`` as ``recommend`` takes it."""
    shutil.rmtree(root, ignore_errors=True)
    start, wall = time.process_time(), time.perf_counter()
    rec = pipeline.recommend(
        data,
        models,
        options=options,
        output_dir=root / "out",
        budget=Budget(n_trials=n_trials),
        space=space,
        fidelity=fidelity,
    )
    cpu, wall = time.process_time() - start, time.perf_counter() - wall
    applied = autolayer.apply(rec.config, data, root / "model", cache_dir=options.cache_dir)
    baselines = [t for t in rec.search.trials if t.attrs.get(selection.BASELINE)]
    chosen = rec.search.best
    return {
        "recommend_cpu_seconds": cpu,
        "recommend_wall_seconds": wall,
        "space": dataclasses.asdict(space),
        "stages": [dataclasses.asdict(s) for s in rec.stages],
        "dropped": rec.dropped,
        "config": {
            "models": [[m.spec, m.layer] for m in rec.config.models],
            "head": rec.config.head.kind,
            "params": rec.config.head.params,
        },
        "cost": rec.config.cost,  # latency_ms, memory_mb (per text), params, fused_dim
        "val_accuracy": rec.config.validation.get(rec.config.metric),
        "test_accuracy": applied.accuracy,
        "late_chosen": rec.config.head.kind == "late",
        "baseline_chosen": next((_label(t) for t in baselines if _same(t, chosen)), None),
        "why": rec.search.why,  # the one-standard-error (or anchor) rule's reason, if any
        "reasons": list(rec.reasons),
        "baselines": [_trial(t) for t in baselines],
        "trained": rec.search.trained,
        "trials": [_trial(t) for t in rec.search.trials],
        "rungs": [
            dataclasses.asdict(r)
            for r in climbed(
                t.attrs[selection.RUNGS] for t in rec.search.trials if selection.RUNGS in t.attrs
            )
        ],
    }


def _same(a, b) -> bool:
    """Two trials of one configuration (a repeat of a baseline is that baseline)."""
    return (a.models, a.layers, a.head) == (b.models, b.layers, b.head)


def _label(trial) -> str:
    return _names(zip(trial.models, trial.layers, strict=True))


def _names(pairs) -> str:
    """``mpnet L11 + tfidf`` (TF-IDF has one state: no layer)."""
    return " + ".join(m if m == "tfidf" else f"{m} L{n}" for m, n in pairs)


def _trial(t) -> dict:
    """A compact record of one trial, enough to tell after the run what the search saw."""
    return {
        "number": t.number,
        "state": t.state,
        "models": _label(t),
        "head": t.head,
        "val_accuracy": t.value,
        "latency_ms": t.attrs.get("latency_ms"),
        "baseline": bool(t.attrs.get(selection.BASELINE)),
        "repeat_of": t.attrs.get(selection.REPEAT),
    }


def timed(arm: Callable[[], dict]) -> dict:
    """An arm's result with its CPU (this process, all threads) and wall seconds."""
    start, wall = time.process_time(), time.perf_counter()
    out = arm()
    cpu, wall = time.process_time() - start, time.perf_counter() - wall
    return {**out, "cpu_seconds": cpu, "wall_seconds": wall}


def load_data(name: str, args: argparse.Namespace):
    """The set as the cache was filled (SST-2's 20,000-sentence sample), then the smoke
    run's caps, if any."""
    data = autolayer.load_dataset(ROOT.parent / "shared" / "data" / name)
    for size, split in (
        (SETS[name].get("max_train_samples"), "train"),
        (args.max_train_samples, "train"),
        (args.max_test_samples, "test"),
    ):
        if size:
            data = data.subsample(size, split=split, seed=0)
    return data


def run_settings(args: argparse.Namespace, options: Options) -> dict:
    """What a run's JSON was made with: a resumed run must match it."""
    return {
        "models": args.models,
        "n_trials": args.n_trials,
        "max_length": options.max_length,
        "max_train_samples": SETS[args.set].get("max_train_samples"),
        "smoke_train_samples": args.max_train_samples,
        "max_test_samples": args.max_test_samples,
    }


def read_results(path: Path, settings: dict) -> dict:
    """The arms already in ``path`` (none if it does not exist), refused when they were run
    with other settings."""
    results = json.loads(path.read_text()) if path.exists() else {}
    if results.get("settings", settings) != settings:
        raise SystemExit(f"{path} was run with other settings: {results['settings']}")
    return results


def run(args: argparse.Namespace) -> None:
    """Run the arms missing from the JSON, writing it after each."""
    data = load_data(args.set, args)
    work = args.work_dir / args.set
    options = Options(max_length=SETS[args.set]["max_length"], cache_dir=work / "cache")
    settings = run_settings(args, options)
    path = args.json or RESULTS / f"baselines-{args.set}.json"
    results = read_results(path, settings)
    results.update(
        dataset=args.set,
        n_train=len(data.split("train")),
        n_test=len(data.split("test")),
        settings=settings,
    )

    def searched(space_of: Callable[[Options], Space], arm: str) -> Callable[[], dict]:
        root = work / "baselines" / arm
        return lambda: recommend_arm(
            data, args.models, options, space_of(options), args.n_trials, root
        )

    arms = {
        "tfidf_svm": lambda: tfidf_svm(data),
        "layers": lambda: layer_baselines(data, args.models, options),
        "new": searched(new_space, "new"),
        "old_space": searched(old_space, "old_space"),
    }
    for name in args.arms:
        if name in results:
            continue
        results[name] = timed(arms[name])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        print(name, json.dumps(results[name])[:400], flush=True)


def table(folder: Path) -> str:
    """RESULTS.md's table over every complete ``baselines-<set>.json`` in ``folder``."""
    lines = [
        "| set | TF-IDF + SVM (tuned) | best layer + LR | recommend (new space) | old space "
        "| margin over the better baseline | target met? | late chosen? | search CPU new / old |",
        "|---" * 9 + "|",
    ]
    for name in SETS:
        path = folder / f"baselines-{name}.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        if all(k in results for k in ARMS):
            lines.append(row(name, results))
    return "\n".join(lines)


def row(name: str, r: dict) -> str:
    """One set's line: accuracies in %, margins in points."""
    svm, new, old = r["tfidf_svm"]["test_accuracy"], r["new"], r["old_space"]
    which, layer = max(r["layers"]["by_model"].items(), key=lambda kv: kv[1]["test_accuracy"])
    lr = layer["test_accuracy"]
    better, against = max((svm, "TF-IDF + SVM"), (lr, which.split(":")[0]))
    margin = 100 * (new["test_accuracy"] - better)
    met = margin >= (MARGIN_PT if name in MARGIN_SETS else 0) and (
        name in MARGIN_SETS or new["test_accuracy"] >= old["test_accuracy"]
    )
    late = f"yes, {new['cost'].get('latency_ms', float('nan')):.2f} ms/text"
    search = [_stage(a, "search") for a in (new, old)]
    return (
        f"| {name} | {100 * svm:.2f} % (C = {r['tfidf_svm']['C']:g}) "
        f"| {100 * lr:.2f} % ({which.split(':')[0]} L{layer['layer']}, {which.split(':')[1]}) "
        f"| {_chosen(new)} | {_chosen(old)} | {margin:+.2f} pt over {against} "
        f"| {'yes' if met else 'no'} | {late if new['late_chosen'] else 'no'} "
        f"| {search[0]:,.0f} / {search[1]:,.0f} s ({100 * (search[0] / search[1] - 1):+.0f} %) |"
    )


def _chosen(arm: dict) -> str:
    models = _names(arm["config"]["models"])
    head = arm["config"]["head"]
    operator = arm["config"]["params"].get("operator")
    head = f"{head}, {operator}" if operator and len(arm["config"]["models"]) > 1 else head
    baseline = " = baseline" if arm.get("baseline_chosen") else ""
    return f"{100 * arm['test_accuracy']:.2f} % ({models}; {head}{baseline})"


def _stage(arm: dict, name: str) -> float:
    return sum(s["cpu_seconds"] for s in arm["stages"] if s["name"] == name)


def arm_names(text: str) -> list[str]:
    names = text.split(",")
    if not set(names) <= set(ARMS):
        raise argparse.ArgumentTypeError(f"arms are some of {','.join(ARMS)}; got {text!r}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=list(SETS))
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    parser.add_argument("--work-dir", type=Path, default=Path("/work/bench-work"))
    parser.add_argument("--json", type=Path, help="default: results/baselines-<set>.json")
    parser.add_argument("--results", type=Path, default=RESULTS, help="--table's folder")
    parser.add_argument("--n-trials", type=int, default=30)
    parser.add_argument("--models", type=lambda s: s.split(","), default=MODELS)
    parser.add_argument("--arms", type=arm_names, default=list(ARMS), help=",".join(ARMS))
    parser.add_argument("--max-train-samples", type=int, help="smoke runs only")
    parser.add_argument("--max-test-samples", type=int, help="smoke runs only")
    args = parser.parse_args()
    if args.table:
        print(table(args.results))
    elif args.set is None:
        parser.error("--set is required (or --table)")
    else:
        run(args)


if __name__ == "__main__":
    main()

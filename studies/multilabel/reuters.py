"""Study: multi-label topics of Reuters-21578 ModApte (issue 30).

7,770 training and 3,019 test news stories, 90 topics, 1–15 per story. Every arm is scored
on the whole test split with micro-F1 (the usual headline), macro-F1 (rare topics weigh as
much as "earn"), samples-F1 and subset accuracy:

- ``tfidf_svm``: word 1–2-gram TF-IDF + one-vs-rest ``LinearSVC``, C tuned by 5-fold CV
  on micro-F1 over (0.1, 1, 10) on the whole training split, and the untuned C = 1;
- ``layers``: per zoo model, the layer curve the tool sees (its multi-label probe,
  cross-validated on the search-train rows: micro-F1 per layer) and, for its best and its
  last layer,
  standardised one-vs-rest logistic regression fitted on the whole training split and
  decided at 0.5 (what a user would try first);
- ``recommend``: ``recommend`` (30 trials, default space, multi-fidelity) over the four zoo
  models + ``tfidf``, then ``apply`` on test: the configuration, its thresholds' kind, the
  CPU of each stage, per-label F1 of the rarest topics;
- ``single_label``: the cost of the same run on single-label data of the same texts (each
  story's most frequent topic as its class).

The zoo models' rows come from one whole-split cache (``W/reuters/cache``, ``W``:
``--work-dir``), filled beforehand at 128 tokens, e.g.

    taskset -c 1 .venv/bin/autolayer extract -m minilm -d ../shared/data/reuters21578 \\
        --split train --max-length 128 --cache-dir /work/bench-work/reuters/cache

(every model, train and test). Arms already in the JSON are kept, so a run resumes.

    taskset -c 1 .venv/bin/python studies/multilabel/reuters.py
    .venv/bin/python studies/multilabel/reuters.py --table     # the README/RESULTS table
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
from autolayer import pipeline
from autolayer.budgets import Budget
from autolayer.fidelity import Fidelity
from autolayer.options import Options
from autolayer.probe import probe_layers

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "reuters21578"
RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ["minilm", "mpnet", "smollm2", "gemma3", "tfidf"]
SVM_CS = (0.1, 1.0, 10.0)
MAX_LENGTH = 128
METRIC = "micro_f1"
TARGET = {"micro_f1": 0.88, "macro_f1": 0.55}
PUBLISHED = "Yang & Liu 1999 SVM: micro-F1 0.860, macro-F1 0.525"


def scores(truth: np.ndarray, decided: np.ndarray) -> dict:
    """The four multi-label metrics of indicator decisions, by scikit-learn (an independent
    check of the tool's own; every one of the 90 topics occurs in the test split, so
    macro-F1 over all labels and over the labels present are the same figure)."""
    from sklearn.metrics import accuracy_score, f1_score

    def f1(average: str) -> float:
        return float(f1_score(truth, decided, average=average, zero_division=0))

    return {
        "micro_f1": f1("micro"),
        "macro_f1": f1("macro"),
        "samples_f1": f1("samples"),
        "subset_accuracy": float(accuracy_score(truth, decided)),
    }


def tfidf_svm(data) -> dict:
    """TF-IDF + one-vs-rest linear SVM, C tuned by 5-fold CV on micro-F1 (the vectoriser
    refitted in every fold), and the untuned C = 1."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    train, test = data.split("train"), data.split("test")
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), OneVsRestClassifier(LinearSVC())
    )
    grid = GridSearchCV(
        model,
        {"onevsrestclassifier__estimator__C": list(SVM_CS)},
        cv=KFold(5, shuffle=True, random_state=0),
        scoring="f1_micro",
    )
    grid.fit(list(train.texts), train.labels)
    untuned = model.set_params(onevsrestclassifier__estimator__C=1.0)
    untuned.fit(list(train.texts), train.labels)
    return {
        "test": scores(test.labels, grid.predict(list(test.texts))),
        "C": grid.best_params_["onevsrestclassifier__estimator__C"],
        "cv_micro_f1": dict(
            zip(map(str, SVM_CS), grid.cv_results_["mean_test_score"].tolist(), strict=True)
        ),
        "untuned_test": scores(test.labels, untuned.predict(list(test.texts))),
    }


def layer_baselines(data, models: list[str], options: Options) -> dict:
    """Per zoo model: the probe's layer curve on the search-train rows, and its best and
    last layer + one-vs-rest logistic regression on the whole training split."""
    train_rows, _ = data.train_validation(size=options.validation_size, seed=options.seed)
    y = data.split("train").labels
    out = {}
    for model in (m for m in models if m != "tfidf"):
        full = pipeline.embed(model, data, "train", options)
        probe = probe_layers(
            np.asarray(full.array[train_rows]),
            y[train_rows],
            seed=options.seed,
            max_examples=4000,
            metric=METRIC,
        )
        best, last = int(probe.best_layer), full.array.shape[1] - 1
        fitted = {
            layer: _layer_lr(model, data, options, full.layer(layer), layer)
            for layer in {best, last}
        }
        out[model] = {
            "curve": [float(s) for s in getattr(probe, METRIC)],
            "best_layer": best,
            "best": fitted[best],
            "last": fitted[last],
        }
    return {"by_model": out}


def _layer_lr(model: str, data, options: Options, train: np.ndarray, layer: int) -> dict:
    """Test scores of standardised one-vs-rest logistic regression on one layer."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    test = pipeline.embed(model, data, "test", options, layers=[layer])
    clf = make_pipeline(
        StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=2000), n_jobs=1)
    )
    clf.fit(train, data.split("train").labels)
    return scores(data.split("test").labels, clf.predict(test.layer(layer)))


def recommend_arm(data, models: list[str], options: Options, n_trials: int, root: Path) -> dict:
    """``recommend`` then ``apply`` on test, in a clean folder ``root``."""
    shutil.rmtree(root, ignore_errors=True)
    start, wall = time.process_time(), time.perf_counter()
    rec = pipeline.recommend(
        data,
        models,
        options=options,
        output_dir=root / "out",
        budget=Budget(n_trials=n_trials),
        fidelity=Fidelity(),
    )
    cpu, wall = time.process_time() - start, time.perf_counter() - wall
    model = autolayer.apply(rec.config, data, root / "model", cache_dir=options.cache_dir)
    estimator = autolayer.FusionTextClassifier.load(root / "model")
    test = data.split("test")
    decided = estimator.predict(list(test.texts))
    return {
        "recommend_cpu_seconds": cpu,
        "recommend_wall_seconds": wall,
        "stages": [dataclasses.asdict(s) for s in rec.stages],
        "config": {
            "models": [[m.spec, m.layer] for m in rec.config.models],
            "head": rec.config.head.kind,
            "params": rec.config.head.params,
            "task_params": rec.config.task_params,
        },
        "cost": rec.config.cost,
        "validation": rec.config.validation,
        "test": scores(test.labels, decided),
        "apply_metrics": model.metrics,
        "per_label_f1": _per_label(data, test.labels, decided),
        "why": rec.search.why,
        "trained": rec.search.trained,
    }


def single_label_arm(data, models: list[str], options: Options, n_trials: int, root: Path) -> dict:
    """The cost of a single-label run of the same texts and pool: each story's most
    frequent topic (in train) as its one class, test stories of a class no training story
    has left out; the same search (accuracy, not micro-F1), its CPU by stage."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    counts = data.split("train").labels.sum(0)
    seen: set[int] = set()
    for split in ("train", "test"):
        rows = data.split(split)
        main = [int(np.argmax(y * (counts + 1))) for y in rows.labels]
        seen |= set(main) if split == "train" else set()
        kept = [
            (t, data.label_names[c]) for t, c in zip(rows.texts, main, strict=True) if c in seen
        ]
        lines = (json.dumps({"text": t, "label": c}) for t, c in kept)
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    single = autolayer.load_dataset(root)
    start = time.process_time()
    rec = pipeline.recommend(
        single,
        models,
        options=dataclasses.replace(options, metric=None),
        output_dir=root / "out",
        budget=Budget(n_trials=n_trials),
        fidelity=Fidelity(),
    )
    return {
        "recommend_cpu_seconds": time.process_time() - start,
        "stages": [dataclasses.asdict(s) for s in rec.stages],
        "n_classes": len(single.label_names),
        "config": [[m.spec, m.layer] for m in rec.config.models],
        "head": rec.config.head.kind,
    }


def _per_label(data, truth: np.ndarray, decided: np.ndarray) -> dict:
    """F1 of every topic, with its number of training stories (rare ones decide macro-F1)."""
    from sklearn.metrics import f1_score

    f1 = f1_score(truth, decided, average=None, zero_division=0)
    counts = data.split("train").labels.sum(0)
    return {
        name: {"f1": float(f1[k]), "train": int(counts[k])}
        for k, name in enumerate(data.label_names)
    }


def timed(arm: Callable[[], dict]) -> dict:
    """An arm's result with its CPU (this process) and wall seconds."""
    start, wall = time.process_time(), time.perf_counter()
    out = arm()
    return {
        **out,
        "cpu_seconds": time.process_time() - start,
        "wall_seconds": time.perf_counter() - wall,
    }


def run(args: argparse.Namespace) -> None:
    """Run the arms missing from the JSON, writing it after each."""
    data = autolayer.load_dataset(DATA)
    for size, split in ((args.max_train_samples, "train"), (args.max_test_samples, "test")):
        if size:
            data = data.subsample(size, split=split, seed=0)
    work = args.work_dir / "reuters"
    options = Options(max_length=MAX_LENGTH, cache_dir=work / "cache", metric=METRIC)
    settings = {
        "models": args.models,
        "n_trials": args.n_trials,
        "max_length": MAX_LENGTH,
        "smoke_train_samples": args.max_train_samples,
        "max_test_samples": args.max_test_samples,
    }
    path = args.json or RESULTS / "reuters.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if results.get("settings", settings) != settings:
        raise SystemExit(f"{path} was run with other settings: {results['settings']}")
    results.update(
        n_train=len(data.split("train")),
        n_test=len(data.split("test")),
        n_labels=len(data.label_names),
        settings=settings,
    )
    arms = {
        "tfidf_svm": lambda: tfidf_svm(data),
        "layers": lambda: layer_baselines(data, args.models, options),
        "recommend": lambda: recommend_arm(
            data, args.models, options, args.n_trials, work / "recommend"
        ),
        "single_label": lambda: single_label_arm(
            data, args.models, options, args.n_trials, work / "single_label"
        ),
    }
    for name in args.arms:
        if name in results:
            continue
        results[name] = timed(arms[name])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        print(name, json.dumps(results[name])[:400], flush=True)


def table(path: Path) -> str:
    """The study's table: test micro-F1 and macro-F1 of every arm in the JSON."""
    r = json.loads(path.read_text())
    lines = ["| arm | micro-F1 | macro-F1 | samples-F1 | subset acc. |", "|---" * 5 + "|"]

    def line(name: str, s: dict) -> None:
        lines.append(
            f"| {name} | {s['micro_f1']:.3f} | {s['macro_f1']:.3f} "
            f"| {s['samples_f1']:.3f} | {s['subset_accuracy']:.3f} |"
        )

    if "tfidf_svm" in r:
        line(f"TF-IDF + SVM (C = {r['tfidf_svm']['C']:g}, tuned)", r["tfidf_svm"]["test"])
        line("TF-IDF + SVM (C = 1)", r["tfidf_svm"]["untuned_test"])
    for model, m in r.get("layers", {}).get("by_model", {}).items():
        if m["best_layer"] == len(m["curve"]) - 1:
            line(f"{model} L{m['best_layer']} (best by probe = last) + LR", m["best"])
            continue
        line(f"{model} L{m['best_layer']} (best by probe) + LR", m["best"])
        line(f"{model} last layer + LR", m["last"])
    if "recommend" in r:
        c = r["recommend"]["config"]
        chosen = " + ".join(m if m == "tfidf" else f"{m} L{n}" for m, n in c["models"])
        line(f"recommend: {chosen} ({c['head']})", r["recommend"]["test"])
    lines.append(f"\nPublished: {PUBLISHED}. Target: micro-F1 ≥ 0.88, macro-F1 ≥ 0.55.")
    return "\n".join(lines)


def plot(path: Path, out: Path) -> None:
    """Each model's layer curve (probe micro-F1 on the search-train rows) against relative
    depth, so encoders of 7 states and decoders of 31 share one axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = json.loads(path.read_text())["layers"]["by_model"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for model, m in curves.items():
        curve = np.asarray(m["curve"])
        depth = np.arange(len(curve)) / (len(curve) - 1)
        ax.plot(depth, curve, marker=".", label=f"{model} (best L{m['best_layer']})")
    ax.set_xlabel("hidden state / last (0 = embeddings)")
    ax.set_ylabel(f"probe {METRIC.replace('_', '-')}")
    ax.set_title("Reuters-21578: layer curves, 3-fold probe on search-train rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    parser.add_argument("--plot", type=Path, help="draw the layer curves into this PNG and stop")
    parser.add_argument("--work-dir", type=Path, default=Path("/work/bench-work"))
    parser.add_argument("--json", type=Path, help="default: results/reuters.json")
    parser.add_argument("--n-trials", type=int, default=30)
    parser.add_argument("--models", type=lambda s: s.split(","), default=MODELS)
    parser.add_argument(
        "--arms",
        type=lambda s: s.split(","),
        default=["tfidf_svm", "layers", "recommend", "single_label"],
    )
    parser.add_argument("--max-train-samples", type=int, help="smoke runs only")
    parser.add_argument("--max-test-samples", type=int, help="smoke runs only")
    args = parser.parse_args()
    if args.table:
        print(table(args.json or RESULTS / "reuters.json"))
    elif args.plot:
        plot(args.json or RESULTS / "reuters.json", args.plot)
    else:
        run(args)


if __name__ == "__main__":
    main()

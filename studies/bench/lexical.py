"""Study: does the lexical member pay off on full training sets? (issue 14)

For one benchmark set, after ``fidelity.py`` has run on it (its caches are reused):

- **baselines**, all fitted on the full training split and scored on the full test split:
  word 1–2-gram TF-IDF + linear SVM (the studies' baseline), and for every zoo model its
  last layer and its best layer (by probe on the search-train rows) + logistic regression;
- **with tfidf**: the multi-fidelity ``recommend`` over the four zoo models plus ``tfidf``,
  applied on test, next to ``fidelity.py``'s multi-fidelity arm without it. Its rows are
  served from the exhaustive arm's whole-split entries (``"cache": "exhaustive"``), so its
  CPU seconds are those of the search and TF-IDF, not of a cold run (MR's ran cold, in the
  multi-fidelity arm's cache, before the cache served rows).

Arms already in the JSON are kept, so the script resumes.

    .venv/bin/python studies/bench/lexical.py --set r8 --work-dir /work/fidelity-work \\
        --json studies/bench/results/lexical-r8.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import autolayer
from autolayer import pipeline
from autolayer.fidelity import Fidelity
from autolayer.options import Options
from autolayer.probe import probe_layers

sys.path.insert(0, str(Path(__file__).parent))
from fidelity import recommend_arm  # noqa: E402  (a sibling script, not a package)

ROOT = Path(__file__).resolve().parents[2]
SETS = {  # as fidelity-all.sh ran them
    "sst2": {"max_train_samples": 20000, "max_length": 256},
    "mr": {"max_length": 256},
    "r8": {"max_length": 128},
    "r52": {"max_length": 128},
}
MODELS = ["minilm", "mpnet", "smollm2", "gemma3"]


def tfidf_svm(data) -> float:
    """Word 1–2-gram TF-IDF + linear SVM (``studies/paper/run.py``'s baseline)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    train, test = data.split("train"), data.split("test")
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LinearSVC())
    model.fit(list(train.texts), train.labels)
    return float((model.predict(list(test.texts)) == test.labels).mean())


def layer_baselines(data, options: Options) -> dict:
    """Last and best layer (probe on the search-train rows) + LR per model, full train."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_rows, _ = data.train_validation(size=options.validation_size, seed=options.seed)
    y, y_test = data.split("train").labels, data.split("test").labels
    out = {}
    for model in MODELS:
        full = pipeline.embed(model, data, "train", options)  # the exhaustive arm's cache
        scores = probe_layers(
            np.asarray(full.array[train_rows]), y[train_rows], seed=options.seed, max_examples=4000
        )
        for kind, layer in (("last", full.array.shape[1] - 1), ("best", scores.best_layer)):
            test = pipeline.embed(model, data, "test", options, layers=[layer])
            scaler = StandardScaler().fit(full.layer(layer))
            clf = LogisticRegression(max_iter=2000).fit(scaler.transform(full.layer(layer)), y)
            predicted = clf.predict(scaler.transform(test.layer(layer)))
            out[f"{model}:{kind}"] = {
                "layer": int(layer),
                "test_accuracy": float((predicted == y_test).mean()),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", required=True, choices=list(SETS))
    parser.add_argument("--work-dir", type=Path, required=True, help="fidelity-all.sh's WORK")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--n-trials", type=int, default=30)
    args = parser.parse_args()
    settings = SETS[args.set]
    data = autolayer.load_dataset(ROOT.parent / "shared" / "data" / args.set)
    if "max_train_samples" in settings:
        data = data.subsample(settings["max_train_samples"], seed=0)
    work = args.work_dir / args.set
    exhaustive = Options(max_length=settings["max_length"], cache_dir=work / "exhaustive" / "cache")
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    results.update(dataset=data.name, n_train=len(data.split("train")))
    arms = {
        "tfidf_svm": lambda: {"test_accuracy": tfidf_svm(data)},
        "layers": lambda: layer_baselines(data, exhaustive),
        "with_tfidf": lambda: {
            **recommend_arm(
                data,
                [*MODELS, "tfidf"],
                Fidelity(),
                Options(max_length=settings["max_length"]),
                args.n_trials,
                work / "with_tfidf",
                cache_dir=exhaustive.cache_dir,
            ),
            "cache": "exhaustive",
        },
    }
    for name, arm in arms.items():
        if name in results:
            continue
        results[name] = arm()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(name, json.dumps(results[name])[:300], flush=True)


if __name__ == "__main__":
    main()

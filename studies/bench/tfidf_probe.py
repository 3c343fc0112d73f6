"""How the screen scores the lexical member: logistic regression (C = 1, the dense probe's)
against LinearSVC on the tool's TF-IDF features (issue 14).

For each set: TF-IDF fitted on the search-train rows, the screen's 2,000 stratified rows,
5-fold held-out accuracy of both models on the same folds; and LinearSVC fitted on all
search-train rows, scored on the validation rows (what the search's choice rests on).

    .venv/bin/python studies/bench/tfidf_probe.py --sets r8,mr,sst2 \
        --json studies/bench/results/tfidf-probe.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

import autolayer
from autolayer.options import Options
from autolayer.probe import folds
from autolayer.sampling import stratified_rows
from autolayer.sources import make_source

ROOT = Path(__file__).resolve().parents[2]
SUBSAMPLE = {"sst2": 20000}  # as fidelity.py and lexical.py ran it


def held_out(model, X, y, tests) -> float:
    every = np.arange(len(y))
    hits = [
        model.fit(X[np.setdiff1d(every, te)], y[np.setdiff1d(every, te)]).score(X[te], y[te])
        for te in tests
    ]
    return float(np.mean(hits))


def one_set(name: str) -> dict:
    data = autolayer.load_dataset(ROOT.parent / "shared" / "data" / name)
    if name in SUBSAMPLE:
        data = data.subsample(SUBSAMPLE[name], seed=0)
    options = Options()
    texts, y = data.split("train").texts, data.split("train").labels
    train, val = data.train_validation(size=options.validation_size, seed=options.seed)
    source = make_source("tfidf")
    source.fit([texts[i] for i in train])
    x_train = source.transform([texts[i] for i in train])
    x_val = source.transform([texts[i] for i in val])
    pick = stratified_rows(y[train], 2000, options.seed, per_class=1)
    screen_x, screen_y = x_train[pick], y[train][pick]
    tests = folds(screen_y, 5, options.seed)
    svm = LinearSVC(random_state=0).fit(x_train, y[train])
    return {
        "screen_rows": len(pick),
        "screen_lr": held_out(LogisticRegression(max_iter=1000), screen_x, screen_y, tests),
        "screen_svm": held_out(LinearSVC(random_state=0), screen_x, screen_y, tests),
        "validation_rows": len(val),
        "validation_svm": float((svm.predict(x_val) == y[val]).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="r8,mr,sst2")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    results = {name: one_set(name) for name in args.sets.split(",")}
    args.json.write_text(json.dumps(results, indent=1))
    for name, r in results.items():
        print(name, {k: round(100 * v, 2) if isinstance(v, float) else v for k, v in r.items()})


if __name__ == "__main__":
    main()

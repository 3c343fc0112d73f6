"""Baselines on a dataset's test split, from cached embeddings: what a recommendation must beat.

For each model: its final layer + logistic regression, and its best layer (chosen by probe CV
on train only) + logistic regression; plus TF-IDF + linear SVM. All fitted on train, scored on
test.

    .venv/bin/python studies/baselines.py --dataset ../shared/data/mr --models minilm,smollm2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

import autolayer


def logistic_accuracy(x_train, y_train, x_test, y_test) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    model.fit(x_train, y_train)
    return float((model.predict(x_test) == y_test).mean())


def tfidf_svm_accuracy(data) -> float:
    train, test = data.split("train"), data.split("test")
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LinearSVC())
    model.fit(list(train.texts), train.labels)
    return float((model.predict(list(test.texts)) == test.labels).mean())


def model_baselines(model: str, data, seed: int = 0) -> dict:
    train = autolayer.extract(model, data, "train")
    test = autolayer.extract(model, data, "test")
    y_train, y_test = data.split("train").labels, data.split("test").labels
    [scored] = autolayer.score([model], data, seed=seed, max_examples=4000)
    last, best = scored.last_layer, scored.best_layer
    return {
        "final_layer": last,
        "final_layer_lr_test_accuracy": logistic_accuracy(
            train.layer(last), y_train, test.layer(last), y_test
        ),
        "best_layer_by_train_cv": best,
        "best_layer_lr_test_accuracy": logistic_accuracy(
            train.layer(best), y_train, test.layer(best), y_test
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = autolayer.load_dataset(args.dataset)
    results = {"dataset": data.name, "tfidf_svm_test_accuracy": tfidf_svm_accuracy(data)}
    print(f"TF-IDF + linear SVM: {100 * results['tfidf_svm_test_accuracy']:.2f}%")
    for model in args.models.split(","):
        r = results[model] = model_baselines(model, data)
        print(
            f"{model}: final layer {r['final_layer']} + LR "
            f"{100 * r['final_layer_lr_test_accuracy']:.2f}%, "
            f"best layer {r['best_layer_by_train_cv']} (train CV) + LR "
            f"{100 * r['best_layer_lr_test_accuracy']:.2f}%"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Run one paper study end to end and write its results.

    .venv/bin/python studies/paper/run.py studies/paper/mr.yaml          # everything
    .venv/bin/python studies/paper/run.py studies/paper/r8.yaml --stage extract

Stages, in order: extract → layers → baselines → singles → pairs (CKA vs gain) → operators →
scaling → recommend → brute force → report. Each stage's result is kept in
``studies/results/<name>/study.json`` and a re-run skips finished stages; embeddings come
from autolayer's cache, so no model runs twice. Everything is *chosen* on a validation split
carved from train (best layer by probe CV on the train part, best pair and operator by
validation accuracy); the test split is only ever scored.

Fusion heads share one set of hyper-parameters (width 512, lr 1e-3, the search space's
epochs and patience) so that configurations differ only in models, layers and operator.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import spearmanr
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

import autolayer
from autolayer import zoo
from autolayer.budgets import Budget
from autolayer.cka import cka_matrix
from autolayer.fusion import OPERATORS
from autolayer.heads import head_class, make_head
from autolayer.probe import probe_layers
from autolayer.search import Space

ROOT = Path(__file__).resolve().parents[2]

WIDTH, LR = 512, 1e-3
VALIDATION = 0.2
CKA_ROWS = 5000
LATENCY_TEXTS = 64


def logistic_accuracy(x_train, y_train, x_test, y_test) -> float:
    """Standardised features + sklearn's LogisticRegression (C=1): the usual probe baseline."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    model.fit(x_train, y_train)
    return float((model.predict(x_test) == y_test).mean())


def tfidf_svm_accuracy(data) -> float:
    """Word 1-2-gram TF-IDF + linear SVM, fitted on train, scored on test."""
    train, test = data.split("train"), data.split("test")
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LinearSVC())
    model.fit(list(train.texts), train.labels)
    return float((model.predict(list(test.texts)) == test.labels).mean())


def load(spec_path: Path) -> tuple[dict, autolayer.data.LabelledDataset]:
    spec = yaml.safe_load(spec_path.read_text())
    spec["name"] = spec_path.stem
    data = autolayer.load_dataset(ROOT / spec["dataset"])
    if spec.get("train_examples"):
        data = data.subsample(spec["train_examples"], seed=spec.get("seed", 0))
    return spec, data


class Study:
    """One data set's study: its features, its stages, and the JSON file they fill."""

    def __init__(self, spec: dict, data, out: Path) -> None:
        self.spec, self.data, self.out = spec, data, out
        self.seed = spec.get("seed", 0)
        self.models = list(spec["models"])
        self.path = out / "study.json"
        self.results = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.tr, self.va = data.train_validation(size=VALIDATION, seed=self.seed)
        labels = data.split("train").labels
        self.y_tr, self.y_va, self.y_te = (
            labels[self.tr],
            labels[self.va],
            data.split("test").labels,
        )
        self.n_classes = len(data.label_names)
        self._emb: dict = {}

    # -- bookkeeping ---------------------------------------------------------------------
    def stage(self, name: str, compute) -> dict:
        if name not in self.results:
            start = time.perf_counter()
            print(f"[{self.spec['name']}] {name} …", flush=True)
            self.results[name] = compute()
            seconds = self.results.setdefault("stage_seconds", {})
            seconds[name] = round(time.perf_counter() - start, 1)
            self.save()
        return self.results[name]

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1))
        tmp.replace(self.path)

    def embeddings(self, model: str, split: str):
        key = (model, split)
        if key not in self._emb:
            self._emb[key] = autolayer.extract(
                model, self.data, split, max_length=self.spec["max_length"]
            )
        return self._emb[key]

    def features(self, model: str, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        train = self.embeddings(model, "train").layer(layer)
        test = self.embeddings(model, "test").layer(layer)
        return train[self.tr], train[self.va], np.asarray(test)

    # -- stages --------------------------------------------------------------------------
    def extract(self) -> dict:
        out = {}
        for model in self.models:
            metas = [self.embeddings(model, s).meta for s in ("train", "test")]
            out[model] = {
                "n_hidden_states": metas[0]["n_hidden_states"],
                "rows": [len(self.data.split(s)) for s in ("train", "test")],
                "tokens": sum(m["tokens"] for m in metas),
                "forward_seconds_per_text": metas[0]["seconds"] / max(metas[0]["computed_rows"], 1),
                "extract_seconds": round(
                    sum(
                        m["seconds"] * len(self.data.split(s)) / max(m["computed_rows"], 1)
                        for m, s in zip(metas, ("train", "test"), strict=True)
                    )
                ),
            }
        return out

    def layers(self) -> dict:
        out = {}
        for model in self.models:
            X = np.asarray(self.embeddings(model, "train").array)[self.tr]
            start = time.perf_counter()
            scores = probe_layers(X, self.y_tr, seed=self.seed, max_examples=4000)
            ranking = [int(i) for i in scores.ranking()]
            last = X.shape[1] - 1
            out[model] = {
                "accuracy": scores.accuracy.round(5).tolist(),
                "accuracy_std": scores.accuracy_std.round(5).tolist(),
                "macro_f1": scores.macro_f1.round(5).tolist(),
                "best_layer": ranking[0],
                "last_layer": last,
                "top_k": ranking[: self.spec["search"]["top_k"]],
                "gap_pt": round(100 * (scores.accuracy[ranking[0]] - scores.accuracy[last]), 2),
                "probe_seconds": round(time.perf_counter() - start, 2),
            }
        from autolayer import report

        report.plot_layer_curves(
            {m: np.array(v["accuracy"]) for m, v in out.items()}, self.out / "layers.png"
        )
        return out

    def baselines(self) -> dict:
        train, test = self.data.split("train"), self.data.split("test")
        out = {"tfidf_svm": tfidf_svm_accuracy(self.data)}
        for model in self.models:
            info = self.results["layers"][model]
            emb_tr, emb_te = self.embeddings(model, "train"), self.embeddings(model, "test")
            for kind in ("last", "best"):
                layer = info[f"{kind}_layer"]
                out[f"{model}:{kind}"] = logistic_accuracy(
                    emb_tr.layer(layer), train.labels, emb_te.layer(layer), test.labels
                )
        return out

    def evaluate(self, choice: list[tuple[str, int]], operator: str) -> dict:
        """Train one fusion head (train part, early stopping on validation), score on test."""
        parts = [self.features(m, layer) for m, layer in choice]
        space = Space()
        head = make_head(
            "mlp",
            {
                "operator": operator,
                "width": WIDTH,
                "hidden": space.hidden,
                "dropout": space.dropout,
                "lr": LR,
                "epochs": space.max_epochs,
                "patience": space.patience,
            },
        )
        result = head.fit(
            [p[0] for p in parts],
            self.y_tr,
            [p[1] for p in parts],
            self.y_va,
            seed=self.seed,
            n_outputs=self.n_classes,
        )
        pred = head.predict_proba([p[2] for p in parts]).argmax(1)
        dims = [p[0].shape[1] for p in parts]
        return {
            "models": [m for m, _ in choice],
            "layers": [layer for _, layer in choice],
            "operator": operator,
            "val_accuracy": round(result.best_val_metric, 5),
            "test_accuracy": round(float((pred == self.y_te).mean()), 5),
            "test_macro_f1": round(float(f1_score(self.y_te, pred, average="macro")), 5),
            "train_seconds": result.train_seconds,
            "head_params": head_class("mlp").n_parameters(dims, self.n_classes, head.params),
            **self.cost(choice),
        }

    def cost(self, choice: list[tuple[str, int]]) -> dict:
        """Inference cost of the backbones cut at their layers: ms per text and weights MB."""
        latency = self.results["latency"]
        ms = mb = 0.0
        for model, layer in choice:
            n_layers = self.results["layers"][model]["last_layer"]
            base, per_layer = zoo.parameter_counts(zoo.resolve(model).folder, n_layers)
            ms += latency[model] * max(layer, 1) / n_layers
            mb += 4 * (base + sum(per_layer[:layer])) / 2**20
        return {"latency_ms": round(ms, 3), "weights_mb": round(mb, 1)}

    def latency(self) -> dict:
        """Full-depth ms per test text, each model loaded once, warmed up, then timed alone."""
        from autolayer.sources.transformer import Backbone

        texts = list(self.data.split("test").texts[:LATENCY_TEXTS])
        out = {}
        for model in self.models:
            backbone = Backbone(zoo.resolve(model))
            backbone.encode(texts[:8], max_length=self.spec["max_length"])  # warm-up
            start = time.perf_counter()
            backbone.encode(texts, max_length=self.spec["max_length"])
            out[model] = round(1000 * (time.perf_counter() - start) / len(texts), 3)
        return out

    def remeasure_latency(self) -> None:
        """Time the backbones again (e.g. on a quiet CPU) and re-cost every stored run."""
        self.results["latency"] = self.latency()
        log = self.out / "brute_force.jsonl"
        logged = [json.loads(line) for line in log.open()] if log.exists() else []
        for run in [*_runs(self.results), *logged]:
            run.update(self.cost(list(zip(run["models"], run["layers"], strict=True))))
        if logged:
            log.write_text("".join(json.dumps(run) + "\n" for run in logged))
        self.save()

    def best(self, model: str) -> int:
        return self.results["layers"][model]["best_layer"]

    def singles(self) -> dict:
        return {
            f"{m}:{kind}": self.evaluate(
                [(m, self.results["layers"][m][f"{kind}_layer"])], "concat"
            )
            for m in self.models
            for kind in ("best", "last")
        }

    def pairs(self) -> dict:
        rows = self.tr[:CKA_ROWS]
        cka = cka_matrix(
            {m: self.embeddings(m, "train").layer(self.best(m))[rows] for m in self.models}
        )
        out = {"cka": cka.round(4).tolist(), "pairs": []}
        for i, j in itertools.combinations(range(len(self.models)), 2):
            a, b = self.models[i], self.models[j]
            run = self.evaluate([(a, self.best(a)), (b, self.best(b))], "concat")
            singles = [self.results["singles"][f"{m}:best"] for m in (a, b)]
            run["cka"] = round(float(cka[i, j]), 4)
            run["test_gain_pt"] = round(
                100 * (run["test_accuracy"] - max(s["test_accuracy"] for s in singles)), 2
            )
            run["val_gain_pt"] = round(
                100 * (run["val_accuracy"] - max(s["val_accuracy"] for s in singles)), 2
            )
            out["pairs"].append(run)
        if len(out["pairs"]) > 2:
            x = [p["cka"] for p in out["pairs"]]
            out["spearman_cka_vs_test_gain"] = round(
                float(spearmanr(x, [p["test_gain_pt"] for p in out["pairs"]]).statistic), 3
            )
            out["spearman_cka_vs_val_gain"] = round(
                float(spearmanr(x, [p["val_gain_pt"] for p in out["pairs"]]).statistic), 3
            )
        return out

    def cka_standardised(self) -> dict:
        """CKA on per-feature standardised embeddings, against the same fusion gains.

        A decoder's few huge dimensions dominate raw linear CKA (near 0 against anything);
        standardising gives every feature a say, as the probes and heads do."""
        rows = self.tr[:CKA_ROWS]
        feats = {}
        for m in self.models:
            x = self.embeddings(m, "train").layer(self.best(m))[rows].astype(np.float64)
            feats[m] = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
        cka = cka_matrix(feats)
        pairs = self.results["pairs"]["pairs"]
        index = {m: i for i, m in enumerate(self.models)}
        values = [float(cka[index[p["models"][0]], index[p["models"][1]]]) for p in pairs]
        out = {"cka": cka.round(4).tolist()}
        if len(pairs) > 2:
            for split in ("val", "test"):
                gains = [p[f"{split}_gain_pt"] for p in pairs]
                out[f"spearman_vs_{split}_gain"] = round(
                    float(spearmanr(values, gains).statistic), 3
                )
        return out

    def best_pair(self) -> list[str]:
        return max(self.results["pairs"]["pairs"], key=lambda p: p["val_accuracy"])["models"]

    def operators(self) -> dict:
        pair = self.best_pair()
        out = {"pair": pair, "runs": []}
        for kind in ("last", "best"):
            choice = [(m, self.results["layers"][m][f"{kind}_layer"]) for m in pair]
            for op in OPERATORS:
                out["runs"].append({"layers_kind": kind, **self.evaluate(choice, op)})
        return out

    def scaling(self) -> dict:
        order = sorted(
            self.models, key=lambda m: -self.results["singles"][f"{m}:best"]["val_accuracy"]
        )
        runs = [r for r in self.results["operators"]["runs"] if r["layers_kind"] == "best"]
        operator = max(runs, key=lambda r: r["val_accuracy"])["operator"]
        out = {"order": order, "operator": operator, "runs": []}
        for k in range(1, len(order) + 1):
            choice = [(m, self.best(m)) for m in order[:k]]
            out["runs"].append(self.evaluate(choice, operator if k > 1 else "concat"))
        return out

    def recommend(self) -> dict:
        search = self.spec["search"]
        start = time.perf_counter()
        rec = autolayer.recommend(
            self.data,
            search["models"],
            output_dir=self.out / "recommend",
            budget=Budget(n_trials=search["n_trials"], max_models=search["max_models"]),
            top_k=search["top_k"],
            seed=self.seed,
            max_length=self.spec["max_length"],
        )
        wall = time.perf_counter() - start
        config = rec.config
        choice = [(m.spec, m.layer) for m in config.models]
        trials = [t for t in rec.search.trials if "train_seconds" in t.attrs]
        with tempfile.TemporaryDirectory() as model_dir:
            applied = autolayer.apply(config, self.data, model_dir)
        return {
            "config": {
                "models": choice,
                "head": config.head.kind,
                **config.head.params,
            },
            "search_val_accuracy": config.validation["accuracy"],
            "apply_test_accuracy": round(applied.accuracy, 5),
            "apply_test_macro_f1": round(applied.macro_f1, 5),
            "same_protocol": self.evaluate(choice, config.head.params.get("operator", "concat")),
            "trials_trained": len(trials),
            "train_seconds": round(sum(t.attrs["train_seconds"] for t in trials), 1),
            "wall_seconds": round(wall, 1),
        }

    def brute_force(self) -> dict:
        """Every configuration of the recommend search space at fixed width and lr."""
        search = self.spec["search"]
        log = self.out / "brute_force.jsonl"
        done = [json.loads(line) for line in log.open()] if log.exists() else []
        seen = {(tuple(r["models"]), tuple(r["layers"]), r["operator"]) for r in done}
        top = {m: self.results["layers"][m]["top_k"] for m in search["models"]}
        for size in range(1, search["max_models"] + 1):
            for models in itertools.combinations(search["models"], size):
                for layers in itertools.product(*(top[m] for m in models)):
                    for op in OPERATORS if size > 1 else ["concat"]:
                        if (models, layers, op) in seen:
                            continue
                        run = self.evaluate(list(zip(models, layers, strict=True)), op)
                        with log.open("a") as fh:
                            fh.write(json.dumps(run) + "\n")
                        done.append(run)
        best = max(done, key=lambda r: r["val_accuracy"])
        return {
            "configurations": len(done),
            "best": best,
            "test_oracle": max(r["test_accuracy"] for r in done),
            "train_seconds": round(sum(r["train_seconds"] for r in done), 1),
        }


def _runs(results: dict) -> list[dict]:
    """Every evaluated configuration stored in a study's results."""
    runs = list(results.get("singles", {}).values())
    runs += results.get("pairs", {}).get("pairs", [])
    runs += results.get("operators", {}).get("runs", [])
    runs += results.get("scaling", {}).get("runs", [])
    if "recommend" in results:
        runs.append(results["recommend"]["same_protocol"])
    if "brute_force" in results:
        runs.append(results["brute_force"]["best"])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--stage", default="all", choices=["extract", "all"])
    parser.add_argument("--models", help="comma-separated subset to extract (default: all)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and BLAS")
    parser.add_argument(
        "--output-dir", type=Path, help="default: studies/results/<spec name>", default=None
    )
    parser.add_argument(
        "--remeasure-latency", action="store_true", help="time the backbones again, re-cost runs"
    )
    args = parser.parse_args()
    if args.threads:  # sklearn's BLAS threads and torch's pool slow each other down otherwise
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    spec, data = load(args.spec)
    study = Study(spec, data, args.output_dir or ROOT / "studies" / "results" / spec["name"])
    if args.stage == "extract":
        for model in args.models.split(",") if args.models else spec["models"]:
            for split in ("train", "test"):
                study.embeddings(model, split)
                print(f"{model} {data.name}/{split} cached", flush=True)
        return
    if args.remeasure_latency:
        study.remeasure_latency()
    for name in (
        "extract",
        "layers",
        "latency",
        "baselines",
        "singles",
        "pairs",
        "cka_standardised",
        "operators",
        "scaling",
    ):
        study.stage(name, getattr(study, name))
    if "search" in spec:
        study.stage("recommend", study.recommend)
        if spec.get("brute_force"):
            study.stage("brute_force", study.brute_force)
    from report import write_report, write_summary

    write_report(study.results, spec, study.out)
    write_summary(study.out.parent)


if __name__ == "__main__":
    main()

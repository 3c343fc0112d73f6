"""The whole flow on tiny random models: recommend → export → apply → predict, via the CLI,
plus the search's budgets and resumption, and the scikit-learn estimator."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from autolayer import pipeline
from autolayer.classifier import FusionTextClassifier
from autolayer.cli import main
from autolayer.config import FusionConfig, ModelChoice, load_config
from autolayer.errors import ConfigError
from autolayer.search import Budget, trained_count


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def models(tiny_models) -> str:
    return f"{tiny_models['bert']},{tiny_models['llama']}"


def test_cli_flow_recommend_export_apply_predict(capsys, tmp_path, home, tiny_dataset, models):
    out_dir = tmp_path / "out"
    code, out, err = run(
        capsys,
        "recommend",
        "-d",
        tiny_dataset,
        "--models",
        models,
        "--n-trials",
        4,
        "--max-length",
        12,
        "-o",
        out_dir,
    )
    assert code == 0, err
    assert "recommended:" in out and "linear-probe accuracy per layer" in out
    assert (out_dir / "layers.png").read_bytes()[:4] == b"\x89PNG"
    assert (out_dir / "cka.png").exists()
    config = load_config(out_dir / "recommendation.yaml")
    assert config.dataset["fingerprint"] and config.versions["torch"]
    assert {m.max_length for m in config.models} == {12}
    storage = f"sqlite:///{out_dir / 'study.db'}"
    study_name = config.validation["study"]
    code, _, err = run(
        capsys,
        "export",
        "--storage",
        storage,
        "--study-name",
        study_name,
        "--trial",
        0,
        "-o",
        tmp_path / "trial0.yaml",
    )
    assert code == 0, err
    assert load_config(tmp_path / "trial0.yaml").validation["trial"] == 0

    code, out, err = run(
        capsys,
        "apply",
        out_dir / "recommendation.yaml",
        "-d",
        tiny_dataset,
        "-o",
        tmp_path / "model",
    )
    assert code == 0, err
    assert "test accuracy" in out
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["n_test"] == 20 and 0 <= metrics["accuracy"] <= 1

    (tmp_path / "new.txt").write_text("the movie was good\nawful plot\n\n")
    code, _, err = run(
        capsys,
        "predict",
        tmp_path / "model",
        "-i",
        tmp_path / "new.txt",
        "-o",
        tmp_path / "pred.csv",
    )
    assert code == 0, err
    lines = (tmp_path / "pred.csv").read_text().strip().splitlines()
    assert lines[0].startswith("row,text,label,p_neg,p_pos") and len(lines) == 3


def test_search_resumes_and_counts_trials_across_runs(home, tmp_path, tiny_dataset, models):
    prepared = pipeline.prepare(str(tiny_dataset), models.split(","), top_k=2)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    first = pipeline.search(
        prepared, output_dir=tmp_path, storage=storage, study_name="s", budget=Budget(n_trials=3)
    )
    again = pipeline.search(
        prepared, output_dir=tmp_path, storage=storage, study_name="s", budget=Budget(n_trials=5)
    )
    study = optuna.load_study(study_name="s", storage=storage)
    assert trained_count(study)[0] == 5
    kept = {t.number for t in first.trials if t.state == "COMPLETE"}
    assert kept <= {t.number for t in again.trials}
    for trial in again.trials:
        if trial.state == "COMPLETE":
            assert {"latency_ms", "memory_mb", "params", "fused_dim", "train_seconds"} <= set(
                trial.attrs
            )


def test_infeasible_configurations_are_never_trained(home, tmp_path, tiny_dataset, models):
    prepared = pipeline.prepare(str(tiny_dataset), models.split(","), top_k=2)
    cheapest = min(c.latency_ms(min(c.layers)) for c in prepared.candidates)
    # Exactly at the budget: a stored value that differs from the compared one (rounded,
    # say) would put a feasible configuration above it by chance.
    budget = Budget(n_trials=4, max_latency_ms=cheapest)
    result = pipeline.search(prepared, output_dir=tmp_path, budget=budget, study_name="b")
    for trial in result.trials:
        if trial.state == "COMPLETE":
            assert trial.attrs["latency_ms"] <= budget.max_latency_ms
        elif "infeasible" in trial.attrs:
            assert "train_seconds" not in trial.attrs and "latency" in trial.attrs["infeasible"]


def test_budget_nothing_can_meet_names_the_binding_limit(
    capsys, home, tmp_path, tiny_dataset, models
):
    code, _, err = run(
        capsys,
        "search",
        "-d",
        tiny_dataset,
        "--models",
        models,
        "--max-latency-ms",
        "1e-9",
        "-o",
        tmp_path,
    )
    assert code == ConfigError.exit_code
    assert "max-latency-ms" in err and "Traceback" not in err


def test_multi_objective_reports_a_pareto_front(home, tmp_path, tiny_dataset, models):
    prepared = pipeline.prepare(str(tiny_dataset), models.split(","), top_k=2)
    result = pipeline.search(
        prepared,
        output_dir=tmp_path,
        budget=Budget(n_trials=6),
        study_name="mo",
        multi_objective=True,
    )
    assert result.pareto
    values = [(t.values[0], t.attrs["latency_ms"]) for t in result.pareto]
    for acc, lat in values:  # no front member is dominated by another
        assert not any(a >= acc and la <= lat and (a, la) != (acc, lat) for a, la in values)


def _tiny_config(spec: str, layer: int = 2) -> FusionConfig:
    from autolayer import zoo

    return FusionConfig(
        models=(ModelChoice(spec, zoo.resolve(spec).identity, layer, 5),),
        operator="concat",
        width=16,
        hidden=8,
        dropout=0.0,
        lr=3e-3,
        batch_size=8,
        epochs=5,
        label_names=("neg", "pos"),
    )


def test_estimator_works_in_sklearn_pipeline_and_cross_validation(home, tiny_models, tiny_dataset):
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    from autolayer.data import load_dataset

    data = load_dataset(str(tiny_dataset))
    texts = list(data.split("train").texts)
    labels = [data.label_names[i] for i in data.split("train").labels]
    estimator = FusionTextClassifier(_tiny_config(str(tiny_models["bert"])))
    scores = cross_val_score(clone(estimator), texts, labels, cv=2)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    fitted = estimator.fit(texts, labels)
    assert set(fitted.predict(texts[:5])) <= {"neg", "pos"}
    np.testing.assert_allclose(fitted.predict_proba(texts[:5]).sum(axis=1), 1, atol=1e-5)


def test_saved_model_round_trips_without_pickle(home, tmp_path, tiny_models, tiny_dataset):
    from autolayer.data import load_dataset

    data = load_dataset(str(tiny_dataset))
    texts = list(data.split("train").texts)
    labels = [data.label_names[i] for i in data.split("train").labels]
    estimator = FusionTextClassifier(_tiny_config(str(tiny_models["llama"]))).fit(texts, labels)
    estimator.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.yaml",
        "features.json",
        "head.json",
        "head.safetensors",
    ]
    loaded = FusionTextClassifier.load(tmp_path / "m")
    np.testing.assert_allclose(
        loaded.predict_proba(texts), estimator.predict_proba(texts), atol=1e-6
    )


def test_apply_warns_when_config_comes_from_other_data(
    home, tmp_path, tiny_models, tiny_dataset, caplog
):
    from autolayer.classifier import apply

    config = _tiny_config(str(tiny_models["bert"]))
    config = FusionConfig(**{**config.__dict__, "dataset": {"name": "x", "fingerprint": "0" * 64}})
    result = apply(config, str(tiny_dataset), tmp_path / "m")
    assert result.warnings and "fingerprint" in caplog.text


def test_predict_on_empty_input_is_an_error(capsys, home, tmp_path, tiny_models, tiny_dataset):
    from autolayer.classifier import apply

    apply(_tiny_config(str(tiny_models["bert"])), str(tiny_dataset), tmp_path / "m")
    (tmp_path / "empty.txt").write_text("\n \n")
    code, _, err = run(
        capsys, "predict", tmp_path / "m", "-i", tmp_path / "empty.txt", "-o", tmp_path / "p.jsonl"
    )
    assert code != 0 and "no texts" in err and "Traceback" not in err

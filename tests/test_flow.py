"""The whole flow on tiny random models: recommend → export → apply → predict, via the CLI.
Budgets and resumption are in test_search.py, the estimator in test_classifier.py."""

from __future__ import annotations

import json

from autolayer.config import load_config
from tests.conftest import run


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
    words = " ".join(out.split())  # a table title wraps at the console width (tmp path length)
    assert "recommended:" in out and "linear-probe accuracy per layer" in words
    assert (out_dir / "layers.png").read_bytes()[:4] == b"\x89PNG"
    assert (out_dir / "cka.png").exists()
    config = load_config(out_dir / "recommendation.yaml")
    assert config.dataset["fingerprint"] and config.versions["torch"]
    assert config.dataset["validation"]["split"] == "carved"
    assert config.dataset["validation"]["size"] == 0.2
    assert {m.max_length for m in config.models} == {12}
    storage = f"sqlite:///{out_dir / 'study.db'}"
    study_name = config.validation["study"]
    code, said, err = run(
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
    trial0 = load_config(tmp_path / "trial0.yaml")
    assert trial0.validation["trial"] == 0
    score = f"{100 * trial0.validation['accuracy']:.1f}%"
    assert f"trial0.yaml: trial #0, validation accuracy {score}" in " ".join(said.split())

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

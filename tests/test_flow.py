"""The whole flow on tiny random models: recommend → export → apply → predict, via the CLI,
and the output folder a recommend holds while it runs. Budgets and resumption are in
test_search.py, the estimator in test_classifier.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from autolayer.config import load_config
from autolayer.errors import ConfigError
from tests.conftest import one_error_line, run


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


def test_a_recommend_on_other_data_into_a_folder_a_running_one_holds_is_refused(
    home, tmp_path, tiny_dataset
):
    from autolayer import pipeline
    from autolayer.budgets import Budget

    out_dir, refused = tmp_path / "out", []
    run_one = {"models": ["tfidf"], "output_dir": out_dir}

    def second_run(study, trial) -> None:  # while the first run searches: deterministic
        if refused:
            return
        try:
            budget = Budget(n_trials=1)
            pipeline.recommend(str(tiny_dataset), max_train_samples=10, budget=budget, **run_one)
        except ConfigError as exc:
            refused.append(str(exc))
        else:
            refused.append("")

    rec = pipeline.recommend(
        str(tiny_dataset), budget=Budget(n_trials=1), callbacks=[second_run], **run_one
    )
    assert refused[0].startswith(f"{out_dir} is in use by a recommend on other data (pid ")
    assert "wait for it to end, or choose another output folder" in refused[0]
    assert load_config(out_dir / "recommendation.yaml").dataset == rec.config.dataset
    assert pipeline.CLAIM not in {p.name for p in out_dir.iterdir()}  # released when done


def test_a_claim_on_the_output_folder_is_shared_by_runs_on_the_same_data(tmp_path):
    from autolayer import pipeline

    with pipeline.claim_output_dir(tmp_path, "a" * 64):
        with pipeline.claim_output_dir(tmp_path, "a" * 64):  # a worker of the same study
            pass
        assert [p.name for p in tmp_path.iterdir()] == [pipeline.CLAIM]  # still held
    assert not list(tmp_path.iterdir())


def test_a_claim_left_by_a_killed_run_blocks_nothing(tmp_path):
    import json

    from autolayer import pipeline

    # what a killed run leaves: its record, whose lock the kernel dropped with the process
    record = {"fingerprint": "b" * 64, "pid": 999999, "host": "here"}
    (tmp_path / pipeline.CLAIM).write_text(json.dumps(record))
    with pipeline.claim_output_dir(tmp_path, "a" * 64):
        assert '"a' in (tmp_path / pipeline.CLAIM).read_text()
    assert not list(tmp_path.iterdir())


def test_a_recommend_that_fails_before_writing_leaves_no_output_folder(home, tmp_path):
    from autolayer import pipeline

    out_dir = tmp_path / "out"
    with pytest.raises(ConfigError), pipeline.claim_output_dir(out_dir, "a" * 64):
        raise ConfigError("a bad input found after the claim")
    assert not out_dir.exists()


def test_recommend_refuses_a_folder_made_for_other_data_unless_overwrite(
    capsys, tmp_path, home, tiny_models, tiny_dataset
):
    out = tmp_path / "out"
    out.mkdir()
    earlier = yaml.safe_dump({"dataset": {"name": "mr", "fingerprint": "0" * 64}})
    (out / "recommendation.yaml").write_text(earlier)
    args = ["recommend", "-d", tiny_dataset, "--models", tiny_models["bert"], "-o", out]
    code, _, err = run(capsys, *args, "--n-trials", "2")
    assert code != 0 and "other data" in one_error_line(err)
    assert (out / "recommendation.yaml").read_text() == earlier

    from autolayer.report import plot_cka_matrix

    plot_cka_matrix(["a", "b"], np.eye(2), out / "cka.png")  # the earlier run's, two models
    assert (out / "cka.png").is_file()
    code, _, err = run(capsys, *args, "--n-trials", "2", "--overwrite")
    assert code == 0, err
    assert load_config(out / "recommendation.yaml").dataset["name"] == "tiny"
    assert not (out / "cka.png").exists()  # one model now: no stale plot beside the result

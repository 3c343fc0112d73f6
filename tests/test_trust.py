"""Issue #10: results are never silently wrong, files never lost, studies never run away.

Each test here failed on the main branch before the fix it pins down.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml

from autolayer.classifier import MODEL_FILES, SOURCE_FILES
from autolayer.config import load_config
from autolayer.errors import ConfigError
from autolayer.search import Cost
from tests.conftest import run, write_config, write_jsonl

NEURAL_MODEL_FILES = sorted(set(MODEL_FILES) - set(SOURCE_FILES))  # no tfidf fitted


def test_cost_attributes_are_stored_unrounded():
    """A configuration exactly at the latency budget must be recorded at it, not above."""
    cost = Cost(latency_ms=0.056255625, memory_mb=1.23456789, params=10, fused_dim=4)
    assert cost.as_dict()["latency_ms"] == 0.056255625
    assert cost.as_dict()["memory_mb"] == 1.23456789


# ---------------------------------------------------------------------------------------------
# Shared set-up: a config for the tiny encoder, and a CLI runner


def one_error_line(err: str) -> str:
    lines = [
        line
        for line in err.strip().splitlines()
        if line.strip()
        and not line.startswith(("WARNING", "INFO"))
        and " texts (" not in line  # plain progress lines when not a terminal
        and " trials (" not in line
    ]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture()
def config(tmp_path, tiny_models) -> Path:
    return write_config(tmp_path / "cfg", tiny_models["bert"])


@pytest.fixture()
def saved_model(capsys, tmp_path, home, config, tiny_dataset) -> Path:
    code, _, err = run(capsys, "apply", config, "-d", tiny_dataset, "-o", tmp_path / "model")
    assert code == 0, err
    return tmp_path / "model"


# ---------------------------------------------------------------------------------------------
# 1. Data loss


def test_apply_into_the_current_directory_deletes_nothing(
    capsys, tmp_path, home, config, tiny_dataset, monkeypatch
):
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("mine")
    local = cwd / "rec.yaml"
    local.write_bytes(config.read_bytes())
    monkeypatch.chdir(cwd)
    code, _, err = run(capsys, "apply", "rec.yaml", "-d", tiny_dataset, "-o", ".")
    assert code != 0
    assert "did not write" in one_error_line(err)
    assert sorted(p.name for p in cwd.iterdir()) == ["notes.txt", "rec.yaml"]


def test_an_existing_model_is_replaced_only_with_overwrite(
    capsys, tmp_path, home, config, tiny_dataset, saved_model
):
    before = (saved_model / "head.safetensors").read_bytes()
    code, _, err = run(capsys, "apply", config, "-d", tiny_dataset, "-o", saved_model)
    assert code != 0 and "--overwrite" in one_error_line(err)
    assert (saved_model / "head.safetensors").read_bytes() == before
    code, _, err = run(
        capsys, "apply", config, "-d", tiny_dataset, "-o", saved_model, "--overwrite"
    )
    assert code == 0, err
    assert sorted(p.name for p in saved_model.iterdir()) == NEURAL_MODEL_FILES
    assert not [p for p in saved_model.parent.iterdir() if p.name.startswith(".model")]


def test_apply_into_an_empty_folder_works(capsys, tmp_path, home, config, tiny_dataset):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "apply", config, "-d", tiny_dataset, "-o", tmp_path / "empty")
    assert code == 0, err
    assert (tmp_path / "empty" / "head.safetensors").is_file()


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
    import numpy as np

    from autolayer.report import plot_cka_matrix

    plot_cka_matrix(["a", "b"], np.eye(2), out / "cka.png")  # the earlier run's, two models
    assert (out / "cka.png").is_file()
    code, _, err = run(capsys, *args, "--n-trials", "2", "--overwrite")
    assert code == 0, err
    assert load_config(out / "recommendation.yaml").dataset["name"] == "tiny"
    assert not (out / "cka.png").exists()  # one model now: no stale plot beside the result


# ---------------------------------------------------------------------------------------------
# 2. Studies that run away or mix objectives


def _search(capsys, tiny_dataset, models, out, *extra):
    return run(capsys, "search", "-d", tiny_dataset, "--models", models, "-o", out, *extra)


def _n_trials(out: Path) -> int:
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    return sum(len(storage.get_all_trials(s._study_id)) for s in storage.get_all_studies())


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--multi-objective"], "objectives"),
        (["--metric", "macro_f1"], "metric"),
        (["--top-k", "1"], "search space"),
        (["--max-models", "1"], "search space"),
        (["--pooling", "last"], "pooling"),
        (["--seed", "1"], "validation split"),
    ],
)
def test_a_study_of_other_settings_is_refused_before_any_training(
    capsys, tmp_path, home, tiny_models, tiny_dataset, change, named
):
    models = f"{tiny_models['bert']},{tiny_models['llama']}"
    out = tmp_path / "s"
    code, _, err = _search(capsys, tiny_dataset, models, out, "--n-trials", "3")
    assert code == 0, err
    before = _n_trials(out)
    code, _, err = _search(capsys, tiny_dataset, models, out, "--n-trials", "5", *change)
    line = one_error_line(err)
    assert code != 0 and named in line and "--study-name" in line
    assert _n_trials(out) == before


def test_a_study_name_reused_with_other_data_is_refused(
    capsys, tmp_path, home, tiny_models, tiny_dataset
):
    out = tmp_path / "s"
    model = str(tiny_models["bert"])
    code, _, err = _search(capsys, tiny_dataset, model, out, "--n-trials", "2", "--study-name", "x")
    assert code == 0, err
    other = tmp_path / "other"
    rows = [json.loads(line) for line in (tiny_dataset / "train.jsonl").read_text().splitlines()]
    write_jsonl(other / "train.jsonl", rows[:-2])
    code, _, err = _search(capsys, other, model, out, "--n-trials", "2", "--study-name", "x")
    assert code != 0 and "dataset fingerprint" in one_error_line(err)
    study = optuna.load_study(study_name="x", storage=f"sqlite:///{out / 'study.db'}")
    assert all(t.state.name != "FAIL" for t in study.trials)


def test_ctrl_c_is_one_line_and_an_interrupted_first_run_can_be_exported(
    capsys, tmp_path, home, tiny_models, tiny_dataset, monkeypatch, caplog
):
    from autolayer import fusion, search

    calls = {"n": 0}
    real = fusion.train_fusion

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "train_fusion", interrupted)
    logged = []  # what Optuna's own handlers print (after their filters)
    for handler in optuna.logging.get_logger("optuna").handlers:
        monkeypatch.setattr(handler, "emit", logged.append)
    out = tmp_path / "s"
    code, _, err = _search(capsys, tiny_dataset, tiny_models["bert"], out, "--n-trials", "5")
    assert code == 130
    assert "interrupted: finished work is kept" in one_error_line(err)
    assert not [r for r in logged if r.exc_info or "KeyboardInterrupt" in r.getMessage()]
    code, _, err = run(capsys, "export", out, "-o", tmp_path / "c.yaml")
    assert code == 0, err
    assert load_config(tmp_path / "c.yaml").validation["trial"] in (0, 1)


def test_an_interrupted_predict_says_what_it_left(capsys, tmp_path, saved_model, monkeypatch):
    """No trials to resume: predict says that nothing was written, not that work is kept."""
    from autolayer import classifier

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(classifier, "predict_file", interrupted)
    (tmp_path / "in.txt").write_text("good film\n")
    code, _, err = run(capsys, "predict", saved_model, "-i", tmp_path / "in.txt")
    assert code == 130
    assert one_error_line(err) == "error: interrupted: no predictions were written"


def test_export_from_an_output_folder_needs_no_storage_or_name(
    capsys, tmp_path, home, tiny_models, tiny_dataset, monkeypatch, caplog
):
    out = tmp_path / "s"
    code, out_text, err = _search(capsys, tiny_dataset, tiny_models["bert"], out, "--n-trials", "2")
    assert code == 0, err
    assert f"autolayer export {out}" in out_text
    code, _, err = run(capsys, "export", out, "-o", tmp_path / "c.yaml")
    assert code == 0, err
    code, _, err = run(capsys, "export", out, "--study-name", "nope", "-o", tmp_path / "d.yaml")
    assert code != 0 and "autolayer-tiny-" in one_error_line(err)  # the names that exist
    # what the study's summary must say (trials left out, an anchor that never ran) is said
    from dataclasses import replace

    import autolayer.search as search

    real = search.collect

    def noted(*args, **kwargs):
        return replace(real(*args, **kwargs), notes=("2 finished trial(s) left out",))

    monkeypatch.setattr(search, "collect", noted)
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        code, _, err = run(capsys, "export", out, "-o", tmp_path / "e.yaml")
    assert code == 0, err
    assert "2 finished trial(s) left out" in [r.getMessage() for r in caplog.records]


def test_export_writes_the_metric_the_study_was_made_with(
    capsys, tmp_path, home, tiny_models, tiny_dataset
):
    out = tmp_path / "s"
    args = ["--n-trials", "2", "--metric", "macro_f1"]
    code, _, err = _search(capsys, tiny_dataset, tiny_models["bert"], out, *args)
    assert code == 0, err
    assert run(capsys, "export", out, "-o", tmp_path / "c.yaml")[0] == 0
    config = load_config(tmp_path / "c.yaml")
    assert config.metric == "macro_f1" and "macro_f1" in config.validation


# ---------------------------------------------------------------------------------------------
# 3. Tracebacks


def test_apply_accepts_device_auto(capsys, tmp_path, home, config, tiny_dataset):
    code, _, err = run(
        capsys, "apply", config, "-d", tiny_dataset, "-o", tmp_path / "m", "--device", "auto"
    )
    assert code == 0, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["extract", "apply"])
def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path, home, config, tiny_models, command):
    args = {
        "extract": ["extract", "-m", tiny_models["bert"]],
        "apply": ["apply", config, "-o", tmp_path / "m"],
    }[command]
    code, _, err = run(capsys, *args, "--device", "cuda")
    assert code != 0 and "CUDA" in one_error_line(err)


def test_max_length_beyond_the_model_is_cut_with_a_note(
    capsys, tmp_path, home, tiny_models, caplog
):
    rows = [{"text": " ".join(["good"] * 600), "label": "pos"}, {"text": "bad", "label": "neg"}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    code, _, err = run(
        capsys, "extract", "-m", tiny_models["bert"], "-d", path, "--max-length", "1024"
    )
    assert code == 0, err
    assert "texts are cut at 128 tokens" in caplog.text


def test_an_unexpected_error_is_one_line_not_a_traceback(capsys, monkeypatch, home):
    from autolayer import zoo as zoo_module

    def broken():
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(zoo_module, "status", broken)
    code, _, err = run(capsys, "zoo", "list")
    assert code != 0
    line = one_error_line(err)
    assert "RuntimeError: boom" in line and "-v" in line


# ---------------------------------------------------------------------------------------------
# 4. Silent wrong results


def test_predictions_are_written_in_the_format_the_extension_names(capsys, tmp_path, saved_model):
    import pyarrow.parquet as pq

    (tmp_path / "in.txt").write_text("good film\n\nbad plot\n")
    out = tmp_path / "p.parquet"
    code, _, err = run(capsys, "predict", saved_model, "-i", tmp_path / "in.txt", "-o", out)
    assert code == 0, err
    table = pq.read_table(out).to_pylist()
    assert [r["row"] for r in table] == [0, 2]  # the blank line 1 is skipped, not renumbered
    assert {"text", "label", "p_neg", "p_pos"} <= set(table[0])
    code, _, err = run(
        capsys, "predict", saved_model, "-i", tmp_path / "in.txt", "-o", tmp_path / "p.csv"
    )
    assert code == 0, err
    written = (tmp_path / "p.csv").read_bytes()
    assert written.startswith(b"row,text,label,p_neg,p_pos\n") and b"\r" not in written


def test_predict_passes_an_id_column_through(capsys, tmp_path, saved_model):
    path = tmp_path / "in.csv"
    path.write_text("key,text\nr7,good film\nr9,   \nr8,bad plot\n")
    code, out, err = run(capsys, "predict", saved_model, "-i", path, "--id-column", "key")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["row"], r["key"]) for r in rows] == [(0, "r7"), (2, "r8")]


def test_a_saved_model_whose_config_names_another_layer_is_refused(capsys, tmp_path, saved_model):
    (tmp_path / "in.txt").write_text("good film\n")
    path = saved_model / "config.yaml"
    edited = yaml.safe_load(path.read_text())
    edited["models"][0]["layer"] = 3
    path.write_text(yaml.safe_dump(edited))
    code, _, err = run(capsys, "predict", saved_model, "-i", tmp_path / "in.txt")
    assert code != 0 and "layer 3 (trained on 2)" in one_error_line(err)


# ---------------------------------------------------------------------------------------------
# 5. What a user expects


@pytest.mark.parametrize("kind", ["txt", "no label column", "one class"])
def test_extract_embeds_unlabelled_text(capsys, tmp_path, home, tiny_models, kind):
    if kind == "txt":
        path = tmp_path / "texts.txt"
        path.write_text("good film\nbad plot\nfun story\n")
    else:
        rows = [{"text": t} for t in ("good film", "bad plot", "fun story")]
        if kind == "one class":
            rows = [{**r, "label": "a"} for r in rows]
        path = write_jsonl(tmp_path / "texts.jsonl", rows)
    out = tmp_path / "x.npy"
    code, _, err = run(capsys, "extract", "-m", tiny_models["bert"], "-d", path, "-o", out)
    assert code == 0, err
    assert np.load(out).shape == (3, 5, 32)


def test_predict_without_output_writes_jsonl_to_stdout(capsys, tmp_path, saved_model):
    (tmp_path / "in.txt").write_text("good film\nbad plot\n")
    code, out, err = run(capsys, "predict", saved_model, "-i", tmp_path / "in.txt")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["row"] for r in rows] == [0, 1] and {r["label"] for r in rows} <= {"neg", "pos"}


def test_apply_on_a_single_file_trains_on_all_of_it(capsys, tmp_path, home, config, tiny_dataset):
    code, out, err = run(
        capsys, "apply", config, "-d", tiny_dataset / "train.jsonl", "-o", tmp_path / "m"
    )
    assert code == 0, err
    assert "no test split" in out
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["n_train"] == 40 and metrics["accuracy"] is None


def test_apply_and_predict_read_the_data_and_columns_the_config_was_made_on(
    capsys, caplog, tmp_path, home, tiny_models, tiny_dataset, one_thread, monkeypatch
):
    for split in ("train", "test"):
        lines = (tiny_dataset / f"{split}.jsonl").read_text().splitlines()
        rows = [{"sentence": r["text"], "sentiment": r["label"]} for r in map(json.loads, lines)]
        write_jsonl(tmp_path / "renamed" / f"{split}.jsonl", rows)
    monkeypatch.chdir(tmp_path)
    columns = ["--text-column", "sentence", "--label-column", "sentiment"]
    model = ["--models", tiny_models["bert"], "--n-trials", "1"]
    code, _, err = run(capsys, "recommend", "-d", "renamed", *columns, *model, "-o", "out")
    assert code == 0, err
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # a relative path was recorded absolute
    caplog.clear()
    code, said, err = run(capsys, "apply", "../out/recommendation.yaml", "-o", "model")
    assert code == 0, err
    assert "(the config's; -d for other data)" in said and "made on other data" not in caplog.text
    assert json.loads(Path("model/metrics.json").read_text())["n_test"] == 20
    Path("new.csv").write_text("sentence\ngood fun\n")
    code, out, err = run(capsys, "predict", "model", "-i", "new.csv")
    assert code == 0, err
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["good fun"]
    Path("other.csv").write_text("text\ngood fun\n")
    code, _, err = run(capsys, "predict", "model", "-i", "other.csv")
    assert code != 0 and "text_column='sentence' is not a column" in err
    assert "training data had its texts in; pass --text-column" in err
    code, _, err = run(capsys, "predict", "model", "-i", "other.csv", "--text-column", "text")
    assert code == 0, err
    code, _, err = run(  # other data: the usual column names, not the recorded ones
        capsys, "apply", "../out/recommendation.yaml", "-d", tiny_dataset, "-o", "model2"
    )
    assert code == 0, err


def test_apply_repeats_the_capped_sample_the_recommendation_was_made_on(
    capsys, caplog, tmp_path, home, tiny_models, tiny_dataset, one_thread
):
    model = ["--models", tiny_models["bert"], "--n-trials", "1", "--max-train-samples", "24"]
    code, _, err = run(capsys, "recommend", "-d", tiny_dataset, *model, "-o", tmp_path / "out")
    assert code == 0, err
    config = tmp_path / "out" / "recommendation.yaml"
    sample = load_config(config).dataset["sample"]
    assert sample["max_train_samples"] == 24 and sample["seed"] == 0
    caplog.clear()
    code, _, err = run(capsys, "apply", config, "-o", tmp_path / "model")
    assert code == 0, err
    assert "sample of 24 training rows (seed 0)" in caplog.text
    assert "made on other data" not in caplog.text
    assert json.loads((tmp_path / "model" / "metrics.json").read_text())["n_train"] == 24
    caplog.clear()
    code, _, err = run(capsys, "apply", config, "--all-rows", "-o", tmp_path / "all")
    assert code == 0, err
    assert "trained on every row; the config was chosen on its sample of 24" in caplog.text
    assert "made on other data" not in caplog.text
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["n_train"] == 40


def test_files_and_folders_follow_the_umask(capsys, tmp_path, home, config, tiny_dataset):
    previous = os.umask(0o022)
    try:
        code, _, err = run(capsys, "apply", config, "-d", tiny_dataset, "-o", tmp_path / "m")
        assert code == 0, err
        (tmp_path / "in.txt").write_text("good film\n")
        out = tmp_path / "p.jsonl"
        assert run(capsys, "predict", tmp_path / "m", "-i", tmp_path / "in.txt", "-o", out)[0] == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755
    for path in [*(tmp_path / "m").iterdir(), out]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


@pytest.mark.parametrize("command", ["score", "complementarity"])
def test_score_and_complementarity_take_pooling_and_max_length(
    capsys, tmp_path, home, tiny_models, tiny_dataset, command
):
    models = f"{tiny_models['bert']},{tiny_models['llama']}"
    code, _, err = run(
        capsys, command, "-m", models, "-d", tiny_dataset, "--pooling", "last", "--max-length", "8"
    )
    assert code == 0, err
    metas = [json.loads(p.read_text()) for p in (home / "embeddings").glob("*/meta.json")]
    assert metas and {(m["pooling"], m["max_length"]) for m in metas} == {("last", 8)}


# ---------------------------------------------------------------------------------------------
# Found by a second new-user tryout


def test_a_corrupt_saved_head_is_one_line_not_a_bug(capsys, tmp_path, saved_model):
    (saved_model / "head.safetensors").write_bytes(b"\xff" * 64)
    (tmp_path / "in.txt").write_text("good film\n")
    code, _, err = run(capsys, "predict", saved_model, "-i", tmp_path / "in.txt")
    assert code == ConfigError.exit_code and "is corrupt" in one_error_line(err)


def test_overwrite_in_the_current_directory_keeps_the_directory(
    capsys, tmp_path, home, config, tiny_dataset, saved_model, monkeypatch
):
    before = saved_model.stat().st_ino
    monkeypatch.chdir(saved_model)
    code, _, err = run(capsys, "apply", config, "-d", tiny_dataset, "-o", ".", "--overwrite")
    assert code == 0, err
    assert saved_model.stat().st_ino == before and Path.cwd().exists()
    assert sorted(p.name for p in saved_model.iterdir()) == NEURAL_MODEL_FILES


def test_library_warnings_are_one_line(capsys, tmp_path, home, tiny_models, caplog):
    rows = [{"text": f"good film {i}", "label": "ab"[i % 2]} for i in range(9)]
    rows.append({"text": "one more bad plot", "label": "c"})  # a class of one: warned
    rows.append({"text": "another bad plot", "label": "c"})
    path = write_jsonl(tmp_path / "rare.jsonl", rows)
    code, _, err = run(capsys, "score", "-m", tiny_models["bert"], "-d", path, "--folds", "3")
    assert code == 0, err
    warned = [r for r in caplog.records if r.name == "autolayer" and "folds" in r.getMessage()]
    assert warned and "\n" not in warned[0].getMessage()
    assert "UserWarning" not in err and "warnings.warn" not in err


def test_export_of_a_folder_with_two_studies_takes_its_recommendation(
    capsys, tmp_path, home, tiny_models, tiny_dataset
):
    out = tmp_path / "out"
    bert, llama = str(tiny_models["bert"]), str(tiny_models["llama"])
    for models in (bert, llama):
        code, _, err = run(
            capsys,
            "recommend",
            "-d",
            tiny_dataset,
            "--models",
            models,
            "--n-trials",
            "1",
            "-o",
            out,
        )
        assert code == 0, err
    code, _, err = run(capsys, "export", out, "-o", tmp_path / "c.yaml")
    assert code == 0, err
    assert load_config(tmp_path / "c.yaml").models[0].spec == llama


def test_a_users_own_sqlite_file_named_study_db_is_never_written_into(
    capsys, tmp_path, home, tiny_models, tiny_dataset
):
    import sqlite3
    from contextlib import closing

    out = tmp_path / "mine"
    out.mkdir()
    with closing(sqlite3.connect(out / "study.db")) as db:
        db.execute("CREATE TABLE customers (name TEXT)")
        db.commit()
    before = (out / "study.db").read_bytes()
    code, _, err = _search(capsys, tiny_dataset, tiny_models["bert"], out, "--n-trials", "2")
    assert code != 0 and "not a study database" in one_error_line(err)
    assert (out / "study.db").read_bytes() == before

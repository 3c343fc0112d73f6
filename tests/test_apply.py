"""apply: where a model is saved (never over what autolayer did not write), which
data and sample it trains on, and the device it runs on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autolayer.classifier import check_model_folder, model_files
from autolayer.config import load_config
from autolayer.errors import ConfigError, DataError
from autolayer.predictions import predict_file
from autolayer.sources import SOURCES, FeatureSource
from tests.conftest import TINY_HEAD, one_error_line, run, write_config, write_jsonl

# What apply saves for a transformer's features (no TF-IDF fitted).
NEURAL_MODEL_FILES = [
    "config.yaml",
    "features.json",
    "head.json",
    "head.safetensors",
    "metrics.json",
]


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


def test_a_model_folder_may_hold_the_files_of_every_registered_head_and_source(
    tmp_path, monkeypatch
):
    """A source registered after import (a plug-in) counts: its saved files make a model
    folder no less autolayer's, while a file nobody registered keeps it the user's."""

    class Saving(FeatureSource):  # only its files matter here
        files = ("saving.json",)

    assert {"head.json", "head.safetensors", "tfidf.json", "tfidf.safetensors"} <= set(
        model_files()
    )
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("config.yaml", "head.json", "head.safetensors", "saving.json"):
        (folder / name).write_text("x")
    with pytest.raises(ConfigError, match="did not write"):
        check_model_folder(folder, overwrite=True)
    monkeypatch.setitem(SOURCES, "saving", Saving)
    assert "saving.json" in model_files()
    check_model_folder(folder, overwrite=True)


def test_apply_into_an_empty_folder_works(capsys, tmp_path, home, config, tiny_dataset):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "apply", config, "-d", tiny_dataset, "-o", tmp_path / "empty")
    assert code == 0, err
    assert (tmp_path / "empty" / "head.safetensors").is_file()


def test_overwrite_in_the_current_directory_keeps_the_directory(
    capsys, tmp_path, home, config, tiny_dataset, saved_model, monkeypatch
):
    before = saved_model.stat().st_ino
    monkeypatch.chdir(saved_model)
    code, _, err = run(capsys, "apply", config, "-d", tiny_dataset, "-o", ".", "--overwrite")
    assert code == 0, err
    assert saved_model.stat().st_ino == before and Path.cwd().exists()
    assert sorted(p.name for p in saved_model.iterdir()) == NEURAL_MODEL_FILES


def test_apply_accepts_device_auto(capsys, tmp_path, home, config, tiny_dataset):
    code, _, err = run(
        capsys, "apply", config, "-d", tiny_dataset, "-o", tmp_path / "m", "--device", "auto"
    )
    assert code == 0, err


@pytest.mark.parametrize("flag", [True, False])
def test_apply_gives_trust_remote_code_to_every_extraction(
    capsys, tmp_path, home, config, tiny_dataset, trust_seen, flag
):
    """apply's --trust-remote-code reaches every source it builds (a model that needs its
    own code can be trained on, not only searched)."""
    args = ["apply", config, "-d", tiny_dataset, "-o", tmp_path / "m"]
    code, _, err = run(capsys, *args, *(["--trust-remote-code"] if flag else []))
    assert code == 0, err
    assert trust_seen and set(trust_seen) == {flag}


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
    assert code != 0 and "--text-column='sentence' is not a column" in err
    assert "training data had its texts in; pass --text-column" in err and "text_column" not in err
    with pytest.raises(DataError, match=r"texts in; pass text_column\)$"):  # the library's words
        predict_file("model", "other.csv")
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


def test_apply_says_the_rows_an_mlp_held_out_to_stop_early(
    capsys, tmp_path, home, tiny_models, tiny_dataset
):
    """A head that holds out a tenth of its rows to stop on trains on the rest: apply says
    so, and writes how many into metrics.json (a head that holds none out writes no key)."""
    head = {"kind": "mlp", "params": {**TINY_HEAD, "validation_fraction": 0.1}}
    held = write_config(tmp_path / "held", tiny_models["bert"], head=head)
    code, out, err = run(capsys, "apply", held, "-d", tiny_dataset, "-o", tmp_path / "m")
    assert code == 0, err
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["n_held_out"] == 4  # a tenth of the 40 training rows
    assert f"trained on {metrics['n_train'] - 4} texts, 4 held out to stop early" in out

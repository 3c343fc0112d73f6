"""Files written by schema 1 (before heads were plug-ins) still load and predict the same:
the committed ``tests/data/schema1`` (see its README) — a recommendation, an MLP model over
TF-IDF + a tiny BERT, a linear model, and the predictions that version made with them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from autolayer.config import FusionConfig, HeadChoice, load_config
from tests.conftest import run

SCHEMA1 = Path(__file__).parent / "data" / "schema1"
MLP_DEFAULTS = {"patience": 10, "weight_decay": 0.0}  # fields schema 1 did not have


def test_a_schema_1_recommendation_reads_as_its_fields_say():
    config = load_config(SCHEMA1 / "recommendation.yaml")
    assert config.head == HeadChoice(
        "mlp",
        {
            "operator": "sum",
            "width": 1024,
            "hidden": 256,
            "dropout": 0.1,
            "lr": 0.0002404627213982023,
            "batch_size": 100,
            "epochs": 7,
            **MLP_DEFAULTS,
        },
    )
    assert [(m.spec, m.layer, m.max_length) for m in config.models] == [
        ("minilm", 2, 128),
        ("mpnet", 11, 128),
    ]
    assert config.label_names[:2] == ("acq", "crude") and len(config.label_names) == 8
    assert (config.task, config.metric, config.seed) == ("single_label", "accuracy", 0)
    assert config.validation["accuracy"] == 0.9625 and config.cost["params"] == 1446152
    assert config.dataset["fingerprint"].startswith("e4515c22")
    assert config.schema_version == 2  # read into today's schema


def test_schema_1_model_configs_read_as_their_fields_say():
    mlp = load_config(SCHEMA1 / "mlp" / "config.yaml")
    assert mlp.head == HeadChoice(
        "mlp",
        {
            "operator": "sum",
            "width": 16,
            "hidden": 8,
            "dropout": 0.0,
            "lr": 0.003,
            "batch_size": 8,
            "epochs": 3,
            **MLP_DEFAULTS,
        },
    )
    assert [(m.spec, m.layer, m.pooling) for m in mlp.models] == [
        ("tfidf", 0, "mean"),
        ("./bert", 2, "mean"),
    ]
    linear = load_config(SCHEMA1 / "linear" / "config.yaml")
    assert linear.head == HeadChoice("linear", {})
    assert [(m.spec, m.layer, m.pooling, m.max_length) for m in linear.models] == [
        ("./bert", 3, "cls", 64)
    ]
    assert (linear.label_names, linear.seed) == (("neg", "pos"), 7)


@pytest.mark.parametrize("model", ["mlp", "linear"])
def test_a_schema_1_model_predicts_as_it_did(capsys, tmp_path, monkeypatch, model):
    """Same labels exactly, same probabilities to float32 rounding of another machine."""
    shutil.copytree(SCHEMA1, tmp_path / "schema1")
    monkeypatch.chdir(tmp_path / "schema1")  # the configs name the encoder "./bert"
    monkeypatch.setenv("AUTOLAYER_HOME", str(tmp_path / "home"))
    code, _, err = run(capsys, "predict", model, "-i", "texts.jsonl", "-o", "out.jsonl")
    assert code == 0, err
    got = _rows(Path("out.jsonl"))
    expected = _rows(Path(f"{model}-predictions.jsonl"))
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    assert [r["row"] for r in got] == [r["row"] for r in expected]
    assert np.allclose(_proba(got), _proba(expected), atol=1e-5)


@pytest.mark.parametrize("model", ["mlp", "linear"])
def test_a_schema_1_config_trains_again_into_the_same_head(
    capsys, tmp_path, monkeypatch, tiny_dataset, model
):
    """``apply`` of a schema-1 config on the data it was applied to then (the tests' tiny
    data set) predicts what that version's head did: the head's training kept its numbers
    (to the rounding of another thread count)."""
    shutil.copytree(SCHEMA1, tmp_path / "schema1")
    monkeypatch.chdir(tmp_path / "schema1")
    monkeypatch.setenv("AUTOLAYER_HOME", str(tmp_path / "home"))
    code, _, err = run(capsys, "apply", f"{model}/config.yaml", "-d", tiny_dataset, "-o", "new")
    assert code == 0, err
    code, _, err = run(capsys, "predict", "new", "-i", "texts.jsonl", "-o", "out.jsonl")
    assert code == 0, err
    got = _rows(Path("out.jsonl"))
    expected = _rows(Path(f"{model}-predictions.jsonl"))
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    assert np.allclose(_proba(got), _proba(expected), atol=1e-4)


def test_a_config_saved_today_reads_back_equal_in_schema_2(tmp_path):
    old = load_config(SCHEMA1 / "mlp" / "config.yaml")
    path = old.save(tmp_path / "config.yaml")
    saved = yaml.safe_load(path.read_text())
    assert saved["schema_version"] == 2 and "operator" not in saved
    assert saved["head"] == {"kind": "mlp", "params": dict(old.head.params)}
    again = load_config(path)
    assert again == old and isinstance(again, FusionConfig)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _proba(rows: list[dict]) -> np.ndarray:
    return np.asarray([[r["probabilities"][c] for c in ("neg", "pos")] for r in rows])

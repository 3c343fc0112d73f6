"""The exported configuration: a YAML round trip, and every field validated on load."""

from __future__ import annotations

import pytest
import yaml

from autolayer.config import FusionConfig, ModelChoice, from_dict, load_config
from autolayer.errors import ConfigError


def _config() -> FusionConfig:
    return FusionConfig(
        models=(ModelChoice("minilm", "abc", 4, 7, pooling="last", max_length=128),),
        operator="concat",
        width=256,
        hidden=128,
        dropout=0.1,
        lr=1e-3,
        batch_size=100,
        epochs=12,
        label_names=("neg", "pos"),
        dataset={"name": "mr", "fingerprint": "f" * 64},
        metric="macro_f1",
        seed=7,
        validation={"macro_f1": 0.8123456789},
    )


def test_a_config_survives_a_yaml_round_trip_exactly(tmp_path):
    config = _config()
    assert load_config(config.save(tmp_path / "c.yaml")) == config


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"colour": "blue"}, "unknown field(s) 'colour'"),
        ({"width": 0}, "'width' must be >= 1"),
        ({"operator": "tensor"}, "operator must be one of"),
        ({"label_names": ["one"]}, "at least 2 classes"),
        ({"schema_version": 2}, "schema_version 2"),
    ],
)
def test_every_field_is_validated_in_one_line(change, named):
    data = {**_config().to_dict(), **change}
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        from_dict(data)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"layer": 7}, "outside 0..6"),
        ({"pooling": "max"}, "pooling must be one of"),
        ({"pooling_mode": "max"}, "'pooling_mode'"),
        ({"identity": None}, "'identity' must be str"),
    ],
)
def test_every_model_field_is_validated(change, named):
    data = _config().to_dict()
    data["models"] = [{**data["models"][0], **change}]
    with pytest.raises(ConfigError, match=named):
        from_dict(data, "c.yaml")


def test_a_file_that_is_not_yaml_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "c.yaml")
    assert yaml.safe_load(_config().save(tmp_path / "d.yaml").read_text())["seed"] == 7


def test_a_linear_head_over_a_sparse_source_or_a_broken_draw_is_refused_on_load(tmp_path):
    import yaml

    from autolayer.config import load_config

    base = {
        "schema_version": 1,
        "models": [{"spec": "tfidf", "identity": "x", "layer": 0, "n_hidden_states": 1}],
        "operator": "concat",
        "width": 0,
        "hidden": 8,
        "dropout": 0.0,
        "lr": 0.0,
        "batch_size": 8,
        "epochs": 1,
        "label_names": ["neg", "pos"],
        "head": "linear",
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError, match="linear head takes dense features; tfidf is sparse"):
        load_config(path)
    broken = {**base, "head": "mlp", "width": 16, "lr": 0.001, "dataset": {"draw": 8}}
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(ConfigError, match="dataset.draw must map"):
        load_config(path)

"""The exported configuration: a YAML round trip, and every field validated on load."""

from __future__ import annotations

import re

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
        ({"width": 0}, "'width' must be an integer in [1, 65536]; got 0"),
        ({"operator": "tensor"}, "operator must be one of"),
        ({"label_names": ["one"]}, "at least 2 classes"),
        ({"schema_version": 2}, "schema_version 2"),
    ],
)
def test_every_field_is_validated_in_one_line(change, named):
    data = {**_config().to_dict(), **change}
    with pytest.raises(ConfigError, match=re.escape(named)):
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


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"epochs": 1_000_000_000}, "'epochs' must be an integer in [1, 1000]; got 1000000000"),
        ({"epochs": 2.5}, "'epochs' must be an integer in [1, 1000]; got 2.5"),
        ({"lr": 1.0e30}, "'lr' must be a number in (0, 1]; got 1e+30"),
        ({"lr": 0}, "'lr' must be a number in (0, 1]; got 0"),
        ({"lr": float("nan")}, "'lr' must be a number in (0, 1]; got nan"),
        ({"lr": "fast"}, "'lr' must be a number in (0, 1]; got 'fast'"),
        ({"dropout": 1.0}, "'dropout' must be a number in [0, 1); got 1.0"),
        ({"hidden": True}, "'hidden' must be an integer in [1, 65536]; got True"),
        ({"batch_size": 0}, "'batch_size' must be an integer in [1, 1048576]; got 0"),
        ({"width": 10**9}, "'width' must be an integer in [1, 65536]"),
        ({"seed": "x"}, "'seed' must be an integer in [0, 4294967295]; got 'x'"),
        ({"seed": 2**33}, "'seed' must be an integer in [0, 4294967295]; got 8589934592"),
    ],
)
def test_the_heads_numbers_are_bounded_naming_the_file_and_the_field(tmp_path, change, named):
    """Like scikit-learn's parameter constraints: a typo (``epochs: 1000000000``, ``lr:
    1.0e30``) is refused when the config is read, not run for days or into a NaN head."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**_config().to_dict(), **change}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: field ") and named in str(caught.value)


@pytest.mark.parametrize("value", [-5, 1, "long", None, 2.0])
def test_a_models_max_length_is_checked_on_load_naming_the_file_and_the_field(tmp_path, value):
    data = _config().to_dict()
    data["models"] = [{**data["models"][0], "max_length": value}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    expected = f"{path}: models[0]: field 'max_length' must be an integer >= 2; got {value!r}"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path)


def test_a_linear_heads_unused_width_and_lr_may_be_zero():
    data = {**_config().to_dict(), "head": "linear", "width": 0, "lr": 0.0}
    config = from_dict(data)
    assert (config.width, config.lr) == (0, 0.0)

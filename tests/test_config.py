"""The exported configuration: a YAML round trip, and every field validated on load."""

from __future__ import annotations

import re

import pytest
import yaml

from autolayer.config import FusionConfig, HeadChoice, ModelChoice, from_dict, load_config
from autolayer.errors import ConfigError

MLP = {
    "operator": "concat",
    "width": 256,
    "hidden": 128,
    "dropout": 0.1,
    "lr": 1e-3,
    "batch_size": 100,
    "epochs": 12,
}
DEFAULTS = {"patience": 10, "weight_decay": 0.0}  # what the MLP head completes


def _config() -> FusionConfig:
    return FusionConfig(
        models=(ModelChoice("minilm", "abc", 4, 7, pooling="last", max_length=128),),
        head=HeadChoice("mlp", {**MLP, **DEFAULTS}),
        label_names=("neg", "pos"),
        dataset={"name": "mr", "fingerprint": "f" * 64},
        metric="macro_f1",
        seed=7,
        validation={"macro_f1": 0.8123456789},
    )


def _schema1(**changes) -> dict:
    """``_config()`` as schema 1 wrote it: the MLP's fields flat, ``head`` its kind."""
    data = {k: v for k, v in _config().to_dict().items() if k not in ("head", "task")}
    return {**data, "schema_version": 1, **MLP, "head": "mlp", **changes}


def _with_head(schema: int, change: dict) -> dict:
    """``_config()`` in ``schema`` with ``change`` made to its head's fields (the seed stays
    at the top)."""
    if schema == 1:
        return _schema1(**change)
    data = _config().to_dict()
    params = {**data["head"]["params"], **{k: v for k, v in change.items() if k != "seed"}}
    return {
        **data,
        **{k: v for k, v in change.items() if k == "seed"},
        "head": {**data["head"], "params": params},
    }


def test_a_config_survives_a_yaml_round_trip_exactly(tmp_path):
    config = _config()
    path = config.save(tmp_path / "c.yaml")
    assert load_config(path) == config
    saved = yaml.safe_load(path.read_text())
    assert saved["schema_version"] == 2 and saved["task"] == "single_label"
    assert saved["head"] == {"kind": "mlp", "params": {**MLP, **DEFAULTS}}


def test_a_schema_1_config_reads_as_the_same_config():
    assert from_dict(_schema1()) == _config()


def test_the_heads_params_are_completed_with_its_defaults():
    data = _config().to_dict()
    data["head"] = {"kind": "mlp", "params": {"width": 32}}
    assert from_dict(data).head.params == {
        "operator": "concat",
        "width": 32,
        "hidden": 256,
        "dropout": 0.1,
        "lr": 1e-4,
        "batch_size": 100,
        "epochs": 120,
        "patience": 10,
        "weight_decay": 0.0,
    }


def test_make_head_builds_the_configs_head_for_its_task_and_metric():
    head = _config().make_head()
    assert (head.kind, head.params, head.task.name, head.metric) == (
        "mlp",
        {**MLP, **DEFAULTS},
        "single_label",
        "macro_f1",
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"colour": "blue"}, "unknown field(s) 'colour'"),
        ({"label_names": ["one"]}, "at least 2 classes"),
        ({"schema_version": 3}, "unsupported schema_version 3; this autolayer reads 1 and 2"),
        ({"head": "mlp"}, "field 'head' must be a mapping; got 'mlp'"),
        ({"head": {"params": {}}}, "head: missing required field 'kind'"),
        ({"head": {"kind": "mlp", "size": 3}}, "head: unknown field(s) 'size'"),
        ({"head": {"kind": "mlp", "params": [1]}}, "head: field 'params' must be a mapping"),
        ({"head": {"kind": "tree", "params": {}}}, "head must be one of"),
        ({"head": {"kind": "linear", "params": {"width": 8}}}, "unknown field(s) 'width'"),
        (
            {"head": {"kind": "mlp", "params": {"operator": "tensor"}}},
            "c.yaml: head.params: field 'operator' must be one of",
        ),
        (
            {"head": {"kind": "mlp", "params": {"patience": 10**12}}},
            "c.yaml: head.params: field 'patience' must be an integer in [1, 1000]",
        ),
        ({"task": "regression"}, "task must be one of single_label, multi_label; got 'regression'"),
        ({"task": 3}, "field 'task' must be text; got 3"),
        ({"metric": "auc"}, "metric must be one of ['accuracy', 'macro_f1'], got 'auc'"),
    ],
)
def test_every_field_is_validated_in_one_line(change, named):
    data = {**_config().to_dict(), **change}
    with pytest.raises(ConfigError, match=re.escape(named)) as caught:
        from_dict(data, "c.yaml")
    assert str(caught.value).startswith("c.yaml: ") and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"operator": "tensor"}, "operator must be one of"),
        ({"task": "single_label"}, "unknown field(s) 'task'"),
        ({"head": "tree"}, "head must be one of"),
    ],
)
def test_a_schema_1_config_is_validated_as_that_schema(change, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        from_dict(_schema1(**change))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"layer": 7}, "outside 0..6"),
        ({"pooling": "max"}, "pooling must be one of"),
        ({"pooling_mode": "max"}, "'pooling_mode'"),
        ({"identity": None}, "'identity' must be text"),
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


@pytest.mark.parametrize("schema", [1, 2])
def test_a_linear_head_over_a_sparse_source_loads_and_a_broken_draw_is_refused(tmp_path, schema):
    tfidf = [{"spec": "tfidf", "identity": "x", "layer": 0, "n_hidden_states": 1}]
    head = (
        {"width": 0, "lr": 0.0, "head": "linear"}
        if schema == 1
        else {"head": {"kind": "linear", "params": {}}}
    )
    base = {**(_schema1() if schema == 1 else _config().to_dict()), "models": tfidf, **head}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base))
    assert load_config(path).head.kind == "linear"  # it reads TF-IDF (a linear SVM)
    path.write_text(yaml.safe_dump({**_with_head(schema, {}), "dataset": {"draw": 8}}))
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
        ({"width": 0}, "'width' must be an integer in [1, 65536]; got 0"),
        ({"seed": "x"}, "'seed' must be an integer in [0, 4294967295]; got 'x'"),
        ({"seed": 2**33}, "'seed' must be an integer in [0, 4294967295]; got 8589934592"),
    ],
)
@pytest.mark.parametrize("schema", [1, 2])
def test_the_heads_numbers_are_bounded_naming_the_file_and_the_field(
    tmp_path, schema, change, named
):
    """Like scikit-learn's parameter constraints: a typo (``epochs: 1000000000``, ``lr:
    1.0e30``) is refused when the config is read, not run for days or into a NaN head."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_with_head(schema, change)))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    in_head = schema == 2 and "seed" not in change  # a schema-1 head's fields are flat
    place = f"{path}: head.params: field " if in_head else f"{path}: field "
    assert str(caught.value).startswith(place) and named in str(caught.value)


@pytest.mark.parametrize("value", [-5, 1, "long", None, 2.0])
def test_a_models_max_length_is_checked_on_load_naming_the_file_and_the_field(tmp_path, value):
    data = _config().to_dict()
    data["models"] = [{**data["models"][0], "max_length": value}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    expected = f"{path}: models[0]: field 'max_length' must be an integer >= 2; got {value!r}"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path)


def test_a_schema_1_linear_heads_unused_width_and_lr_may_be_zero():
    config = from_dict(_schema1(head="linear", width=0, lr=0.0))
    assert config.head == HeadChoice("linear", {})
    with pytest.raises(ConfigError, match=re.escape("'hidden' must be an integer in [1, 65536]")):
        from_dict(_schema1(head="linear", width=0, lr=0.0, hidden=0))


def test_a_schema_1_head_in_a_schema_2_config_says_where_its_fields_went() -> None:
    data = yaml.safe_load(
        "schema_version: 2\nmodels: [{spec: tfidf, identity: x, layer: 0, n_hidden_states: 1}]\n"
        "operator: sum\nwidth: 8\nlabel_names: [a, b]\n"
    )
    with pytest.raises(ConfigError, match=r"\(schema 2 keeps operator, width under head.params\)$"):
        from_dict(data, "c.yaml")


def test_a_number_yaml_read_as_text_is_said_to_be_one() -> None:
    """YAML reads ``1e-3`` (no dot) as a string: the refusal says how to write it."""
    data = yaml.safe_load(
        "schema_version: 2\nmodels: [{spec: tfidf, identity: x, layer: 0, n_hidden_states: 1}]\n"
        "head: {kind: mlp, params: {lr: 1e-3}}\nlabel_names: [a, b]\n"
    )
    assert data["head"]["params"]["lr"] == "1e-3"
    with pytest.raises(ConfigError, match=re.escape("got '1e-3' (text to YAML: write 0.001, a")):
        from_dict(data, "c.yaml")

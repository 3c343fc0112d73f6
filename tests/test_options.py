"""Options travel with the data: decided once, held by the prepared state, stored in the
study, read back by export."""

from __future__ import annotations

import re

import numpy as np
import pytest

from autolayer import pipeline
from autolayer.budgets import Budget
from autolayer.errors import ConfigError
from autolayer.options import Options
from autolayer.study import study_context, study_identity
from tests.conftest import run


def test_features_pooled_last_are_exported_as_last(home, tmp_path, tiny_models, tiny_dataset):
    """Features pooled "last" in prepare are exported as "last" by search."""
    prepared = pipeline.prepare(
        str(tiny_dataset), [str(tiny_models["bert"])], top_k=1, pooling="last", max_length=16
    )
    assert prepared.options.pooling == "last"
    result = pipeline.search(
        prepared, output_dir=tmp_path, budget=Budget(n_trials=2), study_name="last"
    )
    config = pipeline.export(result.storage, "last")
    assert {(m.pooling, m.max_length) for m in config.models} == {("last", 16)}


def test_the_metric_and_seed_of_the_options_judge_the_search(
    home, tmp_path, tiny_models, tiny_dataset
):
    options = Options(metric="macro_f1", seed=3)
    prepared = pipeline.prepare(str(tiny_dataset), [str(tiny_models["bert"])], options=options)
    result = pipeline.search(prepared, output_dir=tmp_path, budget=Budget(n_trials=2))
    config = pipeline.export(result.storage, result.study_name)
    assert config.metric == "macro_f1" and config.seed == 3
    assert config.dataset["validation"]["seed"] == 3


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("pooling", "max", "pooling"),
        ("metric", "auc", "metric"),
        ("max_length", 1, "max_length"),
        ("validation_size", 1.5, "validation_size"),
        ("validation_size", "0.2", "validation_size"),
        ("cv_folds", 1, "cv_folds"),
        ("threads", 0, "threads"),
        ("task", "multi_label_someday", "task"),
        ("task", 3, "task"),
        ("trust_remote_code", "yes", "trust_remote_code"),
    ],
)
def test_bad_options_are_one_line_config_errors(field, value, named):
    with pytest.raises(ConfigError, match=named) as caught:
        Options(**{field: value})
    assert caught.value.params == (named,)


def test_an_unknown_task_names_the_registered_ones():
    with pytest.raises(ConfigError) as caught:
        Options(task="regression")
    assert str(caught.value) == "task must be one of single_label, multi_label; got 'regression'"


def test_the_task_and_metric_are_the_datas_unless_named_and_a_result_depends_on_them():
    from autolayer.task import make_task

    single, multi = make_task("single_label"), make_task("multi_label")
    assert Options().for_task(single) == Options(task="single_label").for_task(single)
    assert Options().for_task(single).results()["task"] == "single_label"
    assert Options().for_task(single).metric == "accuracy"
    assert Options().for_task(multi).results()["metric"] == "micro_f1"
    assert Options().for_task(multi) != Options().for_task(single)


def test_trust_remote_code_changes_no_result():
    """A permission, not a setting: the features are keyed by the weights' identity, and a
    model that needs its own code fails to load without it rather than loading otherwise."""
    assert Options(trust_remote_code=True).results() == Options().results()
    assert Options(trust_remote_code=True).extraction()["trust_remote_code"] is True


def test_trust_remote_code_of_the_options_reaches_every_source_a_search_builds(
    home, tmp_path, tiny_models, tiny_dataset, monkeypatch
):
    """Options' trust_remote_code reaches every source search and recommend build (a model
    that needs its own code can be searched)."""
    from autolayer.sources.transformer import TransformerSource

    seen = []
    build = TransformerSource.__init__

    def spy(self, spec, *, trust_remote_code=False):
        seen.append(trust_remote_code)
        build(self, spec, trust_remote_code=trust_remote_code)

    monkeypatch.setattr(TransformerSource, "__init__", spy)
    options = Options(trust_remote_code=True, max_length=16)
    models = [str(tiny_models["bert"])]
    prepared = pipeline.prepare(str(tiny_dataset), models, top_k=1, options=options)
    pipeline.search(prepared, output_dir=tmp_path, budget=Budget(n_trials=1))
    assert seen and all(seen)


@pytest.mark.parametrize("command", ["search", "recommend"])
@pytest.mark.parametrize("flag", [True, False])
def test_the_cli_gives_trust_remote_code_to_a_search(
    command, flag, capsys, home, tmp_path, tiny_dataset, monkeypatch
):
    seen = []

    def stop(data, models, *, options, **kwargs):
        seen.append(options.trust_remote_code)
        raise ConfigError("stop")

    monkeypatch.setattr(pipeline, "prepare", stop)
    args = [command, "-d", tiny_dataset, "--models", "x", "-o", tmp_path / "out"]
    _, _, err = run(capsys, *args, *(["--trust-remote-code"] if flag else []))
    assert err.startswith("error: stop") and seen == [flag]


def test_the_study_records_the_max_length_its_features_took_and_builds_no_source(
    home, tiny_models, tiny_dataset, monkeypatch
):
    """The tiny models have 128 positions: of the 1000 tokens asked for they take 128, which
    the cache keys the features by and the context (hence the config) now records. The
    study is still identified by the option, as studies made before were. Each model was
    resolved once, when the pool entered ``prepare``: the context asks no source again."""
    from autolayer.sources.transformer import TransformerSource

    model = str(tiny_models["bert"])
    prepared = pipeline.prepare(str(tiny_dataset), [model], top_k=1, max_length=1000)
    assert prepared.sources[model].max_length == 128

    def refuse(*args, **kwargs):
        raise AssertionError("a source was built again")

    monkeypatch.setattr(TransformerSource, "__init__", refuse)
    context = study_context(prepared, pipeline.Space())
    assert context["models"][model]["max_length"] == 128
    assert context["models"][model]["identity"] == prepared.sources[model].identity
    features = study_identity(context)["features (pooling, max_length)"]
    assert features == [("mean", 1000)]


def test_unknown_settings_are_named():
    with pytest.raises(ConfigError, match="colour"):
        pipeline.resolve_options(None, {"colour": "blue"})
    assert pipeline.resolve_options(Options(seed=2), {"pooling": "cls"}) == Options(
        seed=2, pooling="cls"
    )


def test_a_study_identified_before_the_split_kind_was_recorded_still_resumes():
    """Studies stored ``size`` (the option) under every split; a config now records it only
    for a carved split, and the identity must not change with that."""

    validation = {"split": "cross-validation", "seed": 0, "n_train": 16, "n_val": 0, "cv_folds": 5}
    context = {
        "dataset": {"fingerprint": "f", "validation": validation},
        "models": {},
        "options": {"validation_size": 0.2, "anchor": None},
    }
    stored = {"size": 0.2, "seed": 0, "n_train": 16, "n_val": 0, "cv_folds": 5}  # as made then
    assert study_identity(context)["validation split"] == stored


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"n_trials": "3"}, "n_trials must be an integer >= 1; got '3'"),
        ({"n_trials": True}, "n_trials must be an integer >= 1; got True"),
        ({"max_models": 1.5}, "max_models must be an integer >= 1; got 1.5"),
        ({"timeout": "10"}, "timeout must be a number of seconds > 0, or None; got '10'"),
        ({"timeout": 0}, "timeout must be a number of seconds > 0, or None; got 0"),
        ({"max_latency_ms": "5"}, "max_latency_ms must be a number >= 0, or None; got '5'"),
        ({"max_params": -1}, "max_params must be a number >= 0, or None; got -1"),
    ],
)
def test_a_budget_names_the_parameter_what_is_allowed_and_what_was_given(settings, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        Budget(**settings)


def test_a_budget_takes_numpy_numbers_as_plain_ones():
    """A NumPy scalar (from a grid) is a number too, stored as a Python one: the limits go
    into the study's JSON attributes."""
    import numpy as np

    budget = Budget(n_trials=np.int64(3), timeout=np.float32(2.5), max_params=np.int64(9))
    assert (budget.n_trials, budget.timeout, budget.limits) == (3, 2.5, {"max_params": 9})
    assert type(budget.n_trials) is int and type(budget.limits["max_params"]) is int


@pytest.mark.parametrize("seed", ["x", -1, 1.5, None, 2**32, 2**33])
def test_the_seed_is_one_numpy_takes_as_in_a_config(seed):
    """Options take the seeds a config takes (see test_config): ``2**33`` is refused here,
    in one line, not later by scikit-learn's split."""
    allowed = "an integer in [0, 4294967295]"
    with pytest.raises(ConfigError, match=re.escape(f"seed must be {allowed}; got {seed!r}")):
        Options(seed=seed)


def test_the_cli_refuses_a_seed_beyond_numpys_range_naming_its_option(capsys, home, tiny_dataset):
    code, _, err = run(capsys, "score", "-m", "x", "-d", tiny_dataset, "--seed", 2**33)
    assert code == 2 and err.startswith("error: --seed must be an integer in [0, 4294967295]")
    assert "Traceback" not in err


def test_options_take_numpy_integers_as_plain_ones():
    """As :class:`Budget` does: a seed drawn by NumPy is an integer, stored as a Python one
    (the options go into the study's JSON attributes)."""
    options = Options(seed=np.int64(3), threads=np.int32(2), validation_size=np.float32(0.25))
    assert (options.seed, options.threads, options.validation_size) == (3, 2, 0.25)
    assert type(options.seed) is int and type(options.validation_size) is float


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"models": 5}, "models must be a model name or a list of model names; got int 5"),
        ({"models": ["a", 5]}, "models[1] must be a model name (text); got int 5"),
        (
            {"budget": {"n_trials": 3}},
            "budget must be an autolayer.Budget, e.g. Budget(n_trials=30), or None; "
            "got dict {'n_trials': 3}",
        ),
        ({"seed": "x"}, "seed must be an integer in [0, 4294967295]; got 'x'"),
    ],
)
def test_recommend_refuses_bad_arguments_before_any_work(tmp_path, settings, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        pipeline.recommend(tmp_path / "no-such-data", output_dir=tmp_path / "out", **settings)
    assert not (tmp_path / "out").exists()


def test_recommend_takes_one_model_name_as_one_model(home, tmp_path, tiny_dataset, monkeypatch):
    """A bare string is one model, not a list of its characters (as ``score`` takes it)."""
    seen = []

    def stop(data, models, **kwargs):
        seen.append(models)
        raise ConfigError("stop")

    monkeypatch.setattr(pipeline, "prepare", stop)
    monkeypatch.setattr(pipeline, "default_study_name", lambda *args: "s")
    with pytest.raises(ConfigError, match="stop"):
        pipeline.recommend(str(tiny_dataset), "minilm", output_dir=tmp_path / "out")
    assert seen == [["minilm"]]

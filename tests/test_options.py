"""Options travel with the data: decided once, held by the prepared state, stored in the
study, read back by export."""

from __future__ import annotations

import pytest

from autolayer import pipeline
from autolayer.budgets import Budget
from autolayer.errors import ConfigError
from autolayer.options import Options


def test_features_pooled_last_are_exported_as_last(home, tmp_path, tiny_models, tiny_dataset):
    """Before: prepare(pooling="last") then search() exported a config saying "mean"."""
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
        ("threads", 0, "threads"),
    ],
)
def test_bad_options_are_one_line_config_errors(field, value, named):
    with pytest.raises(ConfigError, match=named):
        Options(**{field: value})


def test_unknown_settings_are_named():
    with pytest.raises(ConfigError, match="colour"):
        pipeline.resolve_options(None, {"colour": "blue"})
    assert pipeline.resolve_options(Options(seed=2), {"pooling": "cls"}) == Options(
        seed=2, pooling="cls"
    )


def test_a_study_identified_before_the_split_kind_was_recorded_still_resumes():
    """Studies stored ``size`` (the option) under every split; a config now records it only
    for a carved split, and the identity must not change with that."""
    from autolayer.pipeline import study_identity

    validation = {"split": "cross-validation", "seed": 0, "n_train": 16, "n_val": 0, "cv_folds": 5}
    context = {
        "dataset": {"fingerprint": "f", "validation": validation},
        "models": {},
        "options": {"validation_size": 0.2, "anchor": None},
    }
    stored = {"size": 0.2, "seed": 0, "n_train": 16, "n_val": 0, "cv_folds": 5}  # as made then
    assert study_identity(context)["validation split"] == stored

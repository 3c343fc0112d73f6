"""What a finished study recommends, and what its report must say: trials that break the
present budget, an anchor the budget excluded, the anchor rule under two objectives."""

from __future__ import annotations

import logging

import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from autolayer.budgets import Budget
from autolayer.errors import ConfigError
from autolayer.search import INFEASIBLE, collect

CONTEXT = {"options": {"anchor": "m"}, "models": {"m": {"n_hidden_states": 7}}}


def add(study, layer: int, value, latency_ms: float, state=None, **attrs) -> None:
    """A finished trial of model ``m`` at ``layer`` with a linear head and stored costs."""
    costs = {"latency_ms": latency_ms, "memory_mb": 10.0, "params": 66, "fused_dim": 32}
    study.add_trial(
        optuna.trial.create_trial(
            params={"models": "m", "layer:m": layer, "head": "linear"},
            distributions={
                "models": CategoricalDistribution(["m"]),
                "layer:m": CategoricalDistribution([3, 4, 6]),
                "head": CategoricalDistribution(["mlp", "linear"]),
            },
            value=value,
            state=state or optuna.trial.TrialState.COMPLETE,
            user_attrs={**costs, **attrs},
        )
    )


def test_a_resumed_study_never_recommends_what_the_budget_now_forbids():
    study = optuna.create_study(direction="maximize")
    add(study, 3, 0.9, latency_ms=50.0)  # the best, from a run without a latency limit
    add(study, 4, 0.8, latency_ms=5.0)
    assert collect(study, "mem").best.layers == (3,)
    result = collect(study, "mem", Budget(max_latency_ms=10))
    assert result.best.layers == (4,)
    assert any("1 finished trial(s) of an earlier run break this budget" in n for n in result.notes)
    assert result.best not in [t for t in result.trials if t.layers == (3,)]
    with pytest.raises(ConfigError, match="meets this budget.*latency 50"):
        collect(study, "mem", Budget(max_latency_ms=1))


def test_the_report_says_the_anchor_broke_the_budget():
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("context", CONTEXT)
    pruned = optuna.trial.TrialState.PRUNED
    add(study, 6, None, latency_ms=50.0, state=pruned, **{INFEASIBLE: "latency 50 ms > 10"})
    add(study, 4, 0.8, latency_ms=5.0, n_rows=16)
    result = collect(study, "mem", Budget(max_latency_ms=10))
    assert result.best.layers == (4,)
    assert result.notes == (
        "the anchor (m's last layer, linear head) breaks the budget (latency 50 ms > 10)",
    )


def test_two_objectives_say_the_anchor_rule_does_not_apply():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("context", CONTEXT)
    study.add_trial(
        optuna.trial.create_trial(
            params={"models": "m", "layer:m": 6},
            distributions={
                "models": CategoricalDistribution(["m"]),
                "layer:m": CategoricalDistribution([6]),
            },
            values=[0.8, 5.0],
        )
    )
    [note] = collect(study, "mem").notes
    assert "single-objective searches only" in note


def test_folds_fit_the_rarest_class_before_any_extraction(
    tmp_path, home, tiny_dataset, tiny_models, caplog
):
    from autolayer import pipeline

    drawn, options = pipeline.restrict(
        pipeline.load_dataset(tiny_dataset),
        pipeline.Options(max_length=12, cv_folds=5),
        labels_per_class=3,
    )
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        prepared = pipeline.prepare(drawn, [str(tiny_models["bert"])], options=options)
    assert prepared.options.cv_folds == 3 and len(prepared.folds) == 3
    said = [r.getMessage() for r in caplog.records if "cross-validation over" in r.getMessage()]
    assert said == ["cross-validation over 3 folds, not 5: class 'neg' has 3 training examples"]


def test_two_labels_per_class_probe_and_search_with_two_folds(
    tmp_path, home, tiny_dataset, tiny_models, one_thread
):
    from autolayer import pipeline

    rec = pipeline.recommend(
        tiny_dataset,
        [str(tiny_models["bert"])],
        output_dir=tmp_path / "out",
        budget=Budget(n_trials=2),
        labels_per_class=2,
        max_length=12,
    )
    assert rec.reports[0].scores.n_folds == 2
    assert rec.config.dataset["validation"]["cv_folds"] == 2

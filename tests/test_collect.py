"""What a finished study recommends, and what its report must say: trials that break the
present budget, an anchor the budget excluded, the anchor rule under two objectives."""

from __future__ import annotations

import logging

import numpy as np
import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution

from autolayer.budgets import Budget, Cost
from autolayer.config import load_config
from autolayer.data import load_dataset
from autolayer.errors import ConfigError
from autolayer.selection import BASELINE, INFEASIBLE, LIMITS, OVER_BUDGET, collect
from tests.conftest import one_error_line, run

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
    [left_out] = [t for t in result.trials if OVER_BUDGET in t.attrs]
    assert left_out.layers == (3,) and "latency" in left_out.attrs[OVER_BUDGET]
    study.set_user_attr(LIMITS, {"max_latency_ms": 10})  # as the last run stored it
    assert collect(study, "mem").best.layers == (4,)  # export: judged by the stored limits
    # the nearest miss is named (the fastest here), not the most accurate trial
    with pytest.raises(
        ConfigError, match=r"meets this budget; the nearest miss, #1,.*latency 5\.00"
    ):
        collect(study, "mem", Budget(max_latency_ms=1))


def test_the_report_says_the_anchor_broke_the_budget():
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("context", CONTEXT)
    pruned = optuna.trial.TrialState.PRUNED
    add(study, 6, None, latency_ms=50.0, state=pruned, **{INFEASIBLE: "latency 50 ms > 10"})
    add(study, 4, 0.8, latency_ms=5.0, n_rows=16)
    budget = Budget(max_latency_ms=10)
    result = collect(study, "mem", budget)
    assert result.best.layers == (4,)
    [broken] = budget.violations(Cost(50.0, 10.0, 66, 32))
    assert result.notes == (
        f"the anchor (m's last layer, linear head) breaks the budget ({broken})",
    )
    # judged by the present budget: under a looser one the old reason is not repeated,
    # but the ranking still went without the anchor, and says so
    [note] = collect(study, "mem", Budget(max_latency_ms=100)).notes
    assert "breaks" not in note and "has not finished in this study" in note


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
        load_dataset(tiny_dataset),
        pipeline.Options(max_length=12, cv_folds=5),
        labels_per_class=3,
    )
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        prepared = pipeline.prepare(drawn, [str(tiny_models["bert"])], options=options)
    assert prepared.options.cv_folds == 3 and len(prepared.folds) == 3
    said = [r.getMessage() for r in caplog.records if "cross-validation over" in r.getMessage()]
    assert said == ["cross-validation over 3 folds, not 5: class 'neg' has 3 training examples"]


def test_fitted_folds_are_said_once_with_two_sources(
    tmp_path, home, tiny_dataset, tiny_models, one_thread, caplog
):
    """The pair estimates use the folds fitted to the rarest class, not 5 of their own
    (which said a second time, with another number, that the folds had been cut)."""
    import warnings

    from autolayer import pipeline

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        pipeline.recommend(
            tiny_dataset,
            [str(tiny_models["bert"]), "tfidf"],
            output_dir=tmp_path / "out",
            budget=Budget(n_trials=2),
            labels_per_class=3,
            cv_folds=5,
            max_length=12,
        )
    said = [r.getMessage() for r in caplog.records if "folds" in r.getMessage()]
    said += [str(w.message) for w in caught if "folds" in str(w.message)]
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


def scores(accuracy, std, n_folds=5):

    from autolayer.probe import LayerScores

    a = np.asarray(accuracy)
    return LayerScores(a, np.full_like(a, std), a, np.full_like(a, std), n_folds, 16)


@pytest.mark.parametrize(
    ("std", "metric", "said"),
    [
        (0.30, "accuracy", "differ by +25.0 ± 19.0 pt of probe accuracy, within two standard"),
        (0.02, "accuracy", "layer 1/2 beats the last layer by 25.0 ± 1.3 pt (probe CV accuracy"),
        (0.02, "macro_f1", "beats the last layer by 25.0 ± 1.3 pt (probe CV macro-f1 75.0%"),
    ],
)
def test_a_best_layer_is_claimed_only_beyond_the_probes_noise(std, metric, said):
    from types import SimpleNamespace

    from autolayer.pipeline import ModelScores
    from autolayer.reasons import reasons

    report = ModelScores("m", 3, scores([0.5, 0.75, 0.5], std), searched=(1, 2))

    best = SimpleNamespace(models=("m",), value=1.0)  # above the majority class's 50 %
    options = SimpleNamespace(metric=metric)
    y = np.array([0, 1])
    prepared = SimpleNamespace(
        reports=(report,), candidates=(), pairs=(), options=options, y_train=y, y_val=y, folds=()
    )
    [reason] = reasons(prepared, SimpleNamespace(best=best, trials=()), None)
    assert said in reason


def test_another_draw_of_the_same_data_is_named_as_such(tmp_path, tiny_dataset):

    from autolayer import claims
    from autolayer.data import load_dataset

    data = load_dataset(tiny_dataset)
    draw = {"labels_per_class": 8, "seed": 0, "source_fingerprint": data.fingerprint}
    previous = {"dataset": {"name": "tiny", "fingerprint": "f" * 64, "draw": draw}}
    (tmp_path / "recommendation.yaml").write_text(yaml.safe_dump(previous))
    with pytest.raises(ConfigError, match=r"another draw of the same data \(8 labels per class"):
        claims.check_output_dir(tmp_path, data.per_class(16, seed=0), overwrite=False)
    with pytest.raises(ConfigError, match=r"another draw of the same data \(8 labels per class"):
        claims.check_output_dir(tmp_path, data.subsample(10), overwrite=False)
    sample = {"max_train_samples": 12, "seed": 1, "source_fingerprint": data.fingerprint}
    previous["dataset"] = {"name": "tiny", "fingerprint": "f" * 64, "sample": sample}
    (tmp_path / "recommendation.yaml").write_text(yaml.safe_dump(previous))
    with pytest.raises(ConfigError, match=r"same data \(a sample of 12 training rows, seed 1"):
        claims.check_output_dir(tmp_path, data, overwrite=False)
    previous["dataset"]["sample"]["source_fingerprint"] = "e" * 64
    (tmp_path / "recommendation.yaml").write_text(yaml.safe_dump(previous))
    with pytest.raises(ConfigError, match="other data"):
        claims.check_output_dir(tmp_path, data, overwrite=False)


def test_the_pareto_front_is_the_budgets():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for value, latency, params in ((0.9, 1.0, 10**6), (0.8, 3.0, 66), (0.7, 2.0, 66)):
        costs = {"latency_ms": latency, "memory_mb": 1.0, "params": params, "fused_dim": 8}
        study.add_trial(
            optuna.trial.create_trial(
                params={}, distributions={}, values=[value, latency], user_attrs=costs
            )
        )
    result = collect(study, "mem", Budget(max_params=1000))  # the fastest, best one is out
    assert [t.values[0] for t in result.pareto] == [0.8, 0.7]


def test_an_untrained_trial_is_refused_with_its_reason():
    from types import SimpleNamespace

    from autolayer.pipeline import _untrained

    assert _untrained(SimpleNamespace(attrs={INFEASIBLE: "latency 50 > 10"})) == (
        " (infeasible: latency 50 > 10)"
    )
    assert _untrained(SimpleNamespace(attrs={"repeat_of": 3})) == " (a repeat of trial 3)"
    assert _untrained(SimpleNamespace(attrs={})) == ""  # pruned by the pruner: no reason


def test_a_trial_asked_for_by_number_is_read_even_when_none_meets_the_budget():
    from autolayer.selection import summarise_trial

    study = optuna.create_study(direction="maximize")
    add(study, 3, 0.9, latency_ms=50.0)
    study.set_user_attr(LIMITS, {"max_latency_ms": 10})  # a tighter run, interrupted
    with pytest.raises(ConfigError, match="meets this budget"):
        collect(study, "mem")  # nothing to recommend
    trial = summarise_trial(study, 0)  # but `export --trial 0` exports it, with a warning
    assert trial.layers == (3,) and "latency" in trial.attrs[OVER_BUDGET]
    assert summarise_trial(study, 7) is None


@pytest.mark.parametrize("role", ["anchor", "baseline"])
@pytest.mark.parametrize(
    ("state", "attrs", "queued"),
    [
        ("PRUNED", {"surplus": True}, True),  # never trained: a worker's trial limit
        ("PRUNED", {INFEASIBLE: "latency 50 ms > 10"}, True),  # no limit breaks it now
        ("COMPLETE", {}, False),  # trained
    ],
)
def test_a_resumed_study_queues_an_anchor_or_a_baseline_that_was_never_trained(
    state, attrs, queued, role
):
    """The anchor's trial, or a baseline's (then marked a baseline again), queued once."""
    from autolayer.search import _requeue

    study = optuna.create_study(direction="maximize")
    if role == "anchor":
        study.set_user_attr("context", CONTEXT)
    else:
        attrs = {**attrs, BASELINE: True}
    add(
        study,
        6,
        0.8 if state == "COMPLETE" else None,
        latency_ms=50.0,
        state=getattr(optuna.trial.TrialState, state),
        **attrs,
    )
    params = {"models": "m", "layer:m": 6, "head": "linear"}
    baselines = [params] if role == "baseline" else []
    for _ in range(2):  # a second resume finds it waiting: not queued twice
        _requeue(study, [params], Budget(), baselines)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == ([params] if queued else [])
    assert all(bool(t.user_attrs.get(BASELINE)) == (role == "baseline") for t in waiting)


def test_a_trial_another_worker_is_still_suggesting_is_read_without_its_models():
    study = optuna.create_study(direction="maximize")
    add(study, 3, 0.9, latency_ms=5.0)
    running = study.ask()
    running.suggest_categorical("models", ["m"])  # its layer is not suggested yet
    result = collect(study, "mem")
    assert result.best.layers == (3,)
    [partial] = [t for t in result.trials if t.state == "RUNNING"]
    assert partial.models == () and partial.layers == ()


def _search(capsys, tiny_dataset, models, out, *extra):
    return run(capsys, "search", "-d", tiny_dataset, "--models", models, "-o", out, *extra)


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

    import autolayer.selection as selection

    real = selection.collect

    def noted(*args, **kwargs):
        return replace(real(*args, **kwargs), notes=("2 finished trial(s) left out",))

    monkeypatch.setattr(selection, "collect", noted)
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


def _context(head: dict | None = None) -> dict:
    """A study context as ``search`` stores it (``head``: what studies made before trials
    recorded their head's parameters held)."""
    model = {"identity": "x", "n_hidden_states": 7, "pooling": "mean", "max_length": 32}
    return {
        "models": {"a": model, "b": model},
        "label_names": ["neg", "pos"],
        "dataset": {"name": "d", "fingerprint": "f", "validation": {}},
        "options": {},
        "metric": "accuracy",
        "seed": 0,
        **({"head": head} if head else {}),
    }


def _stored(study, params: dict, **attrs) -> None:
    """A finished trial with these Optuna parameters and user attributes."""
    choices = {
        "models": ["a", "b", "a + b"],
        "width": [256, 512],
        "operator": ["sum", "concat"],
        "head": ["mlp", "linear"],
    }
    distributions = {k: CategoricalDistribution(choices.get(k, [2, 3])) for k in params}
    if "lr" in params:
        distributions["lr"] = optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)
    study.add_trial(
        optuna.trial.create_trial(
            params=params, distributions=distributions, value=0.9, user_attrs=attrs
        )
    )


def test_a_trial_stored_before_head_params_exports_the_head_it_trained():
    """Trials of older studies recorded only the searched operator, width and lr (the rest
    in the study's context): their export holds the numbers it always held."""
    from autolayer.config import HeadChoice
    from autolayer.pipeline import trial_config
    from autolayer.selection import summary

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("context", _context({"hidden": 64, "dropout": 0.2, "batch_size": 100}))
    pair = {"models": "a + b", "layer:a": 2, "layer:b": 3, "operator": "sum", "width": 512}
    _stored(study, {**pair, "lr": 2e-3, "head": "mlp"}, head="mlp", best_epoch=6)
    _stored(study, {"models": "a", "layer:a": 2, "width": 256, "lr": 1e-3}, best_epoch=0)
    _stored(study, {"models": "a", "layer:a": 3, "head": "linear"}, head="linear", best_epoch=0)
    context = study.user_attrs["context"]
    heads = [trial_config(summary(t, context), context, "s", "mem").head for t in study.trials]
    fixed = {"hidden": 64, "dropout": 0.2, "batch_size": 100, "patience": 10, "weight_decay": 0}
    assert heads == [
        HeadChoice("mlp", {"operator": "sum", "width": 512, **fixed, "lr": 2e-3, "epochs": 7}),
        HeadChoice("mlp", {"operator": "concat", "width": 256, **fixed, "lr": 1e-3, "epochs": 1}),
        HeadChoice("linear", {}),
    ]
    assert [(t.operator, t.width) for t in collect(study, "mem").trials] == [
        ("sum", 512),
        ("concat", 256),
        ("concat", 0),
    ]


def test_a_trial_exports_its_recorded_head_params_made_final():
    from autolayer.pipeline import trial_config
    from autolayer.selection import summary

    study = optuna.create_study(direction="maximize")
    params = {"operator": "concat", "width": 8, "hidden": 4, "dropout": 0.0, "lr": 1e-3}
    recorded = {**params, "batch_size": 10, "epochs": 60, "patience": 8, "weight_decay": 0.0}
    _stored(study, {"models": "a", "layer:a": 2}, head_params=recorded, best_epoch=3)
    config = trial_config(summary(study.trials[0]), _context(), "s", "mem")
    assert config.head.kind == "mlp" and config.task == "single_label"
    assert config.head.params == {**recorded, "epochs": 4}  # patience kept, unused
    # a trial judged on enough validation rows: the final head stops on its own (issue 31)
    _stored(study, {"models": "a", "layer:a": 3}, head_params=recorded, best_epoch=3, val_rows=500)
    config = trial_config(summary(study.trials[1]), _context(), "s", "mem")
    assert config.head.params == {**recorded, "validation_fraction": 0.1}

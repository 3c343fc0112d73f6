"""The simple baselines in every search (each model's best layer + a linear head, TF-IDF +
linear SVM), trained first and outside the trial budget; the one-standard-error rule that
prefers the cheaper of near-ties; the screen that keeps TF-IDF; the default space's heads
end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest
from scipy import sparse

from autolayer import pipeline
from autolayer.budgets import Budget
from autolayer.complementarity import PairEstimate
from autolayer.errors import ConfigError
from autolayer.search import run_search
from autolayer.selection import (
    BASELINE,
    REPEAT,
    VAL_ROWS,
    TrialSummary,
    recommended,
    trained_count,
    within_one_error,
)
from autolayer.space import Candidate, LayerCost, Space, baseline_trials
from autolayer.task import make_task

SMALL = {"widths": (8,), "hidden": 4, "max_epochs": 2}  # a tiny MLP: these tests time rules


def _dense(name: str, rng: np.random.Generator, y: np.ndarray, shift: float) -> Candidate:
    """A dense candidate of layers (2, 1) (the probe's best first) whose features separate
    the classes by ``shift``; layer 1 is cheaper."""
    x = rng.normal(size=(len(y), 2, 8)).astype(np.float32) + shift * y[:, None, None]
    costs = {1: LayerCost(0.5, 1.0), 2: LayerCost(1.0, 2.0)}
    return Candidate(name, (2, 1), 3, x[:40], x[40:], 1.0, costs)


def _models(seed: int = 0) -> tuple[list[Candidate], np.ndarray, np.ndarray]:
    """Two dense candidates ("a" informative, "b" less so) over 40 train and 10 validation
    rows, and their labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(50) % 2
    return [_dense("a", rng, y, 1.0), _dense("b", rng, y, 0.3)], y[:40], y[40:]


def _tfidf(n: int = 4) -> Candidate:
    return Candidate("t", (0,), 1, sparse.csr_matrix(np.eye(n)), None, 0.1, {0: LayerCost(0, 1)})


def test_the_default_space_offers_every_head_and_the_baselines():
    from autolayer.options import Options

    assert Space().heads == ("mlp", "linear", "late") and Space().baselines
    few = Options(cv_folds=3)
    assert pipeline.default_space(few) == pipeline.default_space(Options()) == Space()


def test_the_baselines_are_each_models_best_layer_alone_under_the_linear_head():
    models, _, _ = _models()
    space = Space(heads=("mlp", "linear"))
    trials = baseline_trials([*models, _tfidf()], space)
    assert trials == [
        {"models": "a", "layer:a": 2, "head": "linear"},
        {"models": "b", "layer:b": 2, "head": "linear"},
        {"models": "t", "layer:t": 0, "head": "linear"},  # TF-IDF + linear SVM
    ]
    # late fusion takes two models or more: one model's head is a choice of its own name
    # (Optuna refuses a categorical whose choices change within a study)
    assert baseline_trials(models, Space())[0] == {
        "models": "a",
        "layer:a": 2,
        "head:mlp,linear": "linear",
    }
    # the head is a parameter only where the space offers several
    assert baseline_trials(models, Space(heads=("linear",)))[0] == {"models": "a", "layer:a": 2}
    assert baseline_trials(models, Space(heads=("mlp",))) == []  # no linear head offered
    assert baseline_trials(models, Space(heads=("mlp", "linear"), baselines=False)) == []


def _search(tmp_path, n_trials: int, max_latency_ms: float | None = None, **settings):
    models, y, y_val = _models()
    return run_search(
        models,
        y,
        y_val,
        task=make_task(),
        storage=f"sqlite:///{tmp_path / 's.db'}",
        study_name="s",
        budget=Budget(n_trials=n_trials, max_latency_ms=max_latency_ms),
        space=Space(heads=("mlp", "linear"), **SMALL),
        prune=False,
        **settings,
    )


def test_baselines_run_first_outside_the_trial_budget_and_only_once(tmp_path, one_thread):
    guided = {"models": "a", "layer:a": 2, "head": "linear"}  # the same as a baseline
    result = _search(tmp_path, 3, first=[guided, {"models": "a + b", "layer:a": 2, "layer:b": 2}])
    study = optuna.load_study(study_name="s", storage=result.storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.params for t in trials[:2]] == [
        {"models": "a", "layer:a": 2, "head": "linear"},
        {"models": "b", "layer:b": 2, "head": "linear"},
    ]
    assert all(t.user_attrs[BASELINE] for t in trials[:2])
    assert all(t.state.name == "COMPLETE" for t in trials[:2])
    assert not any(BASELINE in t.user_attrs for t in trials[2:])
    queued = [t.system_attrs.get("fixed_params") for t in trials]
    assert queued.count(guided) == 1  # the guided trial that is a baseline: queued once
    assert trials[2].params["models"] == "a + b"  # then the guided trials
    # three trials of the budget trained besides the baselines
    assert trained_count(study)[0] == 3 and result.trained == 3
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 5
    # judged on the validation split: its rows, not the cross-validation's "n_rows"
    assert all(t.user_attrs[VAL_ROWS] == 10 and "n_rows" not in t.user_attrs for t in complete)
    assert [t.number for t in result.baselines] == sorted(
        (0, 1), key=lambda n: -study.trials[n].value
    )
    assert all(t.attrs[BASELINE] for t in result.baselines)

    study.enqueue_trial(trials[0].params)  # a draw of a baseline's settings, as TPE makes
    again = _search(tmp_path, 4)  # resumed: one more trial, no baseline again
    study = optuna.load_study(study_name="s", storage=again.storage)
    assert sum(BASELINE in t.user_attrs for t in study.trials) == 2
    assert study.trials[len(trials)].user_attrs[REPEAT] == 0  # never trained again
    assert trained_count(study)[0] == 4 and again.trained == 1
    assert {t.number for t in again.baselines} == {0, 1}


def test_a_baseline_an_earlier_budget_excluded_is_queued_again_when_resumed(tmp_path, one_thread):
    """Under 0.9 ms both baselines (layer 2: 1 ms) break the budget; resumed under no limit
    they are queued again, marked baselines, and trained once each."""
    tight = _search(tmp_path, 1, max_latency_ms=0.9)
    assert tight.baselines == ()
    loose = _search(tmp_path, 2)
    assert sorted(t.models for t in loose.baselines) == [("a",), ("b",)]
    study = optuna.load_study(study_name="s", storage=loose.storage)
    marked = [t for t in study.trials if t.user_attrs.get(BASELINE)]
    assert sorted(t.state.name for t in marked) == ["COMPLETE"] * 2 + ["PRUNED"] * 2
    _search(tmp_path, 2)  # resumed again: trained, so not queued a third time
    study = optuna.load_study(study_name="s", storage=loose.storage)
    assert sum(bool(t.user_attrs.get(BASELINE)) for t in study.trials) == 4


def test_a_study_made_with_the_former_default_space_is_refused_naming_the_heads(tmp_path):
    models, y, y_val = _models()
    settings = {
        "task": make_task(),
        "storage": f"sqlite:///{tmp_path / 's.db'}",
        "study_name": "s",
        "budget": Budget(n_trials=1),
        "prune": False,
    }
    run_search(models, y, y_val, space=Space(heads=("mlp",), **SMALL), **settings)
    with pytest.raises(ConfigError) as refused:
        run_search(models, y, y_val, space=Space(**SMALL), **settings)
    assert (
        'differs in its search space (heads): stored ["mlp"], this command '
        '["mlp","linear","late"] (the default space gained the linear and late heads in this '
        "version; start a new study, or pass --heads mlp / Space(heads=('mlp',))); pass "
        "another study_name"
    ) in str(refused.value)


def _trial(number, value, latency, memory=1.0, params=10, **attrs) -> TrialSummary:
    costs = {"latency_ms": latency, "memory_mb": memory, "params": params}
    return TrialSummary(number, "COMPLETE", (value,), ("m",), (1,), {**costs, **attrs})


def test_the_cheapest_trial_within_one_standard_error_of_the_best_is_recommended():
    # 312 validation rows at 0.997: one standard error is 0.31 pt
    top = _trial(7, 0.997, 1116.0, 546.0, 10_000, val_rows=312)
    close = _trial(3, 0.994, 0.41, 23.0, 2_000, val_rows=312)  # one document less: within
    outside = _trial(5, 0.990, 0.05, 1.0, 10, val_rows=312)  # cheaper still, 2.2 errors below
    chosen, why = recommended([top, close, outside], None)
    assert chosen is close
    assert why == (
        "the one-standard-error rule: #3 scored 0.9940, within one standard error (0.3 pt) "
        "of #7's 0.9970, at 1/2,722 of its latency; #7's extra cost would buy +0.30 pt, "
        "within noise"
    )
    # the same latency: the smaller memory, then fewer parameters, then the higher score
    twin = _trial(4, 0.995, 1116.0, 100.0, 10_000, val_rows=312)
    assert within_one_error([top, twin]) is twin
    assert "at 1/5.5 of its memory;" in recommended([top, twin], None)[1]
    assert (
        "at 63 % of its latency;"
        in recommended([top, _trial(4, 0.995, 700.0, val_rows=312)], None)[1]
    )
    same = [_trial(1, 0.996, 1.0, val_rows=312), _trial(2, 0.995, 1.0, val_rows=312)]
    assert within_one_error([top, *same]).number == 1
    # a trial stored before its validation rows were: the top one stands
    assert within_one_error([_trial(7, 0.997, 1116.0), close]).number == 7


def test_under_folds_the_fewest_head_parameters_within_one_error_are_chosen():
    """Few labels keep the order measured in studies/results/fewshot/demo: the smallest
    head, whatever its latency."""
    noisy = [1.0, 2 / 3, 1.0, 2 / 3, 1.0]  # mean 0.867, standard error 0.082
    top = _trial(0, 0.8667, 50.0, params=500_000, fold_scores=noisy)
    small = _trial(1, 0.80, 50.0, params=1_538, fold_scores=noisy)  # fewest parameters
    fast = _trial(2, 0.79, 5.0, params=20_000, fold_scores=noisy)  # another model, faster
    far = _trial(3, 0.70, 0.1, params=10, fold_scores=noisy)  # more than one error below
    assert within_one_error([top, small, fast, far]) is small
    assert within_one_error([top, fast, far]) is fast
    why = recommended([top, small, fast, far], None)[1]
    assert "(8.2 pt)" in why and "of its parameters;" in why


def test_the_near_ties_are_floored_at_the_best_baseline():
    """A cheap trial within one error of the best but below a baseline is never chosen:
    the recommendation is never below a baseline on validation."""
    top = _trial(0, 0.900, 100.0, val_rows=1000)  # one standard error: 0.95 pt
    baseline = _trial(1, 0.895, 50.0, val_rows=1000, **{BASELINE: True})
    other = _trial(2, 0.892, 5.0, val_rows=1000)  # within one error, cheaper, below it
    assert within_one_error([top, baseline, other]) is baseline
    assert within_one_error([top, other]) is other  # no baseline: the cheapest near-tie
    # a baseline above the best minus one error floors the folds' rule too
    noisy = [1.0, 2 / 3, 1.0, 2 / 3, 1.0]
    folds = [
        _trial(0, 0.8667, 50.0, params=500_000, fold_scores=noisy),
        _trial(1, 0.85, 50.0, params=20_000, fold_scores=noisy, **{BASELINE: True}),
        _trial(2, 0.80, 50.0, params=1_538, fold_scores=noisy),
    ]
    assert within_one_error(folds).number == 1


def _scores(mean: float, std: float = 0.02):
    from autolayer.probe import LayerScores

    acc, spread = np.full(1, mean), np.full(1, std)
    return LayerScores(acc, spread, acc, spread, n_folds=4, n_examples=100)


def test_the_screen_never_drops_a_source_fitted_on_the_texts():
    from autolayer.fidelity import Fidelity, select

    screens = {"leader": _scores(0.90), "tfidf": _scores(0.40), "weak": _scores(0.40)}
    fidelity = Fidelity(keep_at_least=1)
    assert select(screens, "accuracy", fidelity)[0] == ["leader"]
    kept, dropped = select(screens, "accuracy", fidelity, keep={"tfidf"})
    assert kept == ["leader", "tfidf"] and list(dropped) == ["weak"]


def test_prepare_keeps_tfidf_through_the_screen_however_it_scores(
    home, tiny_dataset, tiny_models, monkeypatch
):
    """TF-IDF scored far below the leader on the screen is still completed and searched."""
    from autolayer import candidates
    from autolayer.fidelity import Fidelity

    real = candidates.select

    def tfidf_last(scores, *args, **kwargs):
        return real({**scores, "tfidf": _scores(0.01, 0.001)}, *args, **kwargs)

    monkeypatch.setattr(candidates, "select", tfidf_last)
    prepared = pipeline.prepare(
        str(tiny_dataset),
        [str(tiny_models["bert"]), "tfidf"],
        top_k=1,
        fidelity=Fidelity(screen_size=16, keep_at_least=1, n_folds=2),
        max_length=12,
    )
    assert "tfidf" in [c.name for c in prepared.candidates] and "tfidf" not in prepared.dropped


def _pair(a: str, b: str) -> PairEstimate:
    return PairEstimate((a, b), (0.7, 0.8), 0.85, 0.05, 0.01, 0.1, 0.2, 0.1, 0.5, 99)


def test_the_default_space_searches_exports_applies_and_predicts_every_head(
    home, tmp_path, tiny_dataset, tiny_models, one_thread
):
    """A tiny encoder and TF-IDF in the default space: the baselines (TF-IDF's a linear
    SVM), a late fusion of the two guided in, and each of them exported, applied and
    predicted with."""
    from autolayer.classifier import FusionTextClassifier, apply

    bert = str(tiny_models["bert"])
    prepared = pipeline.prepare(str(tiny_dataset), [bert, "tfidf"], top_k=1, max_length=12)
    names = [c.name for c in prepared.candidates]
    prepared = dataclasses.replace(prepared, pairs=(_pair(*names),))  # guides the pair in
    # the guided trials: linear, then MLP, then late fusion (the pair's fourth)
    result = pipeline.search(
        prepared, output_dir=tmp_path / "out", budget=Budget(n_trials=4), space=Space(**SMALL)
    )
    assert {t.models for t in result.baselines} == {(bert,), ("tfidf",)}
    assert {t.head for t in result.baselines} == {"linear"}
    late = [t for t in result.trials if t.head == "late" and t.state == "COMPLETE"]
    assert late and late[0].models == tuple(names)
    assert result.trained == 4
    texts = ["the movie was good", "awful plot"]
    for trial in (*result.baselines, late[0]):
        config = pipeline.export(result.storage, result.study_name, trial.number)
        assert config.head.kind == trial.head
        folder = tmp_path / f"model{trial.number}"
        applied = apply(config, tiny_dataset, folder)
        assert 0 <= applied.accuracy <= 1
        proba = FusionTextClassifier.load(folder).predict_proba(texts)
        assert proba.shape == (2, 2) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)


def test_a_config_whose_head_cannot_read_its_models_is_refused_on_load():
    """Late fusion over one model: one line when the config is read, not at training."""
    from autolayer.config import FusionConfig, HeadChoice, ModelChoice, from_dict

    tfidf = ModelChoice("tfidf", "x", 0, 1)
    minilm = ModelChoice("minilm", "abc", 4, 7, pooling="last", max_length=128)
    late = FusionConfig(models=(tfidf,), head=HeadChoice("late", {}), label_names=("a", "b"))
    refused = r"^config: the late head does not read one model \(tfidf\); it is late fusion"
    with pytest.raises(ConfigError, match=refused):
        from_dict(late.to_dict())
    pair = dataclasses.replace(late, models=(minilm, tfidf))
    assert from_dict(pair.to_dict()).head.kind == "late"


def test_a_near_tie_replaces_the_best_only_at_half_its_latency_or_memory():
    """A few per cent of latency does not pay for a lower expected score (R8: mpnet L10
    alone at 91 % of mpnet L11 + TF-IDF's latency, 0.37 pt lower on validation)."""
    top = _trial(33, 0.9727, 216.0, 460.0, val_rows=1097)
    slightly = _trial(1, 0.9690, 198.6, 376.0, val_rows=1097, **{BASELINE: True})
    assert within_one_error([top, slightly]) is top
    assert recommended([top, slightly], None) == (top, "")
    half = _trial(2, 0.9690, 108.0, 376.0, val_rows=1097, **{BASELINE: True})
    assert within_one_error([top, half]) is half
    dearer = _trial(3, 0.9700, 10.0, 900.0, val_rows=1097)  # faster, but more memory
    assert within_one_error([top, dearer]) is top

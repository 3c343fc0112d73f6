"""Rows as a fidelity of the search (issue 31): rung sizes and nested samples, trials that
climb them under Optuna's successive halving, and what the study records and reports."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from autolayer import pipeline
from autolayer.budgets import Budget
from autolayer.errors import ConfigError
from autolayer.fidelity import Fidelity
from autolayer.heads import make_head
from autolayer.rungs import Rungs, climbed
from autolayer.search import run_search
from autolayer.selection import BASELINE, RUNGS, trained_count
from autolayer.space import Candidate, LayerCost, Space
from autolayer.task import make_task
from tests.conftest import run


def test_rung_sizes_grow_by_the_factor_up_to_half_the_rows():
    rungs = Rungs(min_rows=1000, factor=3)
    assert rungs.sizes(2999) == ()  # too few rows to save anything
    assert rungs.sizes(3000) == (1000,)
    assert rungs.sizes(54000) == (1000, 3000, 9000, 27000)
    assert rungs.sizes(53999) == (1000, 3000, 9000)
    assert Rungs(min_rows=10, factor=2).sizes(100, n_strata=20) == (20, 40)  # every class


@pytest.mark.parametrize(("min_rows", "factor"), [(0, 3), (10, 1), (True, 3), (10, 2.5)])
def test_bad_rungs_are_refused(min_rows, factor):
    with pytest.raises(ConfigError):
        Rungs(min_rows=min_rows, factor=factor)


def test_rung_samples_are_nested_stratified_and_seeded():
    y = np.repeat(np.arange(4), [400, 300, 200, 100])
    ladder = Rungs(min_rows=50, factor=3).ladder(y, y, seed=0)
    assert ladder is not None and ladder.factor == 3
    assert [len(r) for r in ladder.rows] == [50, 150, 450]
    for small, large in zip(ladder.rows, ladder.rows[1:], strict=False):
        assert set(small) <= set(large)  # a promoted trial sees its rows again, and more
    for rows in ladder.rows:
        assert set(y[rows]) == {0, 1, 2, 3}
        share = np.bincount(y[rows]) / len(rows)
        assert np.abs(share - np.bincount(y) / len(y)).max() < 0.05
    again = Rungs(min_rows=50, factor=3).ladder(y, y, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(ladder.rows, again.rows, strict=True))
    other = Rungs(min_rows=50, factor=3).ladder(y, y, seed=1)
    assert not np.array_equal(ladder.rows[0], other.rows[0])
    assert Rungs(min_rows=500, factor=3).ladder(y, y, seed=0) is None  # too few rows


def test_multi_label_rungs_keep_every_label():
    rng = np.random.default_rng(0)
    target = (rng.random((600, 12)) < 0.1).astype(np.uint8)
    target[:, 11] = 0
    target[0, 11] = 1  # one row holds the rarest label
    strata = make_task("multi_label").strata(target)
    ladder = Rungs(min_rows=40, factor=2).ladder(target, strata, seed=0)
    assert [len(r) for r in ladder.rows] == [40, 80, 160]
    for rows in ladder.rows:
        assert 0 in rows  # the only row of label 11
        assert (target[rows].sum(axis=0) > 0).sum() == (target.sum(axis=0) > 0).sum()


def test_climbed_sums_each_rung():
    records = [[[10, 0.5, 1.0], [20, 0.7, 2.0]], [[10, 0.6, 1.5]], [[10, 0.4, 0.5]]]
    rungs = climbed(records)
    assert [(r.rows, r.trials) for r in rungs] == [(10, 3), (20, 1)]
    assert rungs[0].cpu_seconds == pytest.approx(3.0) and rungs[0].best == 0.6
    assert rungs[1].best == 0.7


def _separable(n: int, n_val: int, seed: int = 0):
    """Two models' features (two layers each) with a noisy class signal, 3 classes."""
    rng = np.random.default_rng(seed)
    y, y_val = rng.integers(0, 3, n), rng.integers(0, 3, n_val)

    def features(labels):
        x = rng.normal(size=(len(labels), 2, 8)).astype("float32")
        x[:, :, 0] += labels[:, None]
        return x

    costs = {1: LayerCost(0.5, 1.0), 2: LayerCost(1.0, 2.0)}
    candidates = [
        Candidate(name, (1, 2), 3, features(y), features(y_val), 1.0, costs) for name in "ab"
    ]
    return candidates, y, y_val


def _climbing_search(tmp_path, n_trials: int, space: Space, name: str = "r"):
    candidates, y, y_val = _separable(240, 90)
    ladder = Rungs(min_rows=30, factor=2).ladder(y, y, seed=0)
    storage = f"sqlite:///{tmp_path / 'r.db'}"
    result = run_search(
        candidates,
        y,
        y_val,
        task=make_task(),
        storage=storage,
        study_name=name,
        budget=Budget(n_trials=n_trials),
        space=space,
        rungs=ladder,
    )
    return result, candidates, y, y_val, storage


def test_trials_climb_rungs_and_only_the_best_reach_all_rows(tmp_path):
    space = Space(heads=("mlp", "linear"), max_epochs=4, patience=2)
    result, candidates, y, y_val, storage = _climbing_search(tmp_path, 10, space)
    study = optuna.load_study(study_name="r", storage=storage)
    assert trained_count(study)[0] == 10  # a trial counts once, whatever it climbed
    sizes = [30, 60, 120, 240]
    climbers = [t for t in result.trials if RUNGS in t.attrs]
    assert len(climbers) >= 10
    pruned = [t for t in climbers if t.state == "PRUNED"]
    complete = [t for t in climbers if t.state == "COMPLETE"]
    assert pruned and complete  # some stopped below the top, some reached it
    for t in climbers:
        rows = [r[0] for r in t.attrs[RUNGS]]
        assert rows == sizes[: len(rows)]
        assert all(seconds >= 0 for *_, seconds in t.attrs[RUNGS])
    for t in pruned:
        assert t.attrs[RUNGS][-1][0] < 240
    for t in complete:
        assert t.attrs[RUNGS][-1][0] == 240 and t.attrs[RUNGS][-1][1] == t.value
    baselines = [t for t in result.trials if t.attrs.get(BASELINE)]
    assert baselines and all(RUNGS not in t.attrs for t in baselines)  # always every row
    assert result.best.state == "COMPLETE"


def test_a_trial_that_reached_all_rows_scores_as_a_full_rows_trial(tmp_path):
    """The top rung is the full-rows trial itself: the same configuration and seed score
    the same, trained on all rows from the start by a search without rungs, or by hand."""
    space = Space(heads=("mlp",), max_epochs=4, patience=2)
    result, candidates, y, y_val, storage = _climbing_search(tmp_path, 6, space)
    [top, *_] = [t for t in result.trials if t.state == "COMPLETE" and RUNGS in t.attrs]
    params = optuna.load_study(study_name="r", storage=storage).trials[top.number].params
    full = run_search(
        candidates,
        y,
        y_val,
        task=make_task(),
        storage=storage,
        study_name="full",
        budget=Budget(n_trials=1),
        space=space,
        first=[params],
    )
    [again] = [t for t in full.trials if t.state == "COMPLETE"]
    assert RUNGS not in again.attrs and again.value == top.value
    by_name = {c.name: c for c in candidates}
    chosen = [by_name[m] for m in top.models]
    train = [c.features(layer, "train") for c, layer in zip(chosen, top.layers, strict=True)]
    val = [c.features(layer, "val") for c, layer in zip(chosen, top.layers, strict=True)]
    head = make_head(top.head, top.head_params, task=make_task())
    fit = head.fit(train, y, val, y_val, seed=0, n_outputs=3)
    assert fit.best_val_metric == top.value


def test_two_objectives_and_cross_validation_never_climb(tmp_path):
    """Optuna prunes single objectives only, and cross-validation has no rows to spare."""
    candidates, y, y_val = _separable(240, 90)
    ladder = Rungs(min_rows=30, factor=2).ladder(y, y, seed=0)
    settings = {"task": make_task(), "budget": Budget(n_trials=3), "rungs": ladder}
    settings |= {"storage": f"sqlite:///{tmp_path / 'r.db'}"}
    space = Space(heads=("mlp",), max_epochs=2, patience=1)
    both = run_search(
        candidates, y, y_val, study_name="mo", space=space, multi_objective=True, **settings
    )
    folds = [np.arange(i, 240, 3) for i in range(3)]
    crossed = run_search(
        candidates, y, y_val, study_name="cv", space=space, folds=folds, **settings
    )
    for result in (both, crossed):
        trained = [t for t in result.trials if t.state == "COMPLETE"]
        assert trained and not any(RUNGS in t.attrs for t in result.trials)


def test_a_study_on_rungs_resumes(tmp_path):
    space = Space(heads=("mlp",), max_epochs=3, patience=2)
    _climbing_search(tmp_path, 4, space)
    first = len(optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path / 'r.db'}").trials)
    result, *_, storage = _climbing_search(tmp_path, 7, space)
    study = optuna.load_study(study_name="r", storage=storage)
    assert trained_count(study)[0] == 7
    # the second run's trials were judged on rung 0 beside the first run's
    ranked = [t for t in study.trials if "completed_rung_0" in t.system_attrs]
    assert any(t.number < first for t in ranked) and any(t.number >= first for t in ranked)


def test_prepare_builds_rungs_only_with_fidelity_and_enough_rows(home, tiny_dataset, models):
    names = models.split(",")
    fine = Fidelity(screen_size=None, rungs=Rungs(min_rows=8, factor=2))
    prepared = pipeline.prepare(str(tiny_dataset), names, top_k=1, fidelity=fine)
    assert prepared.rungs is not None
    sizes = [len(r) for r in prepared.rungs.rows]
    assert sizes[0] == 8 and all(b == 2 * a for a, b in zip(sizes, sizes[1:], strict=False))
    assert 2 * sizes[-1] <= len(prepared.y_train)
    assert pipeline.prepare(str(tiny_dataset), names, top_k=1).rungs is None  # exhaustive
    coarse = Fidelity(screen_size=None, rungs=Rungs(min_rows=1000))
    assert pipeline.prepare(str(tiny_dataset), names, top_k=1, fidelity=coarse).rungs is None


def _search(capsys, tmp_path, tiny_dataset, model, *args):
    """``autolayer search`` of the MLP head on one tiny model, first rung 8 rows."""
    common = ["-d", tiny_dataset, "--models", model, "--rung-rows", 8, "--heads", "mlp"]
    return run(capsys, "search", *common, *args, "-o", tmp_path / "out")


def test_cli_search_reports_its_rungs(capsys, home, tmp_path, tiny_dataset, tiny_models):
    code, out, err = _search(capsys, tmp_path, tiny_dataset, tiny_models["bert"], "--n-trials", 4)
    assert code == 0, err
    assert "rungs of rows" in out and "train rows" in out


def test_cli_exhaustive_ignores_rung_rows_and_says_so(
    capsys, caplog, home, tmp_path, tiny_dataset, tiny_models
):
    args = ("--exhaustive", "--n-trials", 2)
    code, out, err = _search(capsys, tmp_path, tiny_dataset, tiny_models["bert"], *args)
    assert code == 0, err
    said = [r.getMessage() for r in caplog.records]
    assert "--rung-rows is ignored with --exhaustive (every training row is used)" in said
    assert "rungs of rows" not in out


def test_a_resumed_study_keeps_its_rungs_and_says_so(tmp_path, caplog):
    """The pruner compares a rung's values by the rung's index: a run with other rungs
    would rank heads trained on other rows together, so it keeps the study's."""
    space = Space(heads=("mlp",), max_epochs=2, patience=1)
    candidates, y, y_val = _separable(240, 90)
    storage = f"sqlite:///{tmp_path / 'r.db'}"

    def search(min_rows: int, n_trials: int) -> None:
        run_search(
            candidates,
            y,
            y_val,
            task=make_task(),
            storage=storage,
            study_name="r",
            budget=Budget(n_trials=n_trials),
            space=space,
            rungs=Rungs(min_rows=min_rows, factor=2).ladder(y, y, seed=0),
        )

    search(30, 2)
    search(30, 3)
    assert "ranks its trials on rungs" not in caplog.text
    search(40, 5)
    assert "ranks its trials on rungs of 30, 60, 120 rows; this run keeps them (not 40, 80)" in (
        caplog.text
    )
    study = optuna.load_study(study_name="r", storage=storage)
    assert study.user_attrs["rung_rows"] == {"sizes": [30, 60, 120], "factor": 2}
    climbed_rows = {r[0] for t in study.trials for r in t.user_attrs.get(RUNGS, [])}
    assert climbed_rows <= {30, 60, 120, 240} and 30 in climbed_rows


def test_rungs_off_for_too_few_rows_or_two_objectives_are_said(
    home, tmp_path, tiny_dataset, models, caplog
):
    names = models.split(",")
    few = Fidelity(screen_size=None, rungs=Rungs(min_rows=20))
    prepared = pipeline.prepare(str(tiny_dataset), names, top_k=1, fidelity=few)
    assert prepared.rungs is None and 20 <= len(prepared.y_train) < 60
    assert f"no rungs of rows: {len(prepared.y_train)} search-train rows" in caplog.text
    caplog.clear()
    pipeline.prepare(str(tiny_dataset), names, top_k=1, fidelity=Fidelity(screen_size=None))
    assert "no rungs" not in caplog.text  # fewer rows than a first rung: nothing to say
    candidates, y, y_val = _separable(240, 90)
    run_search(
        candidates,
        y,
        y_val,
        task=make_task(),
        storage=f"sqlite:///{tmp_path / 'r.db'}",
        study_name="mo",
        budget=Budget(n_trials=1),
        space=Space(heads=("mlp",), max_epochs=1),
        multi_objective=True,
        rungs=Rungs(min_rows=30, factor=2).ladder(y, y, seed=0),
    )
    assert "no rungs of rows with two objectives" in caplog.text


def test_exporting_a_trial_pruned_on_a_rung_says_where(tmp_path):
    space = Space(heads=("mlp",), max_epochs=3, patience=2)
    result, *_, storage = _climbing_search(tmp_path, 8, space)
    [pruned, *_] = [t for t in result.trials if t.state == "PRUNED" and RUNGS in t.attrs]
    rows = pruned.attrs[RUNGS][-1][0]
    optuna.load_study(study_name="r", storage=storage).set_user_attr("context", {"made": 1})
    with pytest.raises(ConfigError, match=f"pruned at {rows} rows: never trained on all"):
        pipeline.export(storage, "r", pruned.number)

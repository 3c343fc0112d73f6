"""The multi-label task (autolayer.task.MultiLabel) and its metrics (autolayer.metrics):
indicator targets, sigmoid decisions by thresholds, and scores that agree with sklearn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from autolayer.errors import ConfigError
from autolayer.metrics import (
    ALL_METRICS,
    MULTI_LABEL_METRICS,
    macro_f1,
    micro_f1,
    samples_f1,
    subset_accuracy,
)
from autolayer.sampling import rarest_label
from autolayer.task import (
    EMPTY_POLICIES,
    MIN_POSITIVES,
    THRESHOLDS,
    MultiLabel,
    SingleLabel,
    make_task,
)


def _indicators(seed: int, n: int = 40, k: int = 6, layers: int = 3):
    """truth [n, k] and predictions [layers, n, k] with empty rows, a label never true and
    a label never predicted, so every zero-division rule is exercised."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, k)) < 0.3).astype(np.uint8)
    pred = (rng.random((layers, n, k)) < 0.3).astype(np.uint8)
    truth[:, 0] = 0  # never true
    pred[:, :, 1] = 0  # never predicted
    truth[:4] = 0  # empty rows, some predicted empty too
    pred[:, :2] = 0
    return truth, pred


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_metrics_agree_with_sklearn_on_indicator_matrices(seed: int) -> None:
    truth, pred = _indicators(seed)
    t, p = torch.as_tensor(truth), torch.as_tensor(pred)
    with warnings.catch_warnings():  # sklearn warns about its zero divisions
        warnings.simplefilter("ignore")
        for layer, row in enumerate(pred):
            present = np.flatnonzero(truth.any(0) | row.any(0))
            expected = {
                "micro": f1_score(truth, row, average="micro"),
                "macro": f1_score(truth, row, average="macro", labels=present),
                "samples": f1_score(truth, row, average="samples", zero_division=1.0),
                "subset": accuracy_score(truth, row),
            }
            got = {
                "micro": micro_f1(p, t)[layer],
                "macro": macro_f1(p, t)[layer],
                "samples": samples_f1(p, t)[layer],
                "subset": subset_accuracy(p, t)[layer],
            }
            for name, value in expected.items():
                assert float(got[name]) == pytest.approx(value, abs=1e-12), name


def test_every_metric_name_is_listed_once() -> None:
    assert set(MULTI_LABEL_METRICS) | {"accuracy"} == set(ALL_METRICS)
    assert len(ALL_METRICS) == len(set(ALL_METRICS))
    assert MultiLabel.metrics == MULTI_LABEL_METRICS and MultiLabel.default_metric == "micro_f1"
    assert SingleLabel.default_metric == "accuracy"


def test_single_label_takes_no_parameters_and_tunes_nothing() -> None:
    task = make_task()
    assert isinstance(task, SingleLabel) and task.params() == {}
    proba = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert task.tuned(proba, np.array([1, 0]), "accuracy") is task
    with pytest.raises(ConfigError, match="takes no parameters; got threshold"):
        make_task("single_label", {"threshold": 0.5})


def test_multi_label_parameters_are_checked_and_rebuild_the_task() -> None:
    task = make_task("multi_label", {"threshold": [0.3, 0.6], "empty": "none"})
    assert isinstance(task, MultiLabel)
    assert task.params() == {"threshold": [0.3, 0.6], "empty": "none"}
    assert make_task("multi_label", task.params()).params() == task.params()
    assert make_task("multi_label").params() == {"threshold": None, "empty": "top"}
    with pytest.raises(ConfigError, match="empty must be one of top, none; got 'all'"):
        MultiLabel(empty="all")
    for bad in (1.5, 0, [], "0.5", True, {"a": 0.5}):
        with pytest.raises(ConfigError, match=r"^task_params: threshold = .*; it must be a"):
            MultiLabel(threshold=bad)
    with pytest.raises(ConfigError) as caught:
        make_task("multi_label", {"bogus": 1, "empty": "top"})
    assert str(caught.value) == (
        "task_params: unknown key 'bogus'; multi_label takes threshold, empty"
    )


@pytest.mark.parametrize(
    ("bad", "shown"), [(1.5, "1.5"), (-0.1, "-0.1"), (float("nan"), "nan"), ("abc", "'abc'")]
)
def test_a_bad_threshold_in_a_list_is_named_by_index_and_label(bad: object, shown: str) -> None:
    """One bad value of 90 thresholds is named alone, not the whole list."""
    thresholds = [0.5] * 90
    thresholds[3] = bad
    with pytest.raises(ConfigError) as caught:
        MultiLabel(threshold=thresholds)
    each = "; each must be a number in (0, 1)"
    assert str(caught.value) == f"task_params: threshold[3] = {shown}{each}"
    labels = [f"l{i}" for i in range(90)]
    with pytest.raises(ConfigError) as caught:
        make_task("multi_label", {"threshold": thresholds}, labels)
    assert str(caught.value) == f"task_params: threshold[3] = {shown} (label 'l3'){each}"


def test_a_long_bad_threshold_value_is_cut_short() -> None:
    with pytest.raises(ConfigError) as caught:
        MultiLabel(threshold="x" * 500)
    assert len(str(caught.value)) < 150 and "…" in str(caught.value)


def test_the_target_is_a_float_indicator_and_its_width_the_outputs() -> None:
    task = MultiLabel()
    target = task.target(np.array([[1, 0, 1], [0, 0, 0]], dtype=np.uint8), 2)
    assert target.dtype == np.float32 and target.shape == (2, 3)
    assert task.n_outputs(target, np.zeros((0, 3))) == 3
    for bad in (np.array([1, 0]), np.array([[2, 0], [0, 1]]), np.zeros((3, 2))):
        with pytest.raises(ConfigError, match="y must be a 0/1 indicator of shape"):
            task.target(bad, 2)
    with pytest.raises(ConfigError, match="number of labels"):
        task.n_outputs(np.zeros((2, 3)), np.zeros((2, 4)))


def test_the_loss_is_binary_cross_entropy_summed_over_labels() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]])
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    p = torch.sigmoid(logits)
    manual = -(target * p.log() + (1 - target) * (1 - p).log()).sum() / 2
    assert float(MultiLabel().loss(logits, target)) == pytest.approx(float(manual), rel=1e-6)
    torch.testing.assert_close(MultiLabel().proba(logits), p)


def test_decisions_use_the_thresholds_and_the_empty_policy() -> None:
    proba = np.array([[0.9, 0.6, 0.1], [0.3, 0.4, 0.2], [0.2, 0.7, 0.8]])
    np.testing.assert_array_equal(
        MultiLabel().decide(proba), [[1, 1, 0], [0, 1, 0], [0, 1, 1]]
    )  # row 1 has none above 0.5: its most probable label
    np.testing.assert_array_equal(
        MultiLabel(empty="none").decide(proba), [[1, 1, 0], [0, 0, 0], [0, 1, 1]]
    )
    decided = MultiLabel([0.95, 0.35, 0.5], "none").decide(proba)
    assert decided.dtype == np.uint8
    np.testing.assert_array_equal(decided, [[0, 1, 0], [0, 1, 0], [0, 1, 1]])
    with pytest.raises(ConfigError, match="2 thresholds for 3 labels"):
        MultiLabel([0.5, 0.5]).decide(proba)


def test_an_unfitted_score_is_the_best_over_the_threshold_grid() -> None:
    rng = np.random.default_rng(0)
    truth = (rng.random((60, 4)) < 0.3).astype(np.uint8)
    proba = 0.3 * truth + 0.4 * rng.random((60, 4))  # best split near 0.35, not 0.5
    task = MultiLabel(empty="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_threshold = [
            f1_score(truth, (proba >= t).astype(int), average="micro") for t in THRESHOLDS
        ]
    assert task.score(proba, truth, "micro_f1") == pytest.approx(max(by_threshold))
    assert task.best_threshold(proba, truth, "micro_f1") == THRESHOLDS[np.argmax(by_threshold)]
    assert max(by_threshold) > by_threshold[list(THRESHOLDS).index(0.5)]  # not just 0.5
    layers = np.stack([proba, rng.random((60, 4))])
    both = task.scores(layers, truth, ("micro_f1", "subset_accuracy"))  # each layer its own
    assert both.shape == (2, 2) and both[0, 0] == pytest.approx(max(by_threshold))
    assert both[1, 1] == pytest.approx(task.score(layers[1], truth, "subset_accuracy"))
    fitted = MultiLabel(0.5, "none")
    assert fitted.score(proba, truth, "micro_f1") == pytest.approx(
        by_threshold[list(THRESHOLDS).index(0.5)]
    )


def test_tuning_fits_a_threshold_per_label_with_enough_positives() -> None:
    n = 40
    truth = np.zeros((n, 3), dtype=np.uint8)
    truth[:10, 0] = 1  # label 0: 10 positives at 0.72, negatives at 0.62 → its own ~0.7
    truth[:10, 1] = 1  # label 1: 10 positives at 0.22, negatives at 0.12 → its own ~0.2
    truth[: MIN_POSITIVES - 1, 2] = 1  # label 2: too few positives → the global threshold
    proba = np.empty((n, 3))
    proba[:, 0] = np.where(truth[:, 0], 0.72, 0.62)
    proba[:, 1] = np.where(truth[:, 1], 0.22, 0.12)
    proba[:, 2] = np.where(truth[:, 2], 0.9, 0.1)
    tuned = MultiLabel(empty="none").tuned(proba, truth, "micro_f1")
    global_threshold = MultiLabel(empty="none").best_threshold(proba, truth, "micro_f1")
    own = tuned.params()["threshold"]
    assert 0.62 < own[0] <= 0.72 and 0.12 < own[1] <= 0.22
    assert own[2] == global_threshold
    assert tuned.empty == "none" and tuned.score(proba, truth, "macro_f1") == 1.0
    assert tuned.score(proba, truth, "micro_f1") > MultiLabel(0.5).score(proba, truth, "micro_f1")


@pytest.mark.parametrize("seed", range(8))
def test_tuning_never_scores_below_the_best_global_threshold(seed: int) -> None:
    """Each label's own best-F1 threshold is kept only where the metric does not drop:
    adopting them all lost to the global threshold on most random validation sets (subset
    accuracy above all)."""
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(30, 120)), int(rng.integers(2, 8))
    truth = (rng.random((n, k)) < rng.uniform(0.1, 0.5, k)).astype(np.uint8)
    proba = np.clip(0.35 * truth + rng.normal(0.3, 0.2, (n, k)), 0.01, 0.99)
    for empty in EMPTY_POLICIES:
        task = MultiLabel(empty=empty)
        for metric in MULTI_LABEL_METRICS:
            tuned = task.tuned(proba, truth, metric)
            plain = MultiLabel(task.best_threshold(proba, truth, metric), empty)
            assert tuned.score(proba, truth, metric) >= plain.score(proba, truth, metric)
            assert plain.score(proba, truth, metric) == task.score(proba, truth, metric)


def test_untuned_drops_the_thresholds_and_keeps_the_empty_policy() -> None:
    tuned = MultiLabel(threshold=[0.2, 0.9], empty="none")
    assert tuned.untuned().params() == {"threshold": None, "empty": "none"}
    single = SingleLabel()
    assert single.untuned() is single


def test_the_strata_are_each_rows_rarest_label() -> None:
    target = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 1]])
    np.testing.assert_array_equal(MultiLabel().strata(target), rarest_label(target))
    np.testing.assert_array_equal(MultiLabel().strata(target), [1, 0, 3, 2])

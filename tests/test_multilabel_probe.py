"""Multi-label probes: per-label logistic regression, layer scores, out-of-fold
probabilities, sparse one-vs-rest probes and pair estimates on an indicator target."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from autolayer.complementarity import estimate_pairs
from autolayer.errors import ConfigError, DataError
from autolayer.logistic import fit_logistic
from autolayer.metrics import MULTI_LABEL_METRICS
from autolayer.probe import (
    PENALTIES,
    chosen_alpha,
    folds,
    out_of_fold,
    probe_layers,
    probe_layers_holdout,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _labels(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """An indicator [n, k] with 1-3 labels per row, label 0 the most common."""
    y = (rng.random((n, k)) < 0.25).astype(np.uint8)
    y[rng.random(n) < 0.5, 0] = 1
    y[y.sum(1) == 0, rng.integers(k)] = 1
    return y


def _layered(n: int = 240, layers: int = 5, width: int = 16, k: int = 4, seed: int = 0):
    """X [n, layers, width] of correlated noise; layer 3 adds each present label's mean."""
    rng = np.random.default_rng(seed)
    y = _labels(n, k, rng)
    X = rng.normal(size=(n, layers, width)) @ rng.normal(size=(width, width)) + 3.0
    X[:, 3] += 2.0 * y @ rng.normal(size=(k, width))
    return X.astype(np.float32), y


def test_a_fit_per_label_is_sklearns_binary_logistic_regression() -> None:
    rng = np.random.default_rng(0)
    x = StandardScaler().fit_transform(rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8)))
    y = (x @ rng.normal(size=(8, 3)) + rng.normal(size=(200, 3)) > 0.5).astype(np.float32)
    features = torch.as_tensor(np.c_[x, np.ones(len(x))][None], dtype=torch.float32)
    weights = fit_logistic(features, torch.as_tensor(y), alpha=2.0, tol=1e-6)[0]  # [K, P]
    assert weights.shape == (3, 9)
    proba = torch.sigmoid(features[0].double() @ weights.T).numpy()
    for k in range(3):
        reference = LogisticRegression(C=0.5, tol=1e-8, max_iter=10000).fit(x, y[:, k])
        np.testing.assert_allclose(weights[k, :-1], reference.coef_[0], atol=2e-4)
        np.testing.assert_allclose(proba[:, k], reference.predict_proba(x)[:, 1], atol=1e-4)


def test_the_probe_finds_the_informative_layer_by_every_metric() -> None:
    X, y = _layered()
    scores = probe_layers(X, y, n_folds=4)
    assert scores.best_layer == 3 and scores.metric == "micro_f1"
    assert set(MULTI_LABEL_METRICS) <= set(scores.metrics)
    for metric in MULTI_LABEL_METRICS:
        assert scores.ranking(metric)[0] == 3, metric
        assert getattr(scores, f"{metric}_std").shape == (5,)
    assert scores.micro_f1[3] > 0.9 and np.delete(scores.micro_f1, 3).max() < 0.75
    np.testing.assert_array_equal(scores.accuracy, scores.subset_accuracy)
    assert (scores.n_folds, scores.n_examples) == (4, 240)
    assert probe_layers(X, y, n_folds=4, metric="subset_accuracy").metric == "subset_accuracy"
    with pytest.raises(ConfigError, match="metric must be one of"):
        probe_layers(X, y, metric="accuracy")


def test_a_holdout_probe_and_a_subsample_score_a_multi_label_target() -> None:
    X, y = _layered(n=300)
    holdout = probe_layers_holdout(X[:200], y[:200], X[200:], y[200:])
    assert holdout.best_layer == 3 and holdout.n_folds == 1
    np.testing.assert_array_equal(holdout.micro_f1_std, 0.0)
    assert probe_layers(X, y, n_folds=3, max_examples=150).n_examples == 150
    with pytest.raises(DataError, match="differ in labels"):
        probe_layers_holdout(X[:200], y[:200], X[200:], y[200:, :3])
    with pytest.raises(DataError, match="0/1 indicator"):
        probe_layers(X, y * 2)


def test_out_of_fold_never_sees_a_rows_own_labels() -> None:
    """Flipping a label of one row leaves that row's held-out probabilities as they were
    (its fold never trained on it) while the other folds, which did, move. The label
    flipped is the most common one, so no row's stratum and hence no fold changes."""
    X, y = _layered(n=200)
    row = int(np.flatnonzero((y[:, 0] == 1) & (y[:, 1:].sum(1) > 0))[0])
    flipped = y.copy()
    flipped[row, 0] = 0
    before, kept = out_of_fold(X, y, n_folds=4, seed=1)
    after, _ = out_of_fold(X, flipped, n_folds=4, seed=1)
    assert before.shape == (5, 200, 4) and before.dtype == np.float32
    np.testing.assert_array_equal(kept, y)
    np.testing.assert_allclose(after[:, row], before[:, row], atol=1e-6)
    assert np.abs(after - before).max() > 1e-4


def test_multi_label_folds_keep_their_number_despite_rare_labels() -> None:
    strata = np.array([0] * 12 + [1] * 7 + [2])  # label 2 on one row only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tests = folds(strata, 5, 0, shrink=False)
    assert len(tests) == 5
    np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(20))


def test_a_sparse_probe_is_one_linear_svm_per_label_deciding_at_zero() -> None:
    from sklearn.svm import LinearSVC

    from autolayer.sampling import rarest_label

    rng = np.random.default_rng(0)
    y = _labels(150, 3, rng)
    X = rng.random((150, 200)) * (rng.random((150, 200)) < 0.05)
    for k in range(3):
        X[:, k * 10 : k * 10 + 10] += 0.3 * y[:, [k]] * (rng.random((150, 10)) < 0.4)
    X = csr_matrix(X / np.linalg.norm(X, axis=1, keepdims=True))
    proba, _ = out_of_fold(X, y, n_folds=3, seed=0)
    assert proba.shape == (1, 150, 3) and ((proba > 0) & (proba < 1)).all()
    test = folds(rarest_label(y), 3, 0, shrink=False)[0]
    train = np.setdiff1d(np.arange(150), test)
    for k in range(3):
        svm = LinearSVC(random_state=0).fit(X[train], y[train, k])
        np.testing.assert_array_equal(proba[0, test, k] >= 0.5, svm.predict(X[test]) == 1)
    assert probe_layers(X, y, n_folds=3).micro_f1[0] > 0.6


def test_pair_estimates_run_on_an_indicator_target() -> None:
    """View a sees labels 0-1, view b labels 2-3 (b2 a near copy of b): a and b
    complement each other, b and b2 do not."""
    rng = np.random.default_rng(0)
    y = _labels(300, 4, rng)
    means = rng.normal(size=(4, 12))
    a = 2.0 * y[:, :2] @ means[:2] + rng.normal(size=(300, 12))
    b = 2.0 * y[:, 2:] @ means[2:] + rng.normal(size=(300, 12))
    features = {"a": a, "b": b, "b2": b + rng.normal(scale=0.01, size=b.shape)}
    by_pair = {e.models: e for e in estimate_pairs(features, y, n_folds=4)}
    useful, copy = by_pair[("a", "b")], by_pair[("b", "b2")]
    assert useful.joint > max(useful.accuracy) + 0.1
    assert useful.gain > 5 * useful.gain_se and useful.oracle_gain > 0
    assert abs(copy.gain) < 3 * copy.gain_se + 0.01 and copy.disagreement < 0.1
    assert useful.n_examples == 300 and 0 <= useful.double_fault <= 1


def test_the_head_penalty_for_a_multi_label_target() -> None:
    rng = np.random.default_rng(0)
    y = np.zeros((60, 2), dtype=np.uint8)
    y[:30, 0] = 1
    y[15:45, 1] = 1
    x = rng.normal(size=(60, 300))
    x[:, :40] += 0.6 * np.repeat(y, 20, axis=1)  # weak, spread signal: a penalty helps
    assert chosen_alpha(x, y, "micro_f1") in PENALTIES[1:]  # stronger than sklearn's default
    rare = y.copy()
    rare[:, 1] = 0
    rare[:9, 1] = 1  # a label with 9 positives: too few to judge by 5 folds
    assert chosen_alpha(x, rare, "micro_f1") == PENALTIES[0]

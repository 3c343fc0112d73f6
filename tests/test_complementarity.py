"""Complementarity estimates from held-out probe predictions (autolayer.complementarity)."""

import numpy as np
import pytest

from autolayer.complementarity import estimate_pairs
from autolayer.probe import out_of_fold, probe_layers


def _two_views(n: int = 400, seed: int = 0):
    """Labels made of two bits: view ``a`` sees only the first, ``b`` and its near copy
    ``b2`` only the second, so a and b complement each other and b and b2 do not."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, size=(n, 2))
    y = bits[:, 0] * 2 + bits[:, 1]

    def view(bit, noise):
        return np.hstack([bit[:, None] * 2.0, rng.normal(size=(n, 7))]) + noise

    b = view(bits[:, 1], 0.0)
    return {
        "a": view(bits[:, 0], 0.0),
        "b": b,
        "b2": b + rng.normal(scale=0.01, size=b.shape),
    }, y


def test_out_of_fold_predictions_give_the_probe_scores():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 100)
    X = rng.normal(size=(200, 3, 6)) + y[:, None, None] * np.array([0.0, 0.5, 1.0])[:, None]
    predicted, kept = out_of_fold(X, y, seed=3)
    assert predicted.shape == (3, 200) and np.array_equal(kept, y)
    # 5 folds of 40 rows each: the pooled held-out accuracy is the mean over folds.
    np.testing.assert_allclose((predicted == kept).mean(1), probe_layers(X, y, seed=3).accuracy)


def test_out_of_fold_keeps_label_type():
    rng = np.random.default_rng(2)
    y = np.array(["neg", "pos"] * 20)
    predicted, _ = out_of_fold(rng.normal(size=(40, 1, 4)), y)
    assert set(predicted[0]) <= {"neg", "pos"}


def test_complementary_views_gain_and_copies_do_not():
    features, y = _two_views()
    by_pair = {e.models: e for e in estimate_pairs(features, y)}
    assert list(by_pair) == [("a", "b"), ("a", "b2"), ("b", "b2")]
    useful, copy = by_pair[("a", "b")], by_pair[("b", "b2")]
    assert max(useful.accuracy) < 0.6 and useful.joint > 0.9
    assert useful.gain > 5 * useful.gain_se
    assert useful.oracle_gain > 0.2 and useful.disagreement > 0.3
    assert abs(copy.gain) < 3 * copy.gain_se + 0.01
    assert copy.disagreement < 0.05 and copy.q_statistic > 0.9
    assert copy.double_fault > useful.double_fault
    assert useful.n_examples == len(y)


@pytest.mark.parametrize("n_models", [1, 3])
def test_one_estimate_per_pair(n_models):
    features, y = _two_views(n=100)
    picked = dict(list(features.items())[:n_models])
    assert len(estimate_pairs(picked, y)) == n_models * (n_models - 1) // 2

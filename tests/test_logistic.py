"""The batched logistic-regression solver: sklearn's objective, each layer and fold on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from autolayer.errors import ConfigError
from autolayer.logistic import DEFAULT_ALPHA, fit_logistic, fit_logistic_folds, resolved_alpha

pytestmark = pytest.mark.usefixtures("one_thread")


def _classes(
    n: int = 200, width: int = 8, classes: int = 3, signal: float = 0.8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Standardised X [n, width] float64 of correlated noise plus class means times signal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(classes, size=n)
    mix = rng.normal(size=(width, width))
    X = rng.normal(size=(n, width)) @ mix + 3.0
    X += signal * rng.normal(size=(classes, width))[y]
    return StandardScaler().fit_transform(X.astype(np.float32).astype(np.float64)), y


def _with_intercept(*xs: np.ndarray) -> torch.Tensor:
    """Layers [n, D] → the solver's float32 input [L, n, D+1] (a constant last column)."""
    return torch.as_tensor(np.stack([np.c_[x, np.ones(len(x))] for x in xs]), dtype=torch.float32)


def _probabilities(features: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """Softmax of features [L, n, P] under weights [L, K, P] → [L, n, K]."""
    return torch.softmax(features.double() @ weights.mT, -1).numpy()


@pytest.mark.parametrize("classes", [2, 4])
def test_fit_logistic_matches_sklearn_probabilities(classes: int) -> None:
    # Two classes exercise the doubled penalty that maps softmax onto sklearn's binary model.
    x, y = _classes(classes=classes)
    reference = LogisticRegression(C=0.5, tol=1e-8, max_iter=10000).fit(x, y)
    features = _with_intercept(x)
    weights = fit_logistic(features, torch.as_tensor(y), alpha=2.0, tol=1e-6)
    probs = _probabilities(features, weights)[0]
    np.testing.assert_allclose(probs, reference.predict_proba(x), atol=1e-4)


def test_layers_fitted_together_are_fitted_as_if_alone() -> None:
    """Each layer keeps its own history, step and stop: batched, a layer reaches its own
    optimum (to the solver's float32 round-off; stopped 5 iterations early, the
    probabilities here are 0.009 and 0.1 off)."""
    x_weak, y = _classes(signal=0.2)
    x_strong, _ = _classes(signal=2.0)  # same seed: same labels
    together = _with_intercept(x_weak, x_strong)
    batched = fit_logistic(together, torch.as_tensor(y), tol=1e-6)
    for layer, x in enumerate((x_weak, x_strong)):
        alone = fit_logistic(_with_intercept(x), torch.as_tensor(y), tol=1e-6)
        np.testing.assert_allclose(
            _probabilities(together[layer : layer + 1], batched[layer : layer + 1]),
            _probabilities(_with_intercept(x), alone),
            atol=1e-3,
        )


def test_each_fold_is_fitted_on_its_own_training_rows() -> None:
    """A held-out row weighs 0 in its fold's mean: a fold's weights are those of a fit on
    its training rows alone (the penalty divided by that fold's own row count), to the
    solver's round-off (a fit on all rows is 0.17 off here)."""
    x, y = _classes(n=240, classes=3)
    features, labels = _with_intercept(x), torch.as_tensor(y)
    train = torch.ones(len(y), 2, dtype=torch.bool)
    train[:80, 0] = False
    train[160:, 1] = False
    scale = torch.ones(1, 2, features.shape[2], dtype=torch.float64)
    folds = fit_logistic_folds(features, labels, train, 3.0, scale, 3, tol=1e-6)  # [1, F, K, P]
    for f in range(2):
        rows = train[:, f]
        alone = fit_logistic(features[:, rows], labels[rows], 3.0, tol=1e-6)
        np.testing.assert_allclose(
            _probabilities(features, folds[:, f]), _probabilities(features, alone), atol=1e-3
        )


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_a_penalty_that_is_not_positive_is_a_config_error(alpha: float) -> None:
    x, y = _classes(n=30)
    with pytest.raises(ConfigError, match=r"^alpha must be a positive number; got"):
        fit_logistic(_with_intercept(x), torch.as_tensor(y), alpha)


def test_no_penalty_given_is_sklearns_default() -> None:
    assert resolved_alpha(None) == DEFAULT_ALPHA == 1.0
    assert resolved_alpha(4) == 4.0 and isinstance(resolved_alpha(4), float)

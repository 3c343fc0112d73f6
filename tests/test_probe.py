"""Batched logistic probes: ranking, agreement with sklearn, metrics and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from autolayer.errors import ConfigError, DataError
from autolayer.metrics import macro_f1
from autolayer.probe import (
    LayerScores,
    probe_layers,
    probe_layers_holdout,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _layered(
    n: int = 300, layers: int = 6, width: int = 20, classes: int = 3, signal: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """X [n, layers, width] of correlated noise; layer l adds class means times signal[l]."""
    rng = np.random.default_rng(0)
    y = rng.integers(classes, size=n)
    mix = rng.normal(size=(width, width))
    X = rng.normal(size=(n, layers, width)) @ mix + 3.0
    means = rng.normal(size=(classes, width))
    for layer, strength in (signal or {3: 1.5}).items():
        X[:, layer] += strength * means[y]
    return X.astype(np.float32), y


def test_layer_carrying_the_signal_ranks_first() -> None:
    X, y = _layered()
    scores = probe_layers(X, y)
    assert scores.best_layer == 3
    assert scores.ranking()[0] == 3
    assert scores.ranking("macro_f1")[0] == 3
    assert scores.accuracy[3] > 0.9
    assert np.delete(scores.accuracy, 3).max() < 0.6
    assert (scores.n_folds, scores.n_examples) == (5, 300)


def test_agrees_with_sklearn_logistic_regression_on_the_same_folds() -> None:
    X, y = _layered(n=400, layers=4, width=30, signal={0: 0.2, 1: 0.4, 2: 0.7, 3: 1.0})
    scores = probe_layers(X, y, n_folds=5, seed=0)
    reference = np.zeros(X.shape[1])
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(X[:, 0], y):
        for layer in range(X.shape[1]):
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
            model.fit(X[train, layer], y[train])
            reference[layer] += model.score(X[test, layer], y[test]) / 5
    assert np.abs(scores.accuracy - reference).mean() <= 0.02


def test_same_seed_same_scores() -> None:
    X, y = _layered()
    first, again = probe_layers(X, y, seed=3), probe_layers(X, y, seed=3)
    np.testing.assert_array_equal(first.accuracy, again.accuracy)
    np.testing.assert_array_equal(first.macro_f1_std, again.macro_f1_std)


def test_macro_f1_matches_sklearn() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    pred = np.array(
        [
            [0, 1, 1, 1, 2, 0, 2, 0],  # every class predicted
            [0, 0, 0, 0, 0, 2, 2, 0],  # class 1 never predicted
            [3, 0, 1, 1, 2, 2, 3, 0],  # class 3 predicted, absent from truth
        ]
    )
    got = macro_f1(torch.as_tensor(pred), torch.as_tensor(truth), n_classes=4).numpy()
    expected = [f1_score(truth, row, average="macro") for row in pred]
    np.testing.assert_allclose(got, expected)


def test_holdout_scores_one_split() -> None:
    X, y = _layered(n=400)
    scores = probe_layers_holdout(X[:300], y[:300], X[300:], y[300:])
    assert scores.n_folds == 1 and scores.n_examples == 300
    assert scores.best_layer == 3
    np.testing.assert_array_equal(scores.accuracy_std, 0.0)


def test_string_labels_and_stratified_subsample() -> None:
    X, y = _layered(n=300, classes=2)
    names = np.array(["neg", "pos"])[y]
    scores = probe_layers(X, names, max_examples=120)
    assert scores.n_examples == 120
    assert scores.best_layer == 3


def test_ties_rank_the_shallower_layer_first() -> None:
    flat = np.array([0.5, 0.8, 0.8, 0.1])
    scores = LayerScores(flat, flat * 0, flat, flat * 0, n_folds=5, n_examples=10)
    assert scores.ranking().tolist() == [1, 2, 0, 3]
    assert scores.best_layer == 1
    with pytest.raises(ConfigError, match="metric"):
        scores.ranking("auc")


def test_rare_class_shrinks_the_folds_with_a_warning() -> None:
    X, y = _layered(n=60, classes=2)
    y[:] = 0
    y[:3] = 1
    said = "^the rarest class has 3 examples, fewer than the 5 folds asked for: using 3 folds$"
    with pytest.warns(UserWarning, match=said):  # words for the CLI and the library alike
        scores = probe_layers(X, y, n_folds=5)
    assert scores.n_folds == 3


def test_a_class_with_one_example_is_left_out_with_a_warning() -> None:
    X, y = _layered(n=60, classes=2)
    y = np.append(y, 2)
    X = np.concatenate([X, X[:1]])
    with pytest.warns(UserWarning, match="1 class\\(es\\) with a single example among the rows"):
        scores = probe_layers(X, y, n_folds=5)
    assert scores.n_folds == 5 and scores.n_examples == 60
    with pytest.warns(UserWarning, match="left out: 'rare'$"):
        probe_layers(X, y, n_folds=5, class_names=("a", "b", "rare"))


@pytest.mark.parametrize(
    ("X", "y", "kwargs", "match"),
    [
        (np.zeros((10, 4)), np.zeros(10), {}, "3-D"),
        (np.zeros((10, 2, 4)), np.zeros(9), {}, "10 labels"),
        (np.zeros((10, 2, 4)), np.zeros(10), {}, "one class"),
        (np.zeros((5, 2, 4)), np.array([0, 1, 2, 3, 3]), {}, "fewer than 2 classes have 2"),
        (np.zeros((6, 2, 4)), np.array([0, 0, 0, 1, 1, 1]), {"n_folds": 10}, "fewer than n_folds"),
    ],
)
def test_bad_input_is_a_data_error(X: np.ndarray, y: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        probe_layers(X, y, **kwargs)


def test_nan_names_the_layer() -> None:
    X, y = _layered()
    X[5, 2, 1] = np.nan
    X[7, 4, 0] = np.inf
    with pytest.raises(DataError, match=r"layer\(s\) \[2, 4\]"):
        probe_layers(X, y)


def test_bad_parameters_are_config_errors() -> None:
    X, y = _layered()
    with pytest.raises(ConfigError, match="n_folds"):
        probe_layers(X, y, n_folds=1)
    with pytest.raises(ConfigError, match="alpha"):
        probe_layers(X, y, alpha=0.0)


def test_holdout_rejects_unseen_test_labels() -> None:
    X, y = _layered(n=100)
    with pytest.raises(DataError, match="absent from y_train"):
        probe_layers_holdout(X[:50], y[:50], X[50:], y[50:] + 10)


def test_the_spread_over_folds_is_the_sample_std() -> None:
    """Standard errors (the screen's, the best-layer claim's) divide this by sqrt(folds):
    the population std would understate them by 11 % at 5 folds."""
    from autolayer.probe import _summarise

    runs = [(torch.tensor([a]), torch.tensor([a])) for a in (0.5, 0.7)]
    scores = _summarise(runs, n_examples=10)
    np.testing.assert_allclose(scores.accuracy_std, [np.std([0.5, 0.7], ddof=1)], rtol=1e-6)
    np.testing.assert_allclose(scores.macro_f1_std, scores.accuracy_std)


def test_a_sparse_source_is_probed_like_a_linear_svm():
    """TF-IDF rows are unit-norm: the dense probe's penalty would underfit them, so a sparse
    matrix is probed by LinearSVC, fold for fold (here LR would score 0.558, the SVM 0.525)."""
    from scipy.sparse import csr_matrix
    from sklearn.svm import LinearSVC

    from autolayer.probe import folds

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    X = rng.random((120, 300)) * (rng.random((120, 300)) < 0.05)
    for _ in range(3):  # three weak words of the class's ten per text
        X[np.arange(120), y * 10 + rng.integers(0, 10, 120)] += 0.3
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    scores = probe_layers(csr_matrix(X), y, n_folds=5, seed=0)
    svm = []
    for te in folds(y, 5, 0):
        train = np.setdiff1d(np.arange(120), te)
        svm.append(LinearSVC(random_state=0).fit(X[train], y[train]).score(X[te], y[te]))
    assert scores.accuracy[0] == pytest.approx(np.mean(svm), abs=1e-9)


def test_the_head_penalty_is_the_one_cv_scores_best_weakest_on_ties() -> None:
    """``chosen_alpha`` picks by the probe's own CV on the same folds; with a weak signal
    spread over many features (as in an embedding) and a few rows per class, a stronger
    penalty than sklearn's default wins."""
    from autolayer.logistic import DEFAULT_ALPHA
    from autolayer.probe import PENALTIES, chosen_alpha, out_of_fold

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 12)
    x = rng.normal(size=(36, 600))
    x[:, :90] += 0.8 * np.repeat(np.eye(3)[y], 30, axis=1)  # 30 weak features per class
    scores = [  # pooled over the held-out rows, on the probe's folds
        np.mean(out_of_fold(x[:, None], y, n_folds=5, seed=0, alpha=a)[0][0] == y)
        for a in PENALTIES
    ]
    picked = chosen_alpha(x, y)
    assert picked == PENALTIES[int(np.argmax(scores))]
    assert picked > DEFAULT_ALPHA and max(scores) > scores[0]
    assert chosen_alpha(x[:33], y[:33]) == DEFAULT_ALPHA  # 9 rows of class 2: no choice

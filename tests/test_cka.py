"""Linear CKA: invariances, agreement with Gram-matrix references, batching and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from autolayer import cka
from autolayer.cka import cka_grid, cka_matrix, linear_cka
from autolayer.errors import ConfigError, DataError


def _naive_cka(X: np.ndarray, Y: np.ndarray, debiased: bool) -> float:
    """Reference CKA from N×N Gram matrices of the raw (uncentred) features."""
    K, L = X @ X.T, Y @ Y.T
    hsic = _unbiased_hsic if debiased else _biased_hsic
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def _biased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """tr(KHLH) / (n−1)², H the centring matrix."""
    n = len(K)
    H = np.eye(n) - 1.0 / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def _unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. 2012's unbiased estimator, on Gram matrices with zeroed diagonals."""
    n = len(K)
    K, L = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return (
        np.trace(K @ L)
        + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ K @ L @ one)
    ) / (n * (n - 3))


def _correlated(rng: np.random.Generator, n: int, dx: int = 12, dy: int = 9) -> tuple:
    """Two related representations with offsets, X [n, dx], Y [n, dy]."""
    X = rng.normal(size=(n, dx)) + 3.0
    Y = np.tanh(X[:, :dy]) + 0.5 * rng.normal(size=(n, dy)) - 1.0
    return X, Y


@pytest.mark.parametrize("debiased", [False, True])
def test_orthogonal_transform_gives_one(debiased: bool) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 16))
    Q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(X, X @ Q, debiased=debiased) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("debiased", [False, True])
def test_isotropic_scaling_and_symmetry(debiased: bool) -> None:
    X, Y = _correlated(np.random.default_rng(1), 80)
    value = linear_cka(X, Y, debiased=debiased)
    assert linear_cka(X, 7.5 * Y, debiased=debiased) == pytest.approx(value, rel=1e-10)
    assert linear_cka(Y, X, debiased=debiased) == pytest.approx(value, rel=1e-10)


def test_independent_features_near_zero_at_large_n() -> None:
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(20000, 8)), rng.normal(size=(20000, 8))
    assert abs(linear_cka(X, Y)) < 0.01


def test_debiased_removes_small_sample_bias_for_independent_features() -> None:
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(50, 500)), rng.normal(size=(50, 500))
    assert linear_cka(X, Y) > 0.5
    assert abs(linear_cka(X, Y, debiased=True)) < 0.05


@pytest.mark.parametrize("debiased", [False, True])
def test_matches_gram_matrix_reference(debiased: bool) -> None:
    X, Y = _correlated(np.random.default_rng(4), 40)
    expected = _naive_cka(X, Y, debiased)
    assert linear_cka(X, Y, debiased=debiased) == pytest.approx(expected, rel=1e-9)
    grid = cka_grid(X[:, None], Y[:, None], debiased=debiased)
    assert grid[0, 0] == pytest.approx(expected, rel=1e-9)


def test_debiased_estimator_is_unbiased_at_small_n() -> None:
    # x ~ N(0, I), y = x M + ε: population CKA = ‖M‖²_F / (‖I‖_F ‖MᵀM + σ²I‖_F).
    rng = np.random.default_rng(5)
    M = rng.normal(size=(6, 6)) * 0.4
    cov_y = M.T @ M + np.eye(6)
    population = np.square(M).sum() / (np.sqrt(6) * np.linalg.norm(cov_y))
    draws = {False: [], True: []}
    for _ in range(1500):
        X = rng.normal(size=(12, 6))
        Y = X @ M + rng.normal(size=(12, 6))
        for debiased in draws:
            draws[debiased].append(linear_cka(X, Y, debiased=debiased))
    assert abs(np.mean(draws[True]) - population) < 0.02
    assert np.mean(draws[False]) - population > 0.1


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_grid_equals_loop_of_pairs(debiased: bool, dtype: type) -> None:
    rng = np.random.default_rng(6)
    A = (rng.normal(size=(60, 4, 7)) + rng.normal(size=(1, 4, 7))).astype(dtype)
    B = (np.tanh(A[:, :3, :5]) + rng.normal(size=(60, 3, 5))).astype(dtype)
    grid = cka_grid(A, B, debiased=debiased)
    loop = [[linear_cka(A[:, a], B[:, b], debiased=debiased) for b in range(3)] for a in range(4)]
    np.testing.assert_allclose(grid, loop, rtol=1e-5 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_minibatch_equals_full(debiased: bool, dtype: type) -> None:
    rng = np.random.default_rng(7)
    A = (rng.normal(size=(103, 3, 6)) + 5.0).astype(dtype)
    B = (np.sin(A[:, :2]) + rng.normal(size=(103, 2, 6))).astype(dtype)
    full = cka_grid(A, B, debiased=debiased)
    np.testing.assert_allclose(cka_grid(A, B, debiased=debiased, batch_size=10), full, atol=1e-6)


def test_layer_groups_equal_one_product(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(12)
    A, B = rng.normal(size=(50, 5, 4)), rng.normal(size=(50, 3, 6))
    A[:, 1:] += A[:, :1]
    B[:, :, :4] += A[:, :3]
    full = cka_grid(A, B)
    monkeypatch.setattr(cka, "CROSS_BYTES", 2 * 4 * 3 * 6 * 8)  # two layers of A per group
    np.testing.assert_allclose(cka_grid(A, B, batch_size=7), full, rtol=1e-12)


def test_matrix_is_symmetric_with_unit_diagonal() -> None:
    X, Y = _correlated(np.random.default_rng(8), 50)
    embs = {"a": X, "b": Y, "c": X[:, :4] ** 2}
    matrix = cka_matrix(embs)
    assert matrix.shape == (3, 3)
    np.testing.assert_allclose(matrix, matrix.T)
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    assert matrix[0, 1] == pytest.approx(linear_cka(X, Y))


def test_different_rows_is_a_data_error() -> None:
    rng = np.random.default_rng(9)
    with pytest.raises(DataError, match="same rows"):
        cka_grid(rng.normal(size=(10, 2, 3)), rng.normal(size=(11, 2, 3)))
    with pytest.raises(DataError, match="same rows"):
        linear_cka(rng.normal(size=(10, 3)), rng.normal(size=(11, 3)))
    with pytest.raises(DataError, match="same rows"):
        cka_matrix({"a": rng.normal(size=(10, 3)), "b": rng.normal(size=(12, 3))})


def test_nan_names_the_layer() -> None:
    rng = np.random.default_rng(10)
    B = rng.normal(size=(10, 4, 3))
    B[2, 3, 1] = np.nan
    with pytest.raises(DataError, match=r"B has NaN/inf in layer\(s\) \[3\]"):
        cka_grid(rng.normal(size=(10, 2, 3)), B)
    with pytest.raises(DataError, match="'m'"):
        cka_matrix({"ok": B[:, 0], "m": B[:, 3]})


def test_bad_shapes_and_batch_size() -> None:
    rng = np.random.default_rng(11)
    with pytest.raises(DataError, match="3-D"):
        cka_grid(rng.normal(size=(10, 3)), rng.normal(size=(10, 2, 3)))
    with pytest.raises(DataError, match="at least 4 rows"):
        linear_cka(rng.normal(size=(3, 2)), rng.normal(size=(3, 2)), debiased=True)
    with pytest.raises(ConfigError, match="batch_size"):
        cka_grid(rng.normal(size=(10, 2, 3)), rng.normal(size=(10, 2, 3)), batch_size=0)

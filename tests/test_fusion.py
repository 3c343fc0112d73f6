"""Fusion operators, FusionClassifier, train_fusion, predict_proba and head save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from autolayer.errors import CacheError, ConfigError, DivergedError
from autolayer.fusion import (
    OPERATORS,
    FusionClassifier,
    FusionParams,
    count_parameters,
    fused_dim,
    load_classifier,
    make_operator,
    predict_proba,
    save_classifier,
    train_fusion,
)
from autolayer.fusion import _column_stats as column_stats
from autolayer.metrics import score

ALL_OPERATORS = sorted(OPERATORS)
DIMS = (5, 7, 3)
FAST = {"width": 16, "hidden": 32, "lr": 1e-2, "batch_size": 50, "dropout": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


def sum_task(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Label = sign(x1[0] + x2[0]); either input alone gives only ~75% accuracy.

    Input 1 has a huge, uneven scale like a decoder's massive activations.
    """
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=(n, 8)) * np.array([1000.0] + [1.0] * 7)
    x2 = rng.normal(size=(n, 6))
    y = (x1[:, 0] / 1000 + x2[:, 0] > 0).astype(np.int64)
    return [x1.astype(np.float32), x2.astype(np.float32)], y


def random_inputs(n: int, dims: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, dim)).astype(np.float32) for dim in dims]


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_operator_output_has_out_dim_width(name: str, m: int) -> None:
    operator = make_operator(name, m, 8)
    z = operator([torch.rand(4, 8) for _ in range(m)])
    assert z.shape == (4, OPERATORS[name].out_dim(m, 8)) == (4, fused_dim(m, 8, name))


@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_single_input_operator_is_identity(name: str) -> None:
    h = torch.rand(4, 8)
    assert torch.equal(make_operator(name, 1, 8)([h]), h)


@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_operator_n_parameters_matches_built_operator(name: str) -> None:
    for m in (1, 2, 3):
        built = sum(p.numel() for p in make_operator(name, m, 8).parameters())
        assert built == OPERATORS[name].n_parameters(m, 8)


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_classifier_logits_shape_for_uneven_input_dims(name: str, m: int) -> None:
    model = FusionClassifier(DIMS[:m], 8, name, hidden=6, dropout=0.1, n_classes=3)
    logits = model([torch.randn(4, dim) for dim in DIMS[:m]])
    assert logits.shape == (4, 3)


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_count_parameters_matches_built_classifier(name: str, m: int) -> None:
    model = FusionClassifier(DIMS[:m], 8, name, hidden=6, dropout=0.1, n_classes=3)
    built = sum(p.numel() for p in model.parameters())
    assert count_parameters(DIMS[:m], 8, name, hidden=6, n_classes=3) == built


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_gradients_reach_every_projection(name: str, m: int) -> None:
    torch.manual_seed(0)
    model = FusionClassifier(DIMS[:m], 8, name, hidden=6, dropout=0.0, n_classes=2)
    logits = model([torch.randn(32, dim) for dim in DIMS[:m]])
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 2, (32,))).backward()
    for projection in model.projections:
        assert projection.linear.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_learns_label_that_needs_both_inputs(name: str) -> None:
    train, y_train = sum_task(400, seed=1)
    val, y_val = sum_task(200, seed=2)
    params = FusionParams(name, max_epochs=40, patience=10, **FAST)
    result = train_fusion(train, y_train, val, y_val, params=params)
    assert result.best_val_metric >= 0.85


def test_training_is_deterministic_on_cpu() -> None:
    train, y_train = sum_task(200, seed=1)
    val, y_val = sum_task(100, seed=2)
    params = FusionParams("moe", max_epochs=5, **{**FAST, "dropout": 0.2})
    first, second = (
        train_fusion(train, y_train, val, y_val, params=params, seed=3, device="cpu")
        for _ in range(2)
    )
    assert first.history == second.history
    second_state = second.model.state_dict()
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second_state[key])


def test_seed_changes_the_result() -> None:
    train, y_train = sum_task(200, seed=1)
    val, y_val = sum_task(100, seed=2)
    params = FusionParams("sum", max_epochs=2, **FAST)
    a, b = (train_fusion(train, y_train, val, y_val, params=params, seed=s) for s in (0, 1))
    assert not torch.equal(a.model.head[0].weight, b.model.head[0].weight)


def test_result_reports_restored_best_weights() -> None:
    train, y_train = sum_task(300, seed=1)
    val, y_val = sum_task(150, seed=2)
    params = FusionParams("concat", max_epochs=15, **FAST)
    result = train_fusion(train, y_train, val, y_val, params=params)
    assert result.history[result.best_epoch] == max(result.history) == result.best_val_metric
    accuracy = (predict_proba(result.model, val).argmax(axis=1) == y_val).mean()
    assert accuracy == pytest.approx(result.best_val_metric)
    assert result.n_parameters == count_parameters([8, 6], 16, "concat", 32, 2)
    assert result.train_seconds >= 0  # measured, never asserted on: no wall-time checks
    assert next(result.model.parameters()).device.type == "cpu"


def test_early_stopping_stops_on_a_plateau() -> None:
    train, y_train = sum_task(100, seed=1)
    val, y_val = sum_task(50, seed=2)
    params = FusionParams("sum", max_epochs=50, patience=3, **{**FAST, "lr": 1e-12})
    result = train_fusion(train, y_train, val, y_val, params=params)
    assert result.best_epoch == 0
    assert len(result.history) == 4


def test_on_epoch_returning_true_stops_training() -> None:
    train, y_train = sum_task(100, seed=1)
    val, y_val = sum_task(50, seed=2)
    calls: list[tuple[int, float]] = []

    def prune_at_two(epoch: int, metric: float) -> bool:
        calls.append((epoch, metric))
        return epoch == 2

    params = FusionParams("sum", max_epochs=50, patience=50, **FAST)
    result = train_fusion(train, y_train, val, y_val, params=params, on_epoch=prune_at_two)
    assert [epoch for epoch, _ in calls] == [0, 1, 2]
    assert result.history == tuple(metric for _, metric in calls)


def test_macro_f1_matches_sklearn() -> None:
    target = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0, 3])
    expected = f1_score(target.numpy(), pred.numpy(), average="macro")
    assert score(pred, target, "macro_f1") == pytest.approx(expected)


def test_training_with_macro_f1_metric() -> None:
    train, y_train = sum_task(100, seed=1)
    val, y_val = sum_task(50, seed=2)
    params = FusionParams("sum", max_epochs=3, metric="macro_f1", **FAST)
    result = train_fusion(train, y_train, val, y_val, params=params)
    pred = predict_proba(result.model, val).argmax(axis=1)
    assert result.best_val_metric == pytest.approx(f1_score(y_val, pred, average="macro"))


def test_standardisation_uses_training_statistics() -> None:
    inputs = random_inputs(50, (4,))
    inputs[0][:, 1] *= 1e4
    inputs[0][:, 2] = 7.0
    model = FusionClassifier([4], 8, "sum", hidden=6, dropout=0.0, n_classes=2)
    model.set_standardisation(inputs)
    stats, exact = model.projections[0], inputs[0].astype(np.float64)
    np.testing.assert_allclose(stats.mean.numpy(), exact.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(
        stats.std.numpy()[[0, 1, 3]], exact.std(axis=0)[[0, 1, 3]], rtol=1e-6
    )
    assert stats.std[2] == 1.0


def test_column_stats_in_chunks_match_numpy_float64() -> None:
    array = random_inputs(50, (6,))[0] * 1e4 + 3e4
    mean, std = column_stats(array, rows=7)
    np.testing.assert_allclose(mean, array.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, array.astype(np.float64).std(axis=0), rtol=1e-9)


@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_save_load_round_trip_predicts_identically(name: str, tmp_path) -> None:
    inputs = random_inputs(20, DIMS[:2])
    model = FusionClassifier(DIMS[:2], 8, name, hidden=6, dropout=0.1, n_classes=3)
    model.set_standardisation(inputs)
    save_classifier(model, tmp_path / "head")
    loaded = load_classifier(tmp_path / "head")
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == [
        "head.json",
        "head.safetensors",
    ]
    assert loaded.config() == model.config()
    np.testing.assert_array_equal(predict_proba(loaded, inputs), predict_proba(model, inputs))


def test_predict_proba_rows_sum_to_one_in_small_batches() -> None:
    inputs = random_inputs(10, DIMS[:2])
    model = FusionClassifier(DIMS[:2], 8, "concat", hidden=6, dropout=0.1, n_classes=4)
    proba = predict_proba(model, inputs, batch_size=3)
    assert proba.shape == (10, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(proba, predict_proba(model, inputs), rtol=1e-5)


def test_load_rejects_weights_that_do_not_match_config(tmp_path) -> None:
    model = FusionClassifier([5], 8, "sum", hidden=6, dropout=0.1, n_classes=2)
    save_classifier(model, tmp_path)
    config = json.loads((tmp_path / "head.json").read_text())
    (tmp_path / "head.json").write_text(json.dumps({**config, "hidden": 7}))
    with pytest.raises(CacheError, match="does not match"):  # damaged since saved: exit 4
        load_classifier(tmp_path)


def test_load_from_empty_directory_raises(tmp_path) -> None:
    with pytest.raises(ConfigError, match="head.json"):
        load_classifier(tmp_path)


def test_unknown_operator_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"operator must be one of .*got 'outer'"):
        make_operator("outer", 2, 8)
    with pytest.raises(ConfigError, match="operator"):
        FusionParams("outer")


def test_quaternion_needs_width_divisible_by_four() -> None:
    with pytest.raises(ConfigError, match="width must be divisible by 4.*got 10"):
        make_operator("quaternion", 2, 10)
    with pytest.raises(ConfigError, match="divisible by 4"):
        count_parameters([5, 6], 10, "quaternion", 6, 2)
    with pytest.raises(ConfigError, match="divisible by 4"):
        FusionParams("quaternion", width=10)


@pytest.mark.parametrize(
    ("field", "value"),
    [("metric", "auc"), ("lr", 0.0), ("dropout", 1.0), ("batch_size", 0), ("patience", 0)],
)
def test_invalid_params_raise_config_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        FusionParams("sum", **{field: value})


def test_mismatched_inputs_raise_config_error() -> None:
    train, y_train = sum_task(50, seed=1)
    val, y_val = sum_task(20, seed=2)
    params = FusionParams("sum", max_epochs=1, **FAST)
    with pytest.raises(ConfigError, match="val must be 2"):
        train_fusion(train, y_train, [val[0], val[0]], y_val, params=params)
    with pytest.raises(ConfigError, match="y_train"):
        train_fusion(train, y_train[:-1], val, y_val, params=params)
    with pytest.raises(ConfigError, match="y_train"):
        train_fusion(train, y_train.astype(np.float32), val, y_val, params=params)


def test_linear_head_is_sklearns_logistic_regression_on_standardised_concat() -> None:
    """At the penalty CV chooses from the training rows (``probe.chosen_alpha``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from autolayer.probe import chosen_alpha

    inputs = [x * 100 for x in random_inputs(60, DIMS[:2])]  # uneven scales: standardised first
    y = np.random.default_rng(1).integers(0, 3, 60)
    params = FusionParams(operator="concat", width=0, lr=0.0, head="linear")
    result = train_fusion(inputs, y, None, None, params=params)
    joined = np.concatenate(inputs, axis=1)
    scaler = StandardScaler().fit(joined)
    alpha = chosen_alpha(scaler.transform(joined), y)
    reference = LogisticRegression(C=1 / alpha, max_iter=5000, tol=1e-8)
    reference.fit(scaler.transform(joined), y)
    ours = predict_proba(result.model, inputs)
    theirs = reference.predict_proba(scaler.transform(joined))
    assert np.abs(ours - theirs).max() < 2e-3
    assert count_parameters(DIMS[:2], 0, "concat", 0, 3, "linear") == result.n_parameters


def test_linear_head_round_trips_and_refuses_sparse_inputs(tmp_path) -> None:
    from scipy.sparse import csr_matrix

    inputs = random_inputs(30, DIMS[:2])
    y = np.arange(30) % 2
    params = FusionParams(operator="concat", width=0, lr=0.0, head="linear")
    model = train_fusion(inputs, y, None, None, params=params).model
    save_classifier(model, tmp_path / "head")
    loaded = load_classifier(tmp_path / "head")
    assert loaded.config()["head"] == "linear"
    np.testing.assert_array_equal(predict_proba(loaded, inputs), predict_proba(model, inputs))
    with pytest.raises(ConfigError, match="dense features only"):
        train_fusion([csr_matrix(inputs[0])], y, None, None, params=params)
    with pytest.raises(ConfigError, match="head must be one of"):
        FusionParams(operator="concat", head="tree")


def test_a_diverging_head_is_refused_and_names_lr() -> None:
    """A learning rate so large that the loss overflows must not yield a head that predicts
    NaN (and the first class for every row) while reporting a score."""
    train, y = sum_task(40, seed=1)
    params = FusionParams("concat", max_epochs=3, **{**FAST, "lr": 1e30})
    with pytest.raises(DivergedError, match=r"diverged.*lower lr"):
        train_fusion(train, y, train, y, params=params)


def test_non_finite_training_features_are_a_damaged_cache_entry() -> None:
    """Exit 4, not 2: nothing typed is wrong, the embeddings on disk are."""
    train, y = sum_task(40, seed=1)
    train[1][3, 2] = np.inf
    params = FusionParams("concat", max_epochs=1, **FAST)
    with pytest.raises(CacheError, match=r"input 1 .*not finite.*clear their cache entry"):
        train_fusion(train, y, None, None, params=params)


def test_load_refuses_a_head_whose_bytes_make_weights_non_finite(tmp_path) -> None:
    model = FusionClassifier([5], 8, "sum", hidden=6, dropout=0.1, n_classes=2)
    model.set_standardisation(random_inputs(20, (5,)))
    save_classifier(model, tmp_path)
    weights = tmp_path / "head.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\xff\xff\xff\xff")  # a float32 NaN
    with pytest.raises(CacheError, match=r"head.safetensors is damaged.*not finite"):
        load_classifier(tmp_path)


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda folder: (folder / "head.safetensors").write_bytes(b"\xff" * 64), "is corrupt"),
        (lambda folder: (folder / "head.json").write_text("{"), "not a valid head config"),
    ],
    ids=["weights", "config"],
)
def test_a_damaged_saved_head_is_a_cache_error(tmp_path, damage, named) -> None:
    """A saved file autolayer wrote and something else damaged: exit 4, as a damaged cache
    entry, not 2 ("fix what you typed")."""
    model = FusionClassifier([5], 8, "sum", hidden=6, dropout=0.1, n_classes=2)
    model.set_standardisation(random_inputs(20, (5,)))
    save_classifier(model, tmp_path)
    damage(tmp_path)
    with pytest.raises(CacheError, match=named):
        load_classifier(tmp_path)


def test_predict_proba_refuses_non_finite_features_as_damaged() -> None:
    inputs = random_inputs(6, (5,))
    model = FusionClassifier([5], 8, "sum", hidden=6, dropout=0.1, n_classes=2)
    model.set_standardisation(inputs)
    inputs[0][4, 1] = np.nan
    with pytest.raises(CacheError, match=r"not finite for 1 of 6 rows \(first: row 4\)"):
        predict_proba(model, inputs)


def test_predict_proba_calls_an_overflowing_head_diverged() -> None:
    """Finite weights on finite features can still overflow (huge weights): not damage, a
    head to train again with a lower lr."""
    inputs = random_inputs(6, (5,))
    model = FusionClassifier([5], 8, "sum", hidden=6, dropout=0.0, n_classes=2)
    model.set_standardisation(inputs)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(3e38)
    with pytest.raises(DivergedError, match=r"not finite for 6 of 6 rows.*lower lr"):
        predict_proba(model, inputs)


def test_read_only_features_and_labels_reach_torch_without_a_warning(recwarn):
    """A validation file's labels and cached (memory-mapped) features are read-only: torch
    warns ("NumPy array is not writable") when handed such an array without a copy."""
    train, y_train = sum_task(60, 0)
    val, y_val = sum_task(30, 1)
    for array in (*train, y_train, *val, y_val):
        array.flags.writeable = False
    always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # otherwise torch warns once per process, maybe already
    try:
        train_fusion(train, y_train, val, y_val, params=FusionParams("sum", max_epochs=1, **FAST))
    finally:
        torch.set_warn_always(always)
    assert not [w for w in recwarn if "not writable" in str(w.message)]

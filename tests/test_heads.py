"""The heads (autolayer.heads): the MLP and linear heads' networks, training, early stopping,
pruning hook, cross-validation, prediction, save/load (schema-1 folders too), damage and
divergence."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
from scipy.sparse import csr_matrix
from scipy.sparse import random as sparse_random
from sklearn.metrics import f1_score

from autolayer.errors import CacheError, ConfigError, DivergedError
from autolayer.fusion import OPERATORS
from autolayer.heads import (
    HEADS,
    Head,
    HeadFit,
    cross_validate,
    guided_params,
    head_class,
    load_head,
    make_head,
    register_head,
)
from autolayer.heads.linear import LinearHead
from autolayer.heads.mlp import DEFAULTS, MLPHead, MLPNet
from autolayer.heads.modules import (
    EVAL_BATCH,
    _column_stats,
    batched_logits,
    standardise,
    to_tensor,
)
from autolayer.metrics import score
from autolayer.task import make_task

ALL_OPERATORS = sorted(OPERATORS)
DIMS = (5, 7, 3)
FAST = {"width": 16, "hidden": 32, "lr": 1e-2, "batch_size": 50, "dropout": 0.0}
SCHEMA1 = Path(__file__).parent / "data" / "schema1"

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


def mlp(operator: str = "sum", metric: str = "accuracy", **params: object) -> Head:
    return make_head("mlp", {"operator": operator, **FAST, **params}, metric=metric)


def net(operator: str, dims: tuple[int, ...], n_outputs: int, **params: object) -> MLPNet:
    shape = {**DEFAULTS, "operator": operator, "width": 8, "hidden": 6, **params}
    return MLPNet(dims, [False] * len(dims), shape, n_outputs)


def fitted_mlp(dims: tuple[int, ...] = (5,), n_outputs: int = 2, **params: object) -> Head:
    """A small MLP head after one epoch on random rows."""
    inputs = random_inputs(20, dims)
    head = mlp(**{"epochs": 1, **params})
    head.fit(inputs, np.arange(20) % n_outputs, n_outputs=n_outputs)
    return head


# ---------------------------------------------------------------------- the MLP's network


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_mlp_logits_shape_for_uneven_input_dims(name: str, m: int) -> None:
    logits = net(name, DIMS[:m], 3, dropout=0.1)([torch.randn(4, dim) for dim in DIMS[:m]])
    assert logits.shape == (4, 3)


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_n_parameters_matches_built_mlp(name: str, m: int) -> None:
    built = sum(p.numel() for p in net(name, DIMS[:m], 3).parameters())
    params = {"operator": name, "width": 8, "hidden": 6}
    assert head_class("mlp").n_parameters(DIMS[:m], 3, params) == built
    assert head_class("mlp").fused_dim(DIMS[:m], params) == OPERATORS[name].out_dim(m, 8)


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_gradients_reach_every_projection(name: str, m: int) -> None:
    torch.manual_seed(0)
    model = net(name, DIMS[:m], 2, dropout=0.0)
    logits = model([torch.randn(32, dim) for dim in DIMS[:m]])
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 2, (32,))).backward()
    for projection in model.projections:
        assert projection.linear.weight.grad.abs().sum() > 0


def test_standardisation_uses_training_statistics() -> None:
    inputs = random_inputs(50, (4,))
    inputs[0][:, 1] *= 1e4
    inputs[0][:, 2] = 7.0
    model = net("sum", (4,), 2)
    standardise(model.projections, inputs)
    stats, exact = model.projections[0], inputs[0].astype(np.float64)
    np.testing.assert_allclose(stats.mean.numpy(), exact.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(
        stats.std.numpy()[[0, 1, 3]], exact.std(axis=0)[[0, 1, 3]], rtol=1e-6
    )
    assert stats.std[2] == 1.0


def test_column_stats_in_chunks_match_numpy_float64() -> None:
    array = random_inputs(50, (6,))[0] * 1e4 + 3e4
    mean, std = _column_stats(array, rows=7)
    np.testing.assert_allclose(mean, array.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, array.astype(np.float64).std(axis=0), rtol=1e-9)


# ---------------------------------------------------------------------- the MLP's parameters


def test_mlp_params_are_completed_with_defaults() -> None:
    assert make_head("mlp", {}).params == DEFAULTS
    assert make_head("mlp", {"width": 16, "lr": 1}).params == {**DEFAULTS, "width": 16, "lr": 1.0}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 0.0),
        ("lr", 2.0),
        ("dropout", 1.0),
        ("batch_size", 0),
        ("patience", 0),
        ("epochs", 1001),
        ("width", 0),
        ("hidden", 65537),
        ("weight_decay", -1.0),
        ("weight_decay", float("inf")),
        ("weight_decay", 1e12),
        ("patience", 1001),
        ("width", True),
        ("operator", "outer"),
        ("operator", ["sum"]),
    ],
)
def test_invalid_mlp_params_raise_config_error_naming_the_field(field: str, value: object) -> None:
    named = rf"^head: field '{field}' must be .*; got {re.escape(repr(value))}$"
    with pytest.raises(ConfigError, match=named):
        make_head("mlp", {field: value})


def test_unknown_mlp_field_and_unknown_metric_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"head: unknown field\(s\) 'max_epochs'; known: .*"):
        make_head("mlp", {"max_epochs": 3})
    with pytest.raises(ConfigError, match=r"metric must be one of .*got 'auc'"):
        make_head("mlp", {}, metric="auc")
    with pytest.raises(ConfigError, match="head must be one of"):
        make_head("tree", {})


def test_quaternion_needs_a_width_divisible_by_four() -> None:
    with pytest.raises(ConfigError, match="divisible by 4"):
        MLPHead.n_parameters([5, 6], 2, {"operator": "quaternion", "width": 10})
    with pytest.raises(ConfigError, match=r"^cfg: width must be divisible by 4"):
        MLPHead.check_params({"operator": "quaternion", "width": 10}, where="cfg")


def space(**fields: object) -> SimpleNamespace:
    """The parts of a search Space a head reads."""
    defaults = {"widths": (256, 512), "lr": (1e-4, 3e-3), "hidden": 64, "dropout": 0.2}
    defaults |= {"max_epochs": 60, "patience": 8, "operator_names": lambda: ("sum", "moe")}
    return SimpleNamespace(**(defaults | fields))


def test_mlp_suggests_the_operator_only_among_several_models() -> None:
    import optuna

    asked = optuna.trial.FixedTrial({"operator": "moe", "width": 512, "lr": 1e-3})
    expected = {**DEFAULTS, "width": 512, "lr": 1e-3, "hidden": 64, "dropout": 0.2}
    expected |= {"epochs": 60, "patience": 8}
    assert MLPHead.suggest(asked, space(), ["a", "b"]) == {**expected, "operator": "moe"}
    alone = optuna.trial.FixedTrial({"width": 512, "lr": 1e-3})  # asking "operator" fails
    assert MLPHead.suggest(alone, space(), ["a"]) == {**expected, "operator": "concat"}


def test_mlp_final_params_stop_on_held_out_rows_and_describe_says_its_shape() -> None:
    params = make_head("mlp", {"operator": "sum", "width": 256}).params
    final = MLPHead.final_params(params, {"best_epoch": 6, "epochs_run": 15, "val_rows": 900})
    assert final == params | {"validation_fraction": 0.1}  # see tests/test_final_fit.py
    assert MLPHead.n_configurations(space()) is None
    assert MLPHead.describe(params, 2) == "fused by sum, width 256"
    assert MLPHead.describe(params, 1) == "width 256"


# ---------------------------------------------------------------------- training


@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_learns_label_that_needs_both_inputs(name: str) -> None:
    train, y_train = sum_task(400, seed=1)
    val, y_val = sum_task(200, seed=2)
    fit = mlp(name, epochs=40, patience=10).fit(train, y_train, val, y_val)
    assert fit.best_val_metric >= 0.85


def test_training_is_deterministic_on_cpu() -> None:
    train, y_train = sum_task(200, seed=1)
    val, y_val = sum_task(100, seed=2)
    first, second = (mlp("moe", epochs=5, dropout=0.2) for _ in range(2))
    for head in (first, second):
        head.fit(train, y_train, val, y_val, seed=3, device="cpu")
    assert first.fit_.history == second.fit_.history
    second_state = second._state()
    for key, value in first._state().items():
        assert torch.equal(value, second_state[key])


def test_fit_leaves_the_callers_random_state_untouched() -> None:
    train, y_train = sum_task(60, seed=1)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    mlp(epochs=1).fit(train, y_train, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_seed_changes_the_result() -> None:
    train, y_train = sum_task(200, seed=1)
    val, y_val = sum_task(100, seed=2)
    a, b = mlp(epochs=2), mlp(epochs=2)
    a.fit(train, y_train, val, y_val, seed=0)
    b.fit(train, y_train, val, y_val, seed=1)
    assert not torch.equal(a.net_.head[0].weight, b.net_.head[0].weight)


def test_fit_reports_restored_best_weights() -> None:
    train, y_train = sum_task(300, seed=1)
    val, y_val = sum_task(150, seed=2)
    head = mlp("concat", epochs=15)
    fit = head.fit(train, y_train, val, y_val)
    assert isinstance(fit, HeadFit) and fit is head.fit_
    assert fit.history[fit.best_epoch] == max(fit.history) == fit.best_val_metric
    accuracy = (head.predict_proba(val).argmax(axis=1) == y_val).mean()
    assert accuracy == pytest.approx(fit.best_val_metric)
    assert fit.n_parameters == MLPHead.n_parameters([8, 6], 2, head.params)
    assert fit.train_seconds >= 0  # measured, never asserted on: no wall-time checks
    assert next(head.net_.parameters()).device.type == "cpu"


def test_without_validation_every_epoch_is_trained_and_the_last_kept() -> None:
    train, y_train = sum_task(100, seed=1)
    head = mlp(epochs=4, patience=1, lr=1e-12)  # a plateau: early stopping would stop at 1
    fit = head.fit(train, y_train)
    assert len(fit.history) == 4 and fit.best_epoch == 3
    accuracy = (head.predict_proba(train).argmax(axis=1) == y_train).mean()
    assert fit.history[-1] == pytest.approx(accuracy)  # the training metric


def test_early_stopping_stops_on_a_plateau() -> None:
    train, y_train = sum_task(100, seed=1)
    val, y_val = sum_task(50, seed=2)
    fit = mlp(epochs=50, patience=3, lr=1e-12).fit(train, y_train, val, y_val)
    assert fit.best_epoch == 0
    assert len(fit.history) == 4
    full = mlp(epochs=6, patience=3, lr=1e-12).fit(train, y_train, val, y_val, stop_early=False)
    assert len(full.history) == 6 and full.best_epoch == 0


def test_on_epoch_returning_true_stops_training() -> None:
    train, y_train = sum_task(100, seed=1)
    val, y_val = sum_task(50, seed=2)
    calls: list[tuple[int, float]] = []

    def prune_at_two(epoch: int, metric: float) -> bool:
        calls.append((epoch, metric))
        return epoch == 2

    fit = mlp(epochs=50, patience=50).fit(train, y_train, val, y_val, on_epoch=prune_at_two)
    assert [epoch for epoch, _ in calls] == [0, 1, 2]
    assert fit.history == tuple(metric for _, metric in calls)


def test_macro_f1_matches_sklearn() -> None:
    target = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0, 3])
    expected = f1_score(target.numpy(), pred.numpy(), average="macro")
    assert score(pred, target, "macro_f1") == pytest.approx(expected)


def test_training_with_macro_f1_metric() -> None:
    train, y_train = sum_task(100, seed=1)
    val, y_val = sum_task(50, seed=2)
    head = mlp(epochs=3, metric="macro_f1")
    fit = head.fit(train, y_train, val, y_val)
    pred = head.predict_proba(val).argmax(axis=1)
    assert fit.best_val_metric == pytest.approx(f1_score(y_val, pred, average="macro"))


def test_mismatched_inputs_raise_config_error() -> None:
    train, y_train = sum_task(50, seed=1)
    val, y_val = sum_task(20, seed=2)
    head = mlp(epochs=1)
    with pytest.raises(ConfigError, match="val must be 2"):
        head.fit(train, y_train, [val[0], val[0]], y_val)
    with pytest.raises(ConfigError, match="y_train"):
        head.fit(train, y_train[:-1], val, y_val)
    with pytest.raises(ConfigError, match="y_train"):
        head.fit(train, y_train.astype(np.float32), val, y_val)


def test_a_diverging_head_is_refused_and_names_lr() -> None:
    """A learning rate so large that the loss overflows must not yield a head that predicts
    NaN (and the first class for every row) while reporting a score."""
    train, y = sum_task(40, seed=1)
    head = mlp("concat", epochs=3, lr=1.0, weight_decay=1e3, batch_size=1)  # weights * -999 a step
    with pytest.raises(DivergedError, match=r"mlp head diverged.*; lower lr \(it is 1\)$"):
        head.fit(train, y, train, y)


def test_non_finite_training_features_are_a_damaged_cache_entry() -> None:
    """Exit 4, not 2: nothing typed is wrong, the embeddings on disk are."""
    train, y = sum_task(40, seed=1)
    train[1][3, 2] = np.inf
    with pytest.raises(CacheError, match=r"input 1 .*not finite.*clear their cache entry"):
        mlp("concat", epochs=1).fit(train, y)


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
        mlp(epochs=1).fit(train, y_train, val, y_val)
    finally:
        torch.set_warn_always(always)
    assert not [w for w in recwarn if "not writable" in str(w.message)]


# ---------------------------------------------------------------------- cross-validation


def test_cross_validation_runs_every_epoch_of_every_fold() -> None:
    train, y = sum_task(60, seed=1)
    folds = [np.arange(0, 30), np.arange(30, 60)]
    head = mlp(epochs=4, patience=1, lr=1e-12)  # a plateau: early stopping would stop
    result = cross_validate(head, train, y, folds, seed=0)
    assert len(result.curve) == 4 and len(result.fold_scores) == 2
    assert result.best_val_metric == pytest.approx(np.mean(result.fold_scores))
    assert not hasattr(head, "fit_")  # judged by copies; the head itself stays unfitted


# ---------------------------------------------------------------------- prediction, save, load


@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_save_load_round_trip_predicts_identically(name: str, tmp_path) -> None:
    inputs = random_inputs(20, DIMS[:2])
    head = make_head("mlp", {"operator": name, "width": 8, "hidden": 6, "epochs": 1})
    head.fit(inputs, np.arange(20) % 3)
    head.save(tmp_path / "head")
    loaded = load_head(tmp_path / "head")
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == [
        "head.json",
        "head.safetensors",
    ]
    assert (loaded.kind, loaded.params, loaded.input_dims_) == ("mlp", head.params, [5, 7])
    assert (loaded.sparse_, loaded.n_outputs_, loaded.metric) == ([False, False], 3, "accuracy")
    np.testing.assert_array_equal(loaded.predict_proba(inputs), head.predict_proba(inputs))


def test_predict_proba_rows_sum_to_one_whatever_the_batch() -> None:
    inputs = random_inputs(10, DIMS[:2])
    head = make_head("mlp", {"width": 8, "hidden": 6, "epochs": 1})
    head.fit(inputs, np.arange(10) % 4)
    proba = head.predict_proba(inputs)
    assert proba.shape == (10, 4) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    tensors = [to_tensor(x, torch.device("cpu")) for x in inputs]
    small = batched_logits(head.net_, tensors, batch_size=3).softmax(dim=-1).numpy()
    assert EVAL_BATCH > 10
    np.testing.assert_allclose(small, proba, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_schema1_heads_load_and_predict(kind: str) -> None:
    """Folders saved before heads were plug-ins (flat head.json, its kind as ``head``)."""
    head = load_head(SCHEMA1 / kind)
    dims = {"mlp": [61, 32], "linear": [32]}[kind]
    assert (head.kind, head.input_dims_, head.n_outputs_) == (kind, dims, 2)
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(7, dim)).astype(np.float32) for dim in dims]
    if kind == "mlp":
        assert head.params["operator"] == "sum" and head.params["width"] == 16
        inputs[0] = sparse_random(7, 61, density=0.2, format="csr", random_state=0)
    else:
        assert head.params == {}
    proba = head.predict_proba(inputs)
    assert proba.shape == (7, 2) and np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_load_rejects_weights_that_do_not_match_config(tmp_path) -> None:
    fitted_mlp().save(tmp_path)
    record = json.loads((tmp_path / "head.json").read_text())
    record["params"]["hidden"] = 7
    (tmp_path / "head.json").write_text(json.dumps(record))
    with pytest.raises(CacheError, match="does not match"):  # damaged since saved: exit 4
        load_head(tmp_path)


def test_load_from_empty_directory_raises(tmp_path) -> None:
    with pytest.raises(ConfigError, match="head.json"):
        load_head(tmp_path)


def test_load_refuses_a_head_whose_bytes_make_weights_non_finite(tmp_path) -> None:
    fitted_mlp().save(tmp_path)
    weights = tmp_path / "head.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\xff\xff\xff\xff")  # a float32 NaN
    with pytest.raises(CacheError, match=r"head.safetensors is damaged.*not finite"):
        load_head(tmp_path)


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
    fitted_mlp().save(tmp_path)
    damage(tmp_path)
    with pytest.raises(CacheError, match=named):
        load_head(tmp_path)


def test_predict_proba_refuses_non_finite_features_as_damaged() -> None:
    head = fitted_mlp()
    inputs = random_inputs(6, (5,))
    inputs[0][4, 1] = np.nan
    with pytest.raises(CacheError, match=r"not finite for 1 of 6 rows \(first: row 4\)"):
        head.predict_proba(inputs)


def test_predict_proba_calls_an_overflowing_head_diverged() -> None:
    """Finite weights on finite features can still overflow (huge weights): not damage, a
    head to train again with a lower lr."""
    head = fitted_mlp()
    with torch.no_grad():
        for parameter in head.net_.parameters():
            parameter.fill_(3e38)
    with pytest.raises(DivergedError, match=r"not finite for 6 of 6 rows.*lower lr"):
        head.predict_proba(random_inputs(6, (5,)))


def test_a_sparse_input_is_projected_through_a_table_counted_in_the_parameters() -> None:
    rng = np.random.default_rng(0)
    inputs = [sparse_random(40, 30, density=0.1, format="csr", random_state=0), *sum_task(40, 1)[0]]
    head = mlp("moe", epochs=2)
    fit = head.fit(inputs, rng.integers(0, 3, 40))
    assert head.sparse_ == [True, False, False] and "projections.0.weight" in head._state()
    assert fit.n_parameters == MLPHead.n_parameters([30, 8, 6], 3, head.params)
    assert head.predict_proba(inputs).shape == (40, 3)


def test_sparse_inputs_are_refused_where_the_head_was_fitted_dense() -> None:
    head = fitted_mlp()
    with pytest.raises(ConfigError, match="sparse"):
        head.predict_proba([csr_matrix(random_inputs(6, (5,))[0])])


# ---------------------------------------------------------------------- the linear head


def test_linear_head_is_sklearns_logistic_regression_on_standardised_concat() -> None:
    """At the penalty CV chooses from the training rows (``probe.chosen_alpha``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from autolayer.probe import chosen_alpha

    inputs = [x * 100 for x in random_inputs(60, DIMS[:2])]  # uneven scales: standardised first
    y = np.random.default_rng(1).integers(0, 3, 60)
    head = make_head("linear", {})
    fit = head.fit(inputs, y)
    joined = np.concatenate(inputs, axis=1)
    scaler = StandardScaler().fit(joined)
    alpha = chosen_alpha(scaler.transform(joined), y)
    reference = LogisticRegression(C=1 / alpha, max_iter=5000, tol=1e-8)
    reference.fit(scaler.transform(joined), y)
    ours = head.predict_proba(inputs)
    theirs = reference.predict_proba(scaler.transform(joined))
    assert np.abs(ours - theirs).max() < 2e-3
    assert LinearHead.n_parameters(DIMS[:2], 3, {}) == fit.n_parameters == (12 + 1) * 3
    assert fit.history == (fit.best_val_metric,) and fit.best_epoch == 0


def test_linear_head_round_trips_and_takes_sparse_inputs(tmp_path) -> None:
    inputs = random_inputs(30, DIMS[:2])
    y = np.arange(30) % 2
    head = make_head("linear", {})
    head.fit(inputs, y)
    head.save(tmp_path / "head")
    loaded = load_head(tmp_path / "head")
    assert loaded.kind == "linear" and isinstance(loaded, LinearHead)
    np.testing.assert_array_equal(loaded.predict_proba(inputs), head.predict_proba(inputs))
    make_head("linear", {}).fit([csr_matrix(inputs[0])], y)  # see tests/test_linear_sparse.py


def test_linear_head_takes_no_parameters_and_has_one_configuration() -> None:
    assert not LinearHead.dense_only and not MLPHead.dense_only
    with pytest.raises(ConfigError, match=r"head: unknown field\(s\) 'width'"):
        make_head("linear", {"width": 8})
    assert LinearHead.suggest(None, space(), ["a", "b"]) == {}
    assert LinearHead.n_configurations(space()) == 1
    assert LinearHead.describe({}, 2) == "linear head (logistic regression; a linear SVM on TF-IDF)"
    assert LinearHead.fused_dim([5, 7], {}) == 12


# ---------------------------------------------------------------------- the base's contract


class Forgetful(LinearHead):
    """A head whose trials ask a choice its guided setting leaves out."""

    kind = "forgetful"

    @classmethod
    def suggest(cls, trial, space, chosen):
        return {"temperature": trial.suggest_float("temperature", 0.1, 10.0)}


def test_a_head_must_say_its_guided_setting() -> None:
    assert "guided" in Head.__abstractmethods__
    assert LinearHead.guided(space(), ["a", "b"]) == {}


def test_guided_params_are_the_suggested_params_of_the_guided_setting() -> None:
    chosen = ["a", "b"]
    expected = MLPHead.suggest(
        optuna.trial.FixedTrial({"operator": "sum", "width": 256, "lr": 1e-3}), space(), chosen
    )
    assert guided_params(MLPHead, space(operator_names=lambda: ("sum",)), chosen) == expected
    assert guided_params(LinearHead, space(), chosen) == {}


def test_a_guided_setting_missing_a_choice_names_the_head_and_the_choice() -> None:
    with pytest.raises(
        ConfigError, match=r"^the forgetful head's guided setting has no value for 'temperature'"
    ):
        guided_params(Forgetful, space(), ["a"])


@pytest.mark.parametrize("text", [b"[1, 2]", b'"mlp"', b'{"kind": ["mlp"]}', b"\xff{"])
def test_a_head_json_that_is_not_a_head_record_is_a_cache_error(tmp_path, text) -> None:
    fitted_mlp().save(tmp_path)
    (tmp_path / "head.json").write_bytes(text)
    with pytest.raises(CacheError, match="not a valid head config"):
        load_head(tmp_path)


@pytest.mark.parametrize("field", ["params", "input_dims", "n_outputs"])
def test_a_head_json_missing_a_field_names_it(tmp_path, field) -> None:
    fitted_mlp().save(tmp_path)
    record = json.loads((tmp_path / "head.json").read_text())
    del record[field]
    (tmp_path / "head.json").write_text(json.dumps(record))
    with pytest.raises(CacheError, match=f"not a valid head config: missing field '{field}'$"):
        load_head(tmp_path)


@pytest.mark.parametrize(("field", "what"), [("kind", "head"), ("task", "task")])
def test_a_saved_head_of_an_unregistered_plug_in_names_what_to_import(tmp_path, field, what):
    """Not damage (exit 4): this process lacks the plug-in's module (exit 2)."""
    fitted_mlp().save(tmp_path)
    record = json.loads((tmp_path / "head.json").read_text())
    (tmp_path / "head.json").write_text(json.dumps({**record, field: "toy"}))
    with pytest.raises(ConfigError) as caught:
        load_head(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'head.json'} names {what} 'toy', which is not registered in this "
        "process: import the module that registers it"
    )
    assert not isinstance(caught.value, CacheError)


class DenseOnly(LinearHead):
    """A head that takes dense features only (no stock head does since the linear head
    reads sparse ones)."""

    dense_only = True


@pytest.fixture
def dense_only():
    register_head("dense")(DenseOnly)
    yield
    HEADS.pop("dense")


def test_the_base_refuses_sparse_features_to_a_dense_only_head(tmp_path, dense_only) -> None:
    inputs = random_inputs(30, DIMS[:2])
    y = np.arange(30) % 2
    sparse = [inputs[0], csr_matrix(inputs[1])]
    head = make_head("dense", {})
    with pytest.raises(
        ConfigError, match=r"^the dense head takes dense features only; train\[1\] is sparse$"
    ):
        head.fit(sparse, y)
    with pytest.raises(
        ConfigError, match=r"^the dense head takes dense features only; val\[1\] is sparse$"
    ):
        head.fit(inputs, y, sparse, y)
    head.fit(inputs, y)
    with pytest.raises(
        ConfigError, match=r"^the dense head takes dense features only; inputs\[1\] is sparse$"
    ):
        head.predict_proba(sparse)
    head.save(tmp_path)
    record = json.loads((tmp_path / "head.json").read_text())
    (tmp_path / "head.json").write_text(json.dumps({**record, "sparse": [False, True]}))
    with pytest.raises(CacheError, match="takes dense features only"):
        load_head(tmp_path)


class Scaled(LinearHead):
    """A head whose constructor takes one more argument, so it overrides clone."""

    def __init__(self, params, *, scale: float, task=None, metric: str = "accuracy") -> None:
        super().__init__(params, task=task, metric=metric)
        self.scale = scale

    def clone(self) -> Scaled:
        return Scaled(self.params, scale=self.scale, task=self.task, metric=self.metric)


def test_clone_is_an_unfitted_copy_and_cross_validation_trains_clones() -> None:
    head = mlp(metric="macro_f1", epochs=1)
    head.fit(*sum_task(20, seed=0))
    copy = head.clone()
    assert type(copy) is MLPHead and not hasattr(copy, "fit_") and not hasattr(copy, "net_")
    assert (copy.params, copy.task, copy.metric) == (head.params, head.task, "macro_f1")
    assert copy.params is not head.params
    scaled = Scaled({}, scale=2.0)
    train, y = sum_task(40, seed=1)
    result = cross_validate(scaled, train, y, [np.arange(0, 20), np.arange(20, 40)])
    assert len(result.fold_scores) == 2 and not hasattr(scaled, "fit_")


def test_the_task_cannot_count_classes_of_empty_targets_alone() -> None:
    task = make_task()
    assert task.n_outputs(np.array([], dtype=np.int64), np.array([4])) == 5
    with pytest.raises(ConfigError, match="every target given is empty"):
        task.n_outputs(np.array([], dtype=np.int64))


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_an_unfitted_head_neither_predicts_nor_saves(kind: str, tmp_path) -> None:
    from sklearn.exceptions import NotFittedError

    head = make_head(kind, {})
    with pytest.raises(NotFittedError, match=f"this {kind} head is not fitted yet"):
        head.predict_proba(random_inputs(3, (5,)))
    with pytest.raises(NotFittedError):
        head.save(tmp_path / "head")
    assert not (tmp_path / "head").exists()

"""The final MLP head's own early stopping (issue 31): without a validation split it holds
out ``validation_fraction`` of its rows (stratified, seeded), never trains on them, stops on
them and keeps the best epoch; 0 trains exactly ``epochs`` epochs as before; ``final_params``
asks for it after a validation-split trial and keeps the cross-validated epoch count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix

from autolayer.config import FusionConfig, HeadChoice, ModelChoice, load_config
from autolayer.errors import ConfigError
from autolayer.heads import Head, make_head
from autolayer.heads.mlp import FINAL_HOLD_OUT, MIN_VAL_ROWS, MLPHead, held_out_rows
from autolayer.task import MultiLabel, make_task

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"width": 16, "hidden": 16, "lr": 1e-2, "batch_size": 32, "dropout": 0.0}


def rule_task(n: int, seed: int, n_classes: int = 2) -> tuple[list[np.ndarray], np.ndarray]:
    """Two inputs; the class is the bucket of ``x1[0] + x2[0]`` (quantiles: balanced)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=(n, 6)), rng.normal(size=(n, 4))
    signal = x1[:, 0] + x2[:, 0]
    edges = np.quantile(signal, np.linspace(0, 1, n_classes + 1)[1:-1])
    return [x1.astype(np.float32), x2.astype(np.float32)], np.digitize(signal, edges)


def mlp(**params: object) -> Head:
    return make_head("mlp", {**FAST, **params})


def weights(head: Head) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in head.net_.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- the held-out rows


def test_held_out_rows_keep_every_class_on_both_sides_when_they_can() -> None:
    strata = np.repeat(np.arange(5), [50, 20, 5, 2, 1])
    held = held_out_rows(strata, 0.1, seed=3)
    assert len(held) == 8  # round(0.1 * 78)
    assert set(strata[held]) == {0, 1, 2, 3}  # the single row of class 4 stays in training
    kept = np.setdiff1d(np.arange(len(strata)), held)
    assert set(strata[kept]) == set(range(5))
    assert np.array_equal(held, held_out_rows(strata, 0.1, seed=3))
    assert not np.array_equal(held, held_out_rows(strata, 0.1, seed=4))


def test_held_out_rows_take_at_least_one_and_none_when_no_class_can_spare_one() -> None:
    assert len(held_out_rows(np.array([0, 0, 1, 1, 1]), 0.01, seed=0)) == 1
    assert len(held_out_rows(np.array([0, 1, 2]), 0.4, seed=0)) == 0
    assert len(held_out_rows(np.array([0]), 0.4, seed=0)) == 0


# ---------------------------------------------------------------------- the final fit


def test_the_held_out_rows_are_never_trained_on() -> None:
    """A fit holding out its rows equals one given them as validation (which trains on
    the rest only), and differs from one training on every row."""
    x, y = rule_task(300, seed=1)
    held = held_out_rows(make_task().strata(y), 0.2, seed=5)
    keep = np.setdiff1d(np.arange(len(y)), held)
    own = mlp(epochs=30, patience=4, validation_fraction=0.2)
    fit = own.fit(x, y, seed=5)
    given = mlp(epochs=30, patience=4)
    given_fit = given.fit([a[keep] for a in x], y[keep], [a[held] for a in x], y[held], seed=5)
    assert same(weights(own), weights(given))
    assert fit.history == given_fit.history
    every = mlp(epochs=30, patience=4)
    every.fit(x, y, seed=5)
    assert not same(weights(own), weights(every))


def test_it_stops_on_the_held_out_rows_and_keeps_the_best_epoch() -> None:
    x, y = rule_task(300, seed=2, n_classes=3)
    head = mlp(epochs=300, patience=3, validation_fraction=0.2)
    fit = head.fit(x, y, seed=0)
    assert len(fit.history) < 300
    assert fit.best_val_metric == max(fit.history)
    held = held_out_rows(make_task().strata(y), 0.2, seed=0)
    predicted = head.predict_proba([a[held] for a in x]).argmax(axis=1)
    assert np.mean(predicted == y[held]) == pytest.approx(fit.best_val_metric)


def test_the_same_seed_gives_the_same_weights() -> None:
    x, y = rule_task(200, seed=3)
    runs = [mlp(epochs=20, patience=3, validation_fraction=0.2) for _ in range(3)]
    for head, seed in zip(runs, (7, 7, 8), strict=True):
        head.fit(x, y, seed=seed)
    assert same(weights(runs[0]), weights(runs[1]))
    assert not same(weights(runs[0]), weights(runs[2]))


def test_no_fraction_trains_exactly_its_epochs_as_before() -> None:
    x, y = rule_task(200, seed=4)
    old = mlp(epochs=9, patience=1)  # a config written before the field existed
    assert "validation_fraction" not in old.params
    fit = old.fit(x, y, seed=0)
    assert len(fit.history) == 9 and fit.best_epoch == 8
    zero = mlp(epochs=9, patience=1, validation_fraction=0.0)
    zero.fit(x, y, seed=0)
    assert same(weights(old), weights(zero))


def test_a_validation_split_given_overrides_the_fraction() -> None:
    x, y = rule_task(200, seed=5)
    val, y_val = rule_task(100, seed=6)
    with_fraction = mlp(epochs=15, patience=3, validation_fraction=0.3)
    without = mlp(epochs=15, patience=3)
    fits = [h.fit(x, y, val, y_val, seed=0) for h in (with_fraction, without)]
    assert fits[0].history == fits[1].history
    assert same(weights(with_fraction), weights(without))


def test_a_multi_label_sparse_fit_stops_on_its_held_out_rows_too() -> None:
    """The rows are stratified by the rarest label; the best epoch restored is the one its
    held-out micro-F1 chose."""
    rng = np.random.default_rng(0)
    y = (rng.random((120, 3)) < 0.4).astype(np.uint8)
    features = csr_matrix(np.hstack([y * 2.0, rng.random((120, 20)) < 0.1]).astype(np.float32))
    params = {**FAST, "epochs": 200, "patience": 3, "validation_fraction": 0.25}
    head = make_head("mlp", params, task=MultiLabel(), metric="micro_f1")
    fit = head.fit([features], y, seed=0)
    held = held_out_rows(MultiLabel().strata(y), 0.25, seed=0)
    proba = head.predict_proba([features[held]])
    assert head.task.score(proba, y[held], "micro_f1") == pytest.approx(fit.best_val_metric)
    assert len(fit.history) < 200 and fit.best_val_metric > 0.5


# ---------------------------------------------------------------------- params and configs


def test_final_params_hold_out_rows_after_a_validation_trial_and_keep_cv_epochs() -> None:
    params = mlp(epochs=120, patience=10).params
    validated = MLPHead.final_params(params, {"best_epoch": 6, "val_rows": MIN_VAL_ROWS})
    assert validated == {**params, "validation_fraction": FINAL_HOLD_OUT}
    crossed = MLPHead.final_params(params, {"best_epoch": 6, "fold_scores": [0.8, 0.9]})
    assert crossed == {**params, "epochs": 7}
    # validated on too few rows to stop on a tenth of them: the epochs carry over
    few = MLPHead.final_params(params, {"best_epoch": 6, "val_rows": MIN_VAL_ROWS - 1})
    assert few == {**params, "epochs": 7}
    assert MLPHead.check_params(validated) == validated


@pytest.mark.parametrize("bad", [-0.1, 0.5, 1, "0.1", True])
def test_the_fraction_is_checked(bad: object) -> None:
    with pytest.raises(ConfigError, match="validation_fraction"):
        MLPHead.check_params({"validation_fraction": bad})


def test_a_config_with_the_fraction_survives_a_round_trip(tmp_path) -> None:
    params = MLPHead.check_params({"width": 64, "validation_fraction": 0.1})
    config = FusionConfig(
        models=(ModelChoice("minilm", "abc", 4, 7, pooling="last", max_length=128),),
        head=HeadChoice("mlp", params),
        label_names=("neg", "pos"),
        dataset={"name": "mr", "fingerprint": "f" * 64},
        metric="accuracy",
        seed=0,
        validation={"accuracy": 0.8},
    )
    loaded = load_config(config.save(tmp_path / "c.yaml"))
    assert loaded == config
    assert loaded.make_head().params["validation_fraction"] == 0.1

"""The late-fusion head (autolayer.heads.late): its out-of-fold protocol, the gain of
stacking complementary members, save/load, its price, and what it refuses."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from autolayer.errors import ConfigError
from autolayer.heads import head_class, load_head, make_head
from autolayer.heads.late import LateFusionHead, stacking_folds

pytestmark = pytest.mark.usefixtures("one_thread")


def complementary(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Four classes; member 0 tells 0 from 1 but sees 2 and 3 alike, member 1 tells 2 from 3
    but sees 0 and 1 alike: each alone is right on about 3/4 of the rows, both on nearly all.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    centres_a = np.array([[3.0, 0], [0, 3.0], [-3.0, -3.0], [-3.0, -3.0]])
    centres_b = np.array([[-3.0, -3.0], [-3.0, -3.0], [3.0, 0], [0, 3.0]])
    a = centres_a[y] + rng.normal(size=(n, 2))
    b = centres_b[y] + rng.normal(size=(n, 2))
    noise = rng.normal(size=(n, 3))  # uninformative columns, as embeddings have many
    return [np.hstack([a, noise]).astype(np.float32), b.astype(np.float32)], y


def late() -> LateFusionHead:
    return make_head("late", {})


def accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    return float((proba.argmax(1) == y).mean())


@pytest.fixture(scope="module")
def fitted() -> tuple[LateFusionHead, list[np.ndarray]]:
    """A late head fitted on complementary members, with held-out inputs."""
    train, y = complementary(160, seed=0)
    head = late()
    head.fit(train, y, seed=0)
    return head, complementary(40, seed=1)[0]


def test_a_rows_own_label_never_reaches_its_out_of_fold_probabilities() -> None:
    train, y = complementary(40, seed=2)
    head = late()
    folds = stacking_folds(head.task.strata(y), seed=0)
    before = head.out_of_fold(train, y, seed=0, folds=folds)
    for row in (0, 17, 33):
        flipped = y.copy()
        flipped[row] = (y[row] + 1) % 4
        after = head.out_of_fold(train, flipped, seed=0, folds=folds)
        for member_before, member_after in zip(before, after, strict=True):
            np.testing.assert_array_equal(member_after[row], member_before[row])
            assert not np.array_equal(member_after, member_before)  # other rows learned it


def test_a_a_flipped_label_changes_what_the_final_members_learn() -> None:
    train, y = complementary(40, seed=2)
    flipped = y.copy()
    flipped[5] = (y[5] + 1) % 4
    states = []
    for target in (y, flipped):
        head = late()
        head.fit(train, target, seed=0)
        states.append(head._state())
    assert not np.array_equal(states[0]["member0.head.weight"], states[1]["member0.head.weight"])


def test_b_late_fusion_beats_each_member_alone_on_held_out_rows(fitted) -> None:
    head, _ = fitted
    test, y_test = complementary(400, seed=3)
    train, y = complementary(160, seed=0)
    fused = accuracy(head.predict_proba(test), y_test)
    for x, x_test in zip(train, test, strict=True):
        alone = make_head("linear", {})
        alone.fit([x], y)
        assert fused > accuracy(alone.predict_proba([x_test]), y_test) + 0.1
    assert fused > 0.95


def test_c_save_and_load_give_identical_probabilities(fitted, tmp_path: Path) -> None:
    head, test = fitted
    head.save(tmp_path)
    again = load_head(tmp_path)
    assert isinstance(again, LateFusionHead)
    np.testing.assert_array_equal(again.predict_proba(test), head.predict_proba(test))


def test_d_probabilities_are_n_by_c_and_sum_to_one(fitted) -> None:
    head, test = fitted
    proba = head.predict_proba(test)
    assert proba.shape == (40, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_e_n_parameters_counts_the_stored_learned_tensors(fitted) -> None:
    """Learned: every stored tensor but the members' standardisation buffers
    (``projections.*``: each input's training mean and std, computed, not learned)."""
    head, _ = fitted
    learned = sum(v.numel() for k, v in head._state().items() if ".projections." not in k)
    assert head.n_parameters(head.input_dims_, head.n_outputs_, {}) == learned
    assert learned == (5 + 1) * 4 + (2 + 1) * 4 + (2 * 4 + 1) * 4
    assert head.fit_.n_parameters == learned


def test_f_takes_two_models_or_more() -> None:
    dense = SimpleNamespace(sparse=False)
    assert not LateFusionHead.takes([dense])
    assert LateFusionHead.takes([dense, dense])
    assert LateFusionHead.n_configurations(None) == 1


def test_g_refuses_any_parameter() -> None:
    with pytest.raises(ConfigError, match="late head takes none"):
        make_head("late", {"x": 1})
    assert head_class("late") is LateFusionHead


def test_a_class_missing_from_training_still_gets_a_column() -> None:
    train, y = complementary(80, seed=4)
    keep = y < 3  # class 3 never seen: the head still has 4 outputs, class 3 never wins
    head = late()
    head.fit([x[keep] for x in train], y[keep], n_outputs=4)
    proba = head.predict_proba([x[~keep] for x in train])
    assert proba.shape == (int((~keep).sum()), 4)
    assert (proba.argmax(1) != 3).all()


def test_few_rows_use_fewer_folds_and_a_one_row_class_still_fits() -> None:
    """A class with one training row (a few-label user's) does not end the search: two
    folds, the row held out once, and the head predicts every class's column."""
    labels = np.array([0] * 10 + [1] * 3)
    assert len(stacking_folds(labels, seed=0)) == 3
    train, y = complementary(40, seed=5)
    y[:] = np.arange(40) % 2
    y[0] = 2
    assert len(stacking_folds(y, seed=0)) == 2
    head = late()
    head.fit(train, y)
    assert head.predict_proba(train).shape == (40, 3)


def test_a_sparse_member_fits_predicts_and_round_trips(tmp_path: Path) -> None:
    train, y = complementary(80, seed=6)
    seen = np.random.default_rng(0).random(80) > 0.3  # a word of its class in 70 % of rows
    words = csr_matrix(np.eye(4, dtype=np.float32)[y] * seen[:, None])
    head = late()
    head.fit([train[0], words], y)
    head.save(tmp_path)
    inputs = [train[0][:10], words[:10]]
    again = load_head(tmp_path).predict_proba(inputs)
    np.testing.assert_array_equal(again, head.predict_proba(inputs))
